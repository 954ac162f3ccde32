"""End to end on a tiny synthetic world: ``radgr train sft`` learns (loss falls, parameters move, it beats the
popularity baseline in ``radgr eval``), and ``--resume`` continues a run from its checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cli.main import main
from decoding.prompt import PROMPT_VERSION, render_prompt
from sid_index.index import SidIndex
from training.data.sample_format import Sample, samples_to_batch
from training.model import build_model, load_model, read_train_info

WORDS = ["drill", "tape", "glove", "saw", "hammer", "ruler", "level", "clamp"]
SIZES = (8, 4, 4)


def make_world(root: Path, train_sessions: int = 320, test_sessions: int = 48, seed: int = 0) -> dict[str, Path]:
    """8 query words x 4 items each; word k's items have level-0 code k. A session's positive is one of its word's
    items (weights .55/.25/.15/.05); the global popularity is flat across words, so only the query tells them apart.
    """
    rng = np.random.default_rng(seed)
    item_ids: list[str] = []
    codes: list[tuple[int, int, int]] = []
    for k, _ in enumerate(WORDS):
        for j in range(4):
            item_ids.append(f"{k}-{j}")
            codes.append((k, j % 4, (j * 3 + k) % 4))
    index = SidIndex.from_codes(item_ids, np.array(codes), np.ones(len(item_ids)), None, SIZES)
    index_dir = index.save(root / "index")
    weights = np.array([0.55, 0.25, 0.15, 0.05])

    def session(i: int, split: str) -> Sample:
        k = int(rng.integers(len(WORDS)))
        j = int(rng.choice(4, p=weights))
        item = f"{k}-{j}"
        prompt = render_prompt(f"{WORDS[k]} {rng.choice(['cheap', 'new', 'pro', 'best'])}",
                               {"region": str(rng.choice(["n", "s"]))}, [])
        return Sample(session_id=f"{split}{i}", day=1 if split == "train" else 2, split=split, prompt=prompt,
                      prompt_version=PROMPT_VERSION, positive_items=(item,),
                      positive_codes=(codes[k * 4 + j],), top_index=0, negative_items=(),
                      negative_codes=(), negative_relevant=None, relevant_items=(), relevant_grades=())

    samples_dir = root / "samples"
    samples_dir.mkdir(parents=True)
    for split, n in (("train", train_sessions), ("test", test_sessions)):
        batch = samples_to_batch([session(i, split) for i in range(n)])
        pq.write_table(pa.Table.from_batches([batch]), samples_dir / f"{split}.parquet")
    return {"index": index_dir, "samples": samples_dir}


@pytest.mark.slow
def test_sft_learns_and_beats_popularity(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    run = tmp_path / "run"
    rc = main(["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]), "--out", str(run),
               "--preset", "tiny", "--epochs", "6", "--batch-size", "32", "--lr", "3e-3", "--logging-steps", "5",
               "--save-steps", "1000", "--tokenizer-vocab", "300", "--min-steps", "0",
               "--val-fraction", "0"])
    assert rc == 0
    final = run / "final"
    info = read_train_info(final)
    assert info["method"] == "sft" and info["steps"] == 60 and info["pairs"] == 320
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (final / name).is_file()
    log = json.loads((run / "train_log.json").read_text())
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (run / "loss.png").is_file()

    trained = load_model(final)
    init = build_model("tiny", trained.config.vocab_size, seed=0)
    moved = [not torch.equal(p, q) for p, q in zip(trained.parameters(), init.parameters(), strict=True)]
    assert all(moved)

    report = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(final), "--index", str(world["index"]), "--samples", str(world["samples"]),
               "--baseline", "popularity", "--beam-width", "16", "--top-k", "40", "--out", str(report)])
    assert rc == 0
    doc = json.loads(report.read_text())
    sft, pop = doc["results"][0], doc["results"][1]
    assert sft["name"] == "sft" and pop["name"] == "popularity"
    assert 0.0 <= sft["hallucination_rate"] <= 1.0
    # the optimum here is MRR ~ .55*1 + .25*.5 + ... ~ .75 for items; popularity cannot tell words apart
    assert sft["metrics"]["item"]["mrr"] > pop["metrics"]["item"]["mrr"] + 0.2
    assert sft["metrics"]["sid"]["recall@8"] > pop["metrics"]["sid"]["recall@8"] + 0.2
    assert report.with_suffix(".md").read_text().startswith("| method |")

    # --against: a reference model first, the model paired with it; the model against itself (A/A) differs by 0
    aa = tmp_path / "aa.json"
    assert main(["eval", "--model", str(final), "--against", str(final), "--index", str(world["index"]),
                 "--samples", str(world["samples"]), "--beam-width", "16", "--top-k", "40", "--no-hallucination",
                 "--out", str(aa)]) == 0
    ref, same = json.loads(aa.read_text())["results"]
    assert ref["name"] == "sft (reference)" and same["name"] == "sft"
    assert same["paired"]["against"] == "sft (reference)"
    assert same["paired"]["metrics"]["R@10"]["diff"] == 0.0 and same["paired"]["metrics"]["MRR"]["p"] == 1.0
    assert same["metrics"]["item"] == ref["metrics"]["item"]


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    world = make_world(tmp_path, train_sessions=64, test_sessions=4)
    run = tmp_path / "run"
    args = ["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]), "--out", str(run),
            "--max-steps", "8", "--save-steps", "4", "--batch-size", "16", "--logging-steps", "1",
            "--tokenizer-vocab", "300"]
    assert main(args) == 0
    first = read_train_info(run / "final")
    assert first["steps"] == 8 and first["resumed_from"] is None
    # pretend the run died after its step-4 checkpoint
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "checkpoint-8")
    assert main([*args, "--resume"]) == 0
    second = read_train_info(run / "final")
    assert second["steps"] == 8
    assert second["resumed_from"].endswith("checkpoint-4")
    log = json.loads((run / "train_log.json").read_text())
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    a, b = load_model(run / "final"), load_model(run / "checkpoints" / "checkpoint-8")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_final_model_is_rolled_back_to_the_best_validation(tmp_path: Path) -> None:
    """A learning rate far too high makes validation loss rise after the first steps: ``--restore-best`` (the
    default) saves the best evaluation's weights as ``final``, ``--keep-last`` the last step's."""
    world = make_world(tmp_path, train_sessions=200, test_sessions=2)
    args = ["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]), "--max-steps", "8",
            "--eval-every", "1", "--patience", "0", "--lr", "0.3", "--batch-size", "16", "--save-steps", "8",
            "--tokenizer-vocab", "300"]
    assert main([*args, "--out", str(tmp_path / "best")]) == 0
    assert main([*args, "--out", str(tmp_path / "last"), "--keep-last"]) == 0
    best, last = read_train_info(tmp_path / "best" / "final"), read_train_info(tmp_path / "last" / "final")
    sched = best["schedule"]
    assert sched["best_step"] < 8 and sched["restored_best_step"] == sched["best_step"]
    assert best["val_loss"] == sched["best_val_loss"] < sched["last_val_loss"] == last["val_loss"]
    assert last["schedule"]["restored_best_step"] is None
    weights = [load_model(tmp_path / r / "final") for r in ("best", "last")]
    at_8 = load_model(tmp_path / "last" / "checkpoints" / "checkpoint-8")
    assert all(torch.equal(p, q) for p, q in zip(weights[1].parameters(), at_8.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(weights[0].parameters(), at_8.parameters(), strict=True))


def test_sft_command_reports_bad_input(tmp_path: Path) -> None:
    world = make_world(tmp_path, train_sessions=4, test_sessions=1)
    rc = main(["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]),
               "--out", str(tmp_path / "r"), "--batch-size", "0"])
    assert rc == 2
    rc = main(["train", "sft", "--samples", str(tmp_path / "nowhere"), "--index", str(world["index"]),
               "--out", str(tmp_path / "r")])
    assert rc == 2
    rc = main(["eval", "--index", str(world["index"]), "--samples", str(world["samples"])])
    assert rc == 2


def test_sft_from_a_local_hf_model_adds_sid_tokens(tmp_path: Path) -> None:
    """``--model PATH``: a local HF causal LM whose tokenizer lacks SID tokens gets them; embeddings grow."""
    from conftest import make_tiny_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from decoding.sid_vocab import SidVocab

    words = ["<unk>", "</s>", "<pad>", "query:", "item:", *WORDS]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    base_tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")
    base = tmp_path / "base"
    make_tiny_model(len(words)).save_pretrained(str(base))
    base_tok.save_pretrained(str(base))

    world = make_world(tmp_path, train_sessions=16, test_sessions=2)
    run = tmp_path / "run"
    assert main(["train", "sft", "--samples", str(world["samples"]), "--index", str(world["index"]),
                 "--out", str(run), "--model", str(base), "--max-steps", "2", "--batch-size", "8"]) == 0
    tok = AutoTokenizer.from_pretrained(str(run / "final"))
    vocab = SidVocab.from_tokenizer(tok, SIZES)
    assert vocab.offsets[0] == len(words) and len(tok) == len(words) + sum(SIZES)
    model = load_model(run / "final")
    assert model.get_input_embeddings().num_embeddings == len(tok)
    info = read_train_info(run / "final")
    assert info["model"]["base_model"] == str(base) and info["model"]["preset"] is None


def test_cli_defaults_match_the_library_defaults() -> None:
    from cli.train_cmd import _D
    from training.sft import SFT_TRAIN_DEFAULTS

    for name in ("epochs", "lr", "batch_size", "grad_accum", "save_steps", "logging_steps", "max_steps", "seed"):
        assert getattr(_D, name) == getattr(SFT_TRAIN_DEFAULTS, name), name
    from training.sft import SFT_SCHEDULE_DEFAULTS

    for name in ("min_steps", "max_epochs", "val_fraction", "patience", "eval_every", "restore_best"):
        assert getattr(_D, name) == getattr(SFT_SCHEDULE_DEFAULTS, name), name
