"""SIDs made elsewhere (MiniOneRec's ``reference_sids.json``) as a radgr index, for like-for-like comparisons.

Contract:

- The file is JSON ``{item_id: [t0, t1, t2]}``, each token ``<L_c>``: ``L`` a level letter (``a``, ``b``, ``c`` in
  MiniOneRec's files; any single lower-case letter, levels taken in list order) and ``c`` the code, an integer
  ``>= 0``. :func:`read_reference_codes` returns int64 codes ``[n, 3]`` in the catalog's item order.
- Every catalog item must have a SID in the file (``ValueError`` names the first missing item and the count);
  file items not in the catalog are ignored. A malformed entry raises ``ValueError`` naming the item and token.
- :func:`reference_index` groups the codes into a :class:`~sid_index.index.SidIndex` exactly as a built index is
  grouped (items sharing a SID are kept together, popularity order), with ``config["reference_sids"]`` = the file.
  Codebook sizes default to 256 per level (MiniOneRec's); a code outside them is an error naming the level.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from sid_index.catalog import Catalog
from sid_index.index import SidIndex
from sid_index.tokens import NUM_LEVELS

_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def _parse(item: str, tokens: object) -> list[int]:
    if not isinstance(tokens, list) or len(tokens) != NUM_LEVELS:
        raise ValueError(f"reference SID of item {item!r} must be a list of {NUM_LEVELS} tokens, given {tokens!r}")
    codes = []
    for tok in tokens:
        m = _TOKEN.fullmatch(str(tok).strip())
        if m is None:
            raise ValueError(f"reference SID of item {item!r}: token {tok!r} is not of the form <a_12>")
        codes.append(int(m.group(2)))
    return codes


def read_reference_codes(path: str | os.PathLike[str], item_ids: list[str]) -> np.ndarray:
    """int64 ``[len(item_ids), 3]``: each item's reference codes (module docstring)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: must be a JSON object {{item_id: [tokens]}}, given {type(raw).__name__}")
    missing = [i for i in item_ids if i not in raw]
    if missing:
        raise ValueError(f"{path}: {len(missing)} catalog items have no reference SID, e.g. {missing[0]!r}")
    return np.array([_parse(i, raw[i]) for i in item_ids], dtype=np.int64).reshape(len(item_ids), NUM_LEVELS)


def reference_index(catalog: Catalog, path: str | os.PathLike[str],
                    codebook_sizes: tuple[int, int, int] = (256, 256, 256)) -> SidIndex:
    """The catalog indexed by the reference SIDs in ``path`` (module docstring)."""
    codes = read_reference_codes(path, list(catalog.item_ids))
    return SidIndex.from_codes(list(catalog.item_ids), codes, catalog.popularity, catalog.categories,
                               codebook_sizes, config={"reference_sids": str(path)})
