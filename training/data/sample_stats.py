"""The statistics of a sample build (``stats.json``): counters per sample, added across batches and shards, then
turned into ratios.

Contract: :func:`count_sample` adds one sample to a ``Counter``; counters are plain sums, so a sharded build adds
its shards' counters and gets the one-job numbers; :func:`samples_stats` writes the statistics dict from the
counters of :func:`training.data.samples.write_samples` (keys: the run's settings, ``all`` and one entry per split,
each from :func:`finish_stats`).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import PromptBuild
from sid_index.tokens import shared_prefix_len
from training.data.sample_format import SPLITS, Sample

if TYPE_CHECKING:
    from decoding.hard_search import QueryCategorizer
    from training.data.samples import SampleConfig


def count_sample(c: Counter[str], sample: Sample, num_negatives: int, n_exp: int, dropped: int,
                 build: PromptBuild) -> None:
    """Add one sample to the counters that :func:`finish_stats` turns into ratios. ``n_exp`` of its negatives came
    from the exposure; each (y*, negative) pair is counted under ``all`` and under ``exposed`` or ``random``."""
    c["samples"] += 1
    c["positives"] += len(sample.positive_items)
    c["negatives"] += len(sample.negative_items)
    c["from_exposure"] += n_exp
    c["short_negatives"] += int(len(sample.negative_items) < num_negatives)
    c["history_used"] += len(build.used_item_ids)
    c["history_unknown"] += len(build.unknown_item_ids)
    c["same_sid_dropped"] += dropped
    neg_rel = sample.negative_relevant
    for j, codes in enumerate(sample.negative_codes):
        p = shared_prefix_len(sample.top_codes, codes)
        for group in ("all", "exposed" if j < n_exp else "random"):
            c[f"{group}_pairs"] += 1
            c[f"{group}_share1"] += int(p >= 1)
            c[f"{group}_share2"] += int(p >= 2)
            if neg_rel is not None:
                c[f"{group}_truth_negatives"] += 1
                c[f"{group}_relevant_negatives"] += int(neg_rel[j])


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def finish_stats(c: Counter[str]) -> dict[str, Any]:
    """Per-split statistics: samples, positives/negatives per sample, shared-prefix shares, truth."""
    return {
        "samples": c["samples"],
        "positives_per_sample": _ratio(c["positives"], c["samples"]),
        "negatives_per_sample": _ratio(c["negatives"], c["samples"]),
        "negatives_from_exposure_share": _ratio(c["from_exposure"], c["negatives"]),
        "samples_short_of_negatives": c["short_negatives"],
        "pairs_top_positive_negative": c["all_pairs"],
        "share_first_token": _ratio(c["all_share1"], c["all_pairs"]),
        "share_first_two_tokens": _ratio(c["all_share2"], c["all_pairs"]),
        "share_first_token_exposed_negatives": _ratio(c["exposed_share1"], c["exposed_pairs"]),
        "share_first_two_tokens_exposed_negatives": _ratio(c["exposed_share2"], c["exposed_pairs"]),
        "share_first_token_random_negatives": _ratio(c["random_share1"], c["random_pairs"]),
        "share_first_two_tokens_random_negatives": _ratio(c["random_share2"], c["random_pairs"]),
        "negatives_truly_relevant": _ratio(c["all_relevant_negatives"], c["all_truth_negatives"]),
        "exposed_negatives_truly_relevant": _ratio(c["exposed_relevant_negatives"], c["exposed_truth_negatives"]),
        "history_items_in_prompt_per_sample": _ratio(c["history_used"], c["samples"]),
        "history_items_unknown_to_index": c["history_unknown"],
        "negatives_dropped_same_sid": c["same_sid_dropped"],
        "categorizer_accuracy": _ratio(c["categorized_right"], c["categorized"]),
    }


def samples_stats(counters: dict[str, Counter[str]], cfg: SampleConfig, final_day: int, truth: bool,
                  categorizer: QueryCategorizer, categorizer_pairs: int) -> dict[str, Any]:
    """The statistics of a run (``stats.json``) from its (possibly summed) :func:`write_samples` counters."""
    run = counters["run"]
    return {
        "sessions": run["sessions"],
        "skipped_no_positive_in_index": run["skipped_no_positive"],
        "skipped_no_split": run["skipped_no_split"],
        "split": cfg.split,
        "last_day": final_day if cfg.split == "day" else None,
        "ground_truth": truth,
        "prompt_version": PROMPT_VERSION,
        "num_negatives": cfg.num_negatives,
        "max_history": cfg.prompt.max_history,
        "hard_search": cfg.prompt.hard_search,
        "exclude_same_sid": cfg.exclude_same_sid,
        "seed": cfg.seed,
        "categorizer_categories": len(categorizer.categories),
        "categorizer_train_pairs": categorizer_pairs,
        "all": finish_stats(counters["train"] + counters["test"]),
        **{s: finish_stats(counters[s]) for s in SPLITS},
    }
