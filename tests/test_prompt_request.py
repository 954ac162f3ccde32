"""Request → prompt: the golden prompt, the hard-search filter, order and cap, the query categorizer, and the
encoded prompt a server sends to the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from decoding.hard_search import QueryCategorizer, filter_history_by_category
from decoding.prompt import encode_prompt, render_prompt
from decoding.request_prompt import EncodedPrompt, PromptConfig, encode_request_prompt, prompt_for_request
from sid_index.index import SidIndex

ITEMS = ["drill1", "drill2", "glove1", "glove2", "tape1"]
CATS = ["Power Tools", "Power Tools", "Safety", "Safety", "Fasteners"]
CODES = np.array([[0, 1, 2], [0, 1, 3], [1, 0, 0], [1, 2, 0], [2, 0, 1]])


def _index() -> SidIndex:
    return SidIndex.from_codes(ITEMS, CODES, np.array([5.0, 4, 3, 2, 1]), CATS, (4, 4, 4))


def _categorizer() -> QueryCategorizer:
    return QueryCategorizer.fit([("cordless drill", "Power Tools"), ("impact drill", "Power Tools"),
                                 ("nitrile gloves", "Safety"), ("work gloves", "Safety"), ("duct tape", "Fasteners")])


def test_golden_prompt() -> None:
    """The literal prompt: hard search keeps the two drills, most recent first; the unknown id is skipped."""
    build = prompt_for_request("Cordless  drill", {"region": "north", "price_level": "mid"},
                               ["drill2", "glove1", "nope", "drill1", "tape1"], _index(), _categorizer(),
                               PromptConfig())
    assert build.text == (
        "query: Cordless drill\n"
        "profile: price_level=mid; region=north\n"
        "history: <s0_0><s1_1><s2_2> <s0_0><s1_1><s2_3>\n"
        "item:"
    )
    assert build.used_item_ids == ("drill1", "drill2")
    assert build.unknown_item_ids == ("nope",)


def test_golden_prompt_without_hard_search_and_empty_query() -> None:
    build = prompt_for_request("", {}, ["drill2", "glove1", "tape1"], _index(), _categorizer(),
                               PromptConfig(hard_search=False))
    assert build.text == "query: \nprofile: \nhistory: <s0_2><s1_0><s2_1> <s0_1><s1_0><s2_0> <s0_0><s1_1><s2_3>\nitem:"
    # an empty query keeps everything even with hard search on
    assert prompt_for_request("", {}, ["drill2", "glove1", "tape1"], _index(), _categorizer()).text == build.text


def test_hard_search_keeps_only_relevant_history() -> None:
    index, cat = _index(), _categorizer()
    rng = np.random.default_rng(0)
    for query, category in [("drill", "Power Tools"), ("gloves please", "Safety"), ("tape", "Fasteners")]:
        for _ in range(20):
            history = [ITEMS[int(i)] for i in rng.integers(0, len(ITEMS), size=int(rng.integers(0, 12)))]
            build = prompt_for_request(query, {}, history, index, cat, PromptConfig(max_history=50))
            expected = [h for h in reversed(history) if CATS[ITEMS.index(h)] == category]
            assert list(build.used_item_ids) == expected


def test_cap_keeps_the_most_recent() -> None:
    history = ["drill1", "drill2", "glove1", "glove2", "tape1"]
    build = prompt_for_request("x", {}, history, _index(), None, PromptConfig(max_history=2))
    assert build.used_item_ids == ("tape1", "glove2")
    assert prompt_for_request("x", {}, history, _index(), None, PromptConfig(max_history=0)).used_item_ids == ()
    assert build.text == render_prompt("x", {}, ["<s0_2><s1_0><s2_1>", "<s0_1><s1_2><s2_0>"])


def test_prompt_config_validation() -> None:
    with pytest.raises(ValueError, match="max_history must be >= 0"):
        PromptConfig(max_history=-1)


def test_categorizer_predicts_and_round_trips(tmp_path: Path) -> None:
    cat = _categorizer()
    assert cat.predict("DRILL bits") == "Power Tools"
    assert cat.predict("gloves") == "Safety"
    assert cat.predict("") is None
    assert cat.predict("zzzz qqqq") is None
    assert QueryCategorizer().predict("drill") is None
    again = QueryCategorizer.from_json(cat.to_json())
    assert again == cat
    for q in ("drill", "work tape", "gloves drill", "duct"):
        assert again.predict(q) == cat.predict(q)
        assert again.log_posterior(q) == cat.log_posterior(q)
    cat.save(tmp_path / "c.json")
    assert QueryCategorizer.load(tmp_path / "c.json") == cat


def test_categorizer_is_additive_and_matches_hand_maths() -> None:
    """P(c|q) ∝ P(c)·Π P(w|c); 'a' seen 2× in A (3 words), 0× in B (1 word); vocab {a, b}; alpha 1.
    A: log(2/3) + log(3/5) ; B: log(1/3) + log(1/3) → A wins."""
    pairs = [("a a", "A"), ("b", "A"), ("b", "B")]
    cat = QueryCategorizer.fit(pairs)
    post = cat.log_posterior("a")
    assert post is not None
    assert post["A"] == pytest.approx(np.log(2 / 3) + np.log(3 / 5))
    assert post["B"] == pytest.approx(np.log(1 / 3) + np.log(1 / 3))
    split = QueryCategorizer().update(pairs[:1]).update(pairs[1:])
    assert split == cat


def test_categorizer_rejects_bad_json() -> None:
    with pytest.raises(ValueError, match="field 'format'"):
        QueryCategorizer.from_json('{"format": "other"}')


def test_filter_history_by_category() -> None:
    assert filter_history_by_category(["a", "b", "c"], ["x", "y", "x"], "x") == ["a", "c"]
    assert filter_history_by_category(["a", "b"], ["x", "y"], None) == ["a", "b"]
    with pytest.raises(ValueError, match="one entry per history item"):
        filter_history_by_category(["a"], [], "x")


def test_prompt_builder_agrees_with_the_reference() -> None:
    """The cached fast path gives exactly what prompt_for_request gives, for random requests."""
    from decoding.request_prompt import PromptBuilder

    index, cat = _index(), _categorizer()
    rng = np.random.default_rng(1)
    words = ["drill", "gloves", "tape", "zzz", "", "work", "cordless"]
    pool = [*ITEMS, "unknown1", "unknown2"]
    for cfg in (PromptConfig(), PromptConfig(hard_search=False), PromptConfig(max_history=2)):
        builder = PromptBuilder(index, cat, cfg, cache_queries=3)
        for _ in range(200):
            query = " ".join(words[int(i)] for i in rng.integers(0, len(words), size=int(rng.integers(0, 3))))
            history = [pool[int(i)] for i in rng.integers(0, len(pool), size=int(rng.integers(0, 10)))]
            profile = {"k": str(int(rng.integers(3)))}
            assert builder.build(query, profile, history) == prompt_for_request(query, profile, history, index, cat,
                                                                                cfg)


class _CharTokenizer:
    """A tokenizer with one id per character (and no special tokens, as encode_prompt asks)."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, Any]:
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}


def test_encode_request_prompt_is_the_reference_prompt_encoded() -> None:
    tok, index, cat = _CharTokenizer(), _index(), _categorizer()
    history = ["drill2", "glove1", "nope", "drill1"]
    encoded = encode_request_prompt(tok, "drill", {"k": "v"}, history, index, cat, PromptConfig(max_history=1))
    build = prompt_for_request("drill", {"k": "v"}, history, index, cat, PromptConfig(max_history=1))
    assert encoded == EncodedPrompt(build, tuple(encode_prompt(tok, build.text)))
    assert encoded.build.used_item_ids == ("drill1",) and encoded.build.unknown_item_ids == ("nope",)
