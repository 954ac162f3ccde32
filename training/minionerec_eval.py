"""MiniOneRec's evaluation protocol beside radgr's: HR@K and NDCG@K, one target item per example.

Contract (MiniOneRec's ``calc.py``, restated; their ``evaluate.sh`` decodes with ``--num_beams 50``, hence
:data:`MINIONEREC_BEAM_WIDTH`):

- An example is a test session with exactly one positive item (the imported ``test.csv`` row's ``item_id``);
  sessions with several positives are counted in ``skipped`` and left out. The ranking is radgr's item ranking over
  the full catalog (trie-constrained beams, SIDs expanded to items, popularity order within a SID; with
  collision-free SIDs one beam is one item, as in MiniOneRec). No sampled candidates.
- ``r`` = 0-based position of the target in the ranking (absent: no hit). ``HR@K`` = mean of ``[r < K]``;
  ``NDCG@K`` = mean of ``[r < K] / log2(r + 2)`` (one relevant item, so the ideal DCG is 1).
- Each mean comes with a 95 % interval by the normal approximation over examples (``mean ± 1.96·sd/√n``, sd with
  ``n − 1``; clipped to [0, 1]), ``ci95 = [lo, hi]``.
- :func:`minionerec_metrics` returns ``{"examples", "skipped", "hr@3", "ndcg@3", ..., "ci95": {key: [lo, hi]}}``;
  :func:`minionerec_markdown` renders evaluated entries, optionally next to published figures
  (:data:`PUBLISHED_INDUSTRIAL`: Industrial_and_Scientific, from the dataset's README);
  :func:`write_minionerec_table` writes it beside an eval report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from sid_index.atomic_files import write_text_atomic

MINIONEREC_KS = (3, 5, 10)
MINIONEREC_BEAM_WIDTH = 50  # MiniOneRec's evaluate.sh: --num_beams 50
# full training split, Qwen2.5-class models; for orientation (../shared/datasets/amazon18-industrial/README.md)
PUBLISHED_INDUSTRIAL: dict[str, dict[str, float]] = {
    "MiniOneRec (published)": {"hr@10": 0.1586, "ndcg@10": 0.1167},
    "TIGER (published)": {"hr@10": 0.1321},
    "S-DPO (published)": {"hr@10": 0.1524},
}
Z95 = 1.959964


class _Ranked(Protocol):
    @property
    def items(self) -> tuple[str, ...]: ...


class _Target(Protocol):
    @property
    def positive_items(self) -> frozenset[str]: ...


def target_rank(items: Sequence[str], target: str) -> int | None:
    """0-based position of ``target`` in ``items``; None when absent."""
    for r, item in enumerate(items):
        if item == target:
            return r
    return None


def _mean_ci(values: Sequence[float]) -> tuple[float, list[float]]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, [mean, mean]
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, [max(0.0, mean - half), min(1.0, mean + half)]


def metrics_from_ranks(ranks: Sequence[int | None], ks: Sequence[int] = MINIONEREC_KS) -> dict[str, Any]:
    """HR@K and NDCG@K (with ``ci95``) of 0-based target ranks (None = not retrieved); module docstring."""
    if not ranks:
        return {"examples": 0, "ci95": {}}
    out: dict[str, Any] = {"examples": len(ranks), "ci95": {}}
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be >= 1, given {k}")
        hits = [1.0 if r is not None and r < k else 0.0 for r in ranks]
        gains = [1.0 / math.log2(r + 2) if r is not None and r < k else 0.0 for r in ranks]
        for key, vals in ((f"hr@{k}", hits), (f"ndcg@{k}", gains)):
            out[key], out["ci95"][key] = _mean_ci(vals)
    return out


def minionerec_metrics(rankings: Sequence[_Ranked], targets: Sequence[_Target],
                       ks: Sequence[int] = MINIONEREC_KS) -> dict[str, Any]:
    """The protocol over paired rankings and targets (``training.evaluate`` Ranking / SessionTargets)."""
    if len(rankings) != len(targets):
        raise ValueError(f"rankings ({len(rankings)}) and targets ({len(targets)}) must pair up")
    ranks: list[int | None] = []
    skipped = 0
    for rk, t in zip(rankings, targets, strict=True):
        if len(t.positive_items) != 1:
            skipped += 1
            continue
        ranks.append(target_rank(rk.items, next(iter(t.positive_items))))
    return {**metrics_from_ranks(ranks, ks), "skipped": skipped}


def minionerec_markdown(entries: Sequence[Mapping[str, Any]], published: Mapping[str, Mapping[str, float]]
                        | None = None, ks: Sequence[int] = MINIONEREC_KS) -> str:
    """A table of HR@K / NDCG@K (± 95 % half-width) per evaluated entry, then ``published`` rows if given (e.g.
    :data:`PUBLISHED_INDUSTRIAL`, only meaningful on that dataset)."""
    keys = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
    head = "| MiniOneRec protocol | " + " | ".join(k.upper() for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    n = 0
    for e in entries:
        block = e.get("minionerec") or {}
        if not block.get("examples"):
            continue
        n = int(block["examples"])
        cells = []
        for k in keys:
            lo, hi = block["ci95"][k]
            cells.append(f"{block[k]:.4f} ± {(hi - lo) / 2:.4f}")
        lines.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    for name, vals in (published or {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[k]:.4f}" if k in vals else "–" for k in keys) + " |")
    return "\n".join(lines) + f"\n\n{n} examples (one target item each); ± = half-width of the 95 % interval.\n"


def write_minionerec_table(entries: Sequence[Mapping[str, Any]], report_json: str | Path) -> Path:
    """:func:`minionerec_markdown` of ``entries`` written atomically beside the eval report: ``NAME.minionerec.md``."""
    path = Path(report_json).with_suffix(".minionerec.md")
    write_text_atomic(path, minionerec_markdown(entries))
    return path
