"""Evaluation with a fake engine at the RetrievalEngine seam: hand-derived metrics, hallucination, baseline, report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from decoding.engine import ItemHit, RetrievalRequest, RetrievalResult, SidHit
from decoding.items import expand_items
from decoding.prompt import PROMPT_VERSION
from sid_index.index import SidIndex
from training.data.sample_format import Sample
from training.evaluate import (
    EvalConfig,
    EvalRun,
    Ranking,
    evaluate_engine,
    evaluate_popularity,
    markdown_table,
    popularity_from_train,
    popularity_ranking,
    score_rankings,
    targets_from_samples,
    write_report,
)

# items i0..i5; i0 and i1 collide on SID (0,0,0). Sorted SIDs: r0 (0,0,0) [i0, i1], r1 (0,1,0) [i2],
# r2 (1,0,0) [i3], r3 (1,1,0) [i5], r4 (1,1,1) [i4].  Popularity orders i1 before i0 inside r0.
CODES = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
POP = np.array([1.0, 5.0, 2.0, 3.0, 0.0, 4.0])


def _index() -> SidIndex:
    return SidIndex.from_codes([f"i{k}" for k in range(6)], CODES, POP, None, (2, 2, 2))


def _sample(sid: str, prompt: str, positives: Sequence[str], relevant: Sequence[str] = ()) -> Sample:
    codes = tuple((int(c[0]), int(c[1]), int(c[2])) for c in (CODES[int(p[1:])] for p in positives))
    return Sample(session_id=sid, day=2, split="test", prompt=prompt, prompt_version=PROMPT_VERSION,
                  positive_items=tuple(positives), positive_codes=codes, top_index=0, negative_items=(),
                  negative_codes=(), negative_relevant=None, relevant_items=tuple(relevant),
                  relevant_grades=tuple(1 for _ in relevant))


class _CharTokenizer:
    """Prompt ids = character codes (enough for a fake engine keyed by prompt)."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


class FakeEngine:
    """Returns a fixed SID order per prompt; in unconstrained mode appends one invalid SID per request."""

    name = "fake"

    def __init__(self, index: SidIndex, orders: dict[str, list[int]]) -> None:
        self.index = index
        self.orders = {tuple(ord(c) for c in p): o for p, o in orders.items()}
        self.calls: list[int] = []

    def retrieve_batch(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult]:
        self.calls.append(len(requests))
        out = []
        for req in requests:
            rows = self.orders[req.prompt_ids][: req.beam_width]
            scores = -np.arange(1, len(rows) + 1, dtype=np.float64)
            codes = self.index.sid_codes
            sids = [SidHit((int(codes[r, 0]), int(codes[r, 1]), int(codes[r, 2])), (0, 0, 0), float(s), int(r))
                    for r, s in zip(rows, scores, strict=True)]
            if not req.constrained:
                sids = [*sids[:-1], SidHit((1, 1, 1), (0, 0, 0), -99.0, -1)]
            ir, sr, sc = expand_items(np.array(rows), scores, self.index.sid_item_indptr, self.index.sid_item_rows,
                                      req.top_k_items)
            items = [ItemHit(self.index.item_ids[int(i)], int(s), float(v), k + 1)
                     for k, (i, s, v) in enumerate(zip(ir, sr, sc, strict=True))]
            out.append(RetrievalResult(sids=sids, items=items))
        return out


def test_metrics_through_a_fake_engine_by_hand() -> None:
    """Prompt A ranks SIDs r2, r0, r4, r1, r3 -> items i3, i1, i0, i4, i2, i5.
      positives {i0}: item rank 3 -> R@2 = 0, R@3 = 1, MRR 1/3; SID r0 at rank 2 -> SID R@1 0, R@2 1, MRR 1/2.
    Prompt B ranks r1, r3, r0, r2, r4 -> items i2, i5, i1, i0, i3, i4.
      positives {i5, i4}: item ranks 2 and 6 -> R@2 = 1/2, R@3 = 1/2, MRR 1/2; SIDs r3 (rank 2), r4 (rank 5)
      -> SID R@1 0, R@2 1/2, MRR 1/2.
    Means: item R@2 1/4, R@3 3/4, MRR 5/12; SID R@1 0, R@2 3/4, MRR 1/2.
    Unconstrained: the last of 5 SIDs is invalid for each prompt -> hallucination 2/10.
    Truth (A only has relevance {i3, i2}): item ranks 1 and 5 -> R@2 1/2, R@3 1/2, MRR 1; SIDs r2 (1), r1 (4).
    """
    index = _index()
    samples = [_sample("a", "A", ["i0"], relevant=["i3", "i2", "unknown-item"]), _sample("b", "B", ["i5", "i4"])]
    targets = targets_from_samples(samples, index)
    assert targets[1].positive_sids == frozenset({3, 4})
    assert targets[0].relevant_items == frozenset({"i3", "i2"})  # unknown items left out
    engine = FakeEngine(index, {"A": [2, 0, 4, 1, 3], "B": [1, 3, 0, 2, 4]})
    rep_cfg = EvalConfig(beam_width=5, top_k=6, batch_size=1)
    import training.evaluate as ev

    rep = evaluate_engine(engine, _CharTokenizer(), targets, rep_cfg)
    assert engine.calls == [1, 1, 1, 1]  # batch_size 1: two constrained and two unconstrained calls
    # rescore with small ks to check by hand
    free_rankings = [Ranking((2, 0, 4, 1, 3), ("i3", "i1", "i0", "i4", "i2", "i5")),
                     Ranking((1, 3, 0, 2, 4), ("i2", "i5", "i1", "i0", "i3", "i4"))]
    m = score_rankings(free_rankings, targets, item_ks=(2, 3), sid_ks=(1, 2))
    assert m["sessions"] == 2
    assert m["item"] == pytest.approx({"recall@2": 0.25, "recall@3": 0.75, "mrr": 5 / 12})
    assert m["sid"] == pytest.approx({"recall@1": 0.0, "recall@2": 0.75, "mrr": 0.5})
    t = score_rankings(free_rankings, targets, truth=True, item_ks=(2, 3), sid_ks=(1, 4))
    assert t["sessions"] == 1
    assert t["item"] == pytest.approx({"recall@2": 0.5, "recall@3": 0.5, "mrr": 1.0})
    assert t["sid"] == pytest.approx({"recall@1": 0.5, "recall@4": 1.0, "mrr": 1.0})
    # the engine pass gives the same rankings, so the same numbers at the default ks
    assert rep["metrics"] == score_rankings(free_rankings, targets)
    assert rep["metrics"]["item"]["recall@10"] == pytest.approx(1.0)  # all 6 items fit in the top 10
    assert rep["hallucination_rate"] == pytest.approx(2 / 10)
    assert rep["engine"] == "fake"
    assert ev.ITEM_KS == (10, 100, 500) and ev.SID_KS == (8, 64, 128)


def test_batching_does_not_change_results() -> None:
    index = _index()
    samples = [_sample(str(k), p, ["i0"]) for k, p in enumerate("ABAB")]
    targets = targets_from_samples(samples, index)
    orders = {"A": [2, 0, 4, 1, 3], "B": [1, 3, 0, 2, 4]}
    one = evaluate_engine(FakeEngine(index, orders), _CharTokenizer(), targets, EvalConfig(beam_width=5, batch_size=1))
    three = FakeEngine(index, orders)
    many = evaluate_engine(three, _CharTokenizer(), targets, EvalConfig(beam_width=5, batch_size=3))
    assert three.calls == [3, 1, 3, 1]
    assert one["metrics"] == many["metrics"] and one["hallucination_rate"] == many["hallucination_rate"]


def test_popularity_baseline_by_hand() -> None:
    """Train positives: i4 x3, i2 x2, i0 x1 (+ index popularity / 5 / 2 as tie-break < 1).

    item pop = i0 1.1, i1 0.5, i2 2.2, i3 0.3, i4 3.0, i5 0.4 -> items i4, i2, i0, i1, i5, i3.
    SID pop: r0 = i0 + i1 = 1.6, r1 = 2.2, r2 = 0.3, r3 = 0.4, r4 = 3.0 -> SIDs r4, r1, r0, r3, r2.
    """
    index = _index()
    train = [_sample("t1", "x", ["i4", "i2"]), _sample("t2", "x", ["i4", "i0"]), _sample("t3", "x", ["i4", "i2"])]
    rk = popularity_ranking(index, popularity_from_train(train, index), num_sids=5, top_k=6)
    assert rk.sid_rows == (4, 1, 0, 3, 2)
    assert rk.items == ("i4", "i2", "i1", "i0", "i5", "i3")  # SID order; inside r0 the index order i1, i0
    free = popularity_ranking(index, popularity_from_train(train, index), num_sids=2, top_k=6, items_by_sid=False)
    assert free.sid_rows == (4, 1)
    assert free.items == ("i4", "i2", "i0", "i1", "i5", "i3")  # item popularity, not limited to 2 SIDs
    assert popularity_ranking(index, popularity_from_train(train, index), num_sids=2, top_k=6).items == ("i4", "i2")
    test = targets_from_samples([_sample("q", "Q", ["i0"])], index)
    rep = evaluate_popularity(index, train, test, EvalConfig(beam_width=2, top_k=6), items_by_sid=False)
    assert rep["metrics"]["item"]["mrr"] == pytest.approx(1 / 3)
    assert rep["metrics"]["sid"]["recall@8"] == 0.0  # beam 2 keeps r4, r1 only
    assert rep["metrics"]["sid"]["mrr"] == 0.0
    same_budget = evaluate_popularity(index, train, test, EvalConfig(beam_width=2, top_k=6))
    assert same_budget["metrics"]["item"]["mrr"] == 0.0  # i0's SID r0 is outside the 2 SIDs


def test_report_files(tmp_path: Path) -> None:
    """SIDs r0..r4 in order -> items i1, i0, ... (i1 is more popular inside r0): i0 at rank 2 -> MRR 1/2."""
    index = _index()
    targets = targets_from_samples([_sample("a", "A", ["i0"], relevant=["i0"])], index)
    rep = evaluate_engine(FakeEngine(index, {"A": [0, 1, 2, 3, 4]}), _CharTokenizer(), targets,
                          EvalConfig(beam_width=5))
    entries = [{"name": "sft", **rep}]
    paths = write_report(entries, tmp_path / "eval.json", {"test_sessions": 1})
    doc = json.loads(paths["json"].read_text())
    assert doc["test_sessions"] == 1 and doc["results"][0]["metrics"]["item"]["mrr"] == 0.5
    md = paths["markdown"].read_text()
    assert md.startswith("| method | halluc. | R@10")
    assert "| sft | 0.2000 | 1.0000 | 1.0000 | 1.0000 | 0.5000 | 1.0000" in md
    assert "sft (true relevance)" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert markdown_table(entries) == md


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"beam_width must be in \[1, 128\]"):
        EvalConfig(beam_width=129)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        EvalConfig(top_k=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="neither"):
        EvalRun(index_dir=tmp_path, samples_dir=tmp_path)
    with pytest.raises(ValueError, match="baseline must be 'popularity'"):
        EvalRun(index_dir=tmp_path, samples_dir=tmp_path, baseline="random")
    with pytest.raises(ValueError, match=r"against \(--against\).*give --model"):
        EvalRun(index_dir=tmp_path, samples_dir=tmp_path, baseline="popularity", against_dir=tmp_path)
    index = _index()
    bad = _sample("z", "Z", ["i0"])
    object.__setattr__(bad, "positive_codes", ((0, 1, 1),))  # (0,1,1) is not a SID of the index
    with pytest.raises(ValueError, match=r"positive SID \(0, 1, 1\) is not in the index"):
        targets_from_samples([bad], index)


def test_paired_summary_states_a_better_model_and_its_interval() -> None:
    """A reference that ranks the positive last vs a model that ranks it first, on 30 sessions: the model's paired
    difference on item MRR is positive, its interval excludes 0, and the summary line says so."""
    from training.eval_intervals import add_eval_statistics, paired_summary

    index = _index()
    samples = [_sample(f"s{k}", f"P{k}", ["i3"], relevant=["i3"]) for k in range(30)]
    targets = targets_from_samples(samples, index)
    good = {f"P{k}": [2, 0, 1, 3, 4] for k in range(30)}  # r2 holds i3: rank 1
    bad = {f"P{k}": [4, 3, 1, 0, 2] for k in range(30)}  # i3 after 5 items: rank 6
    for k in range(0, 30, 3):  # a third of the sessions tie, so the difference varies over sessions
        bad[f"P{k}"] = good[f"P{k}"]
    cfg = EvalConfig(beam_width=5, top_k=6, hallucination=False)
    entries = [{"name": "sft", **evaluate_engine(FakeEngine(index, bad), _CharTokenizer(), targets, cfg)},
               {"name": "rad-dpo", **evaluate_engine(FakeEngine(index, good), _CharTokenizer(), targets, cfg)}]
    add_eval_statistics(entries)
    d = entries[1]["paired"]["metrics"]["MRR"]
    assert d["diff"] == pytest.approx((1 - 1 / 6) * 20 / 30) and d["lo"] > 0 and d["p"] < 0.01
    text = paired_summary(entries[1])
    assert "item MRR: rad-dpo − sft = +0.5556" in text and "— significant" in text
    with pytest.raises(ValueError, match="no paired comparison"):
        paired_summary(entries[0])
