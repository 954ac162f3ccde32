"""The picture of an index's statistics: ``stats.png`` beside ``stats.json``.

Contract: :func:`write_stats_png` draws two panels and writes them as one PNG atomically
(:func:`sid_index.atomic_files.save_figure_atomic`): per level, the item count of every code sorted descending
(log scale, legend with codes used / codebook size), and the histogram of items per SID (log scale). It draws on a
``matplotlib.figure.Figure`` of its own (no pyplot state, no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sid_index.atomic_files import save_figure_atomic
from sid_index.index import SidIndex


def write_stats_png(index: SidIndex, path: str | os.PathLike[str]) -> Path:
    """Per-level code frequencies (sorted) and the items-per-SID histogram of ``index``, as a PNG at ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    freq_ax, group_ax = fig.subplots(1, 2)
    item_codes = index.sid_codes[index.item_sid_row]
    for level, k in enumerate(index.codebook_sizes):
        counts = np.sort(np.bincount(item_codes[:, level], minlength=k))[::-1]
        freq_ax.plot(np.arange(k), counts, label=f"level {level} ({np.count_nonzero(counts)}/{k} used)")
    freq_ax.set_xlabel("code rank")
    freq_ax.set_ylabel("items")
    freq_ax.set_yscale("log")
    freq_ax.set_title("code frequency per level")
    freq_ax.legend(fontsize=8)
    sizes = np.bincount(np.diff(index.sid_item_indptr))
    group_ax.bar(np.arange(1, sizes.shape[0]), sizes[1:])
    group_ax.set_yscale("log")
    group_ax.set_xlabel("items per SID")
    group_ax.set_ylabel("SIDs")
    group_ax.set_title(f"{index.num_items:,} items → {index.num_sids:,} SIDs")
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi=110)
