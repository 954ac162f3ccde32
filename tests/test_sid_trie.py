"""decoding.sid_trie: the per-depth trie view and the processor's masked log-softmax, against slow references.

These need no vLLM.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.sid_trie import TrieLevels, masked_log_softmax
from sid_index.prefix_tables import PrefixTables

OFFSETS = (10, 30, 50)
EOS = 2
VOCAB = 70


def _tables(codes: np.ndarray) -> PrefixTables:
    return PrefixTables.from_sorted_codes(np.unique(np.asarray(codes, dtype=np.int64), axis=0))


def _children_reference(sids: np.ndarray, depth: int, prefix: tuple[int, ...]) -> list[int]:
    return sorted({int(s[depth]) for s in sids if tuple(int(x) for x in s[:depth]) == prefix})


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60,
                unique=True))
def test_trie_levels_children_and_find_child_match_a_set_reference(sid_list: list[tuple[int, int, int]]) -> None:
    sids = np.asarray(sorted(sid_list), dtype=np.int64)
    trie = TrieLevels.from_tables(_tables(sids))
    # walk every prefix: node ids by find_child must give exactly the reference children
    node_of: dict[tuple[int, ...], int] = {(): 0}
    for depth in range(3):
        for prefix, node in list(node_of.items()):
            if len(prefix) != depth:
                continue
            _, child = trie.children(depth, np.asarray([node]))
            codes = trie.codes[depth][child].tolist()
            assert codes == _children_reference(sids, depth, prefix)
            found = trie.find_child(depth, np.full(len(codes) + 1, node), np.asarray([*codes, 99]))
            assert found[-1] == -1 and (found[:-1] == child).all()
            for c, ch in zip(codes, child, strict=True):
                node_of[(*prefix, c)] = int(ch)
    rows = [node_of[tuple(int(x) for x in s)] for s in sids]
    assert rows == list(range(len(sids)))  # depth-3 node ids are the SID rows, in sorted order


def test_masked_log_softmax_matches_a_per_row_loop() -> None:
    sids = np.asarray([[0, 1, 2], [0, 1, 3], [0, 4, 0], [2, 0, 0], [5, 5, 5]], dtype=np.int64)
    trie = TrieLevels.from_tables(_tables(sids))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, VOCAB, generator=gen)
    # rows: 0 root, 1 node (0,) at depth 1, 2 node (0,1) at depth 2, 3 depth 3 (EOS), 4 unconstrained, 5 untouched
    node_01 = int(trie.find_child(1, np.asarray([0]), np.asarray([1]))[0])
    rows = torch.tensor([0, 1, 2, 3, 4])
    depth = torch.tensor([0, 1, 2, 3, 1])
    node = torch.tensor([0, 0, node_01, 0, 0])
    constrained = torch.tensor([True, True, True, True, False])
    out = masked_log_softmax(logits.clone(), rows, depth, node, constrained, trie, OFFSETS, EOS)
    lsm = torch.log_softmax(logits, dim=-1)
    allowed = {0: [OFFSETS[0] + c for c in (0, 2, 5)], 1: [OFFSETS[1] + c for c in (1, 4)],
               2: [OFFSETS[2] + c for c in (2, 3)], 3: [EOS]}
    for r in range(4):
        want = torch.full((VOCAB,), float("-inf"))
        want[allowed[r]] = lsm[r, allowed[r]]
        assert torch.equal(out[r], want)
    assert torch.allclose(out[4], lsm[4])
    assert torch.equal(out[5], logits[5])


def test_children_in_descending_code_order_are_refused() -> None:
    tables = _tables(np.asarray([[0, 0, 0], [0, 1, 0]]))
    bad = PrefixTables(level0=tables.level0, l1_indptr=tables.l1_indptr, l1_codes=tables.l1_codes[::-1].copy(),
                       l2_indptr=tables.l2_indptr, l2_codes=tables.l2_codes)
    with pytest.raises(ValueError, match="ascending"):
        TrieLevels.from_tables(bad)
