"""``radgr export`` → ``radgr bundle verify`` → serve: the served scores equal teacher-forced scores computed with
plain transformers from the exported ``model/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from test_bundle_fixtures import TinyInputs, make_tiny_inputs

from cli.main import main
from decoding.bundle import read_manifest
from decoding.prompt import PROMPT_VERSION

Run = tuple[TinyInputs, Path, Path, Path]  # the fixture: inputs, RUN_DIR/final, samples dir, eval JSON


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A fake training run: RUN_DIR/final (model dir + radgr_train.json), a samples dir, an eval JSON."""
    root = tmp_path_factory.mktemp("run")
    inputs = make_tiny_inputs(root / "inputs")
    final = Path(shutil.copytree(inputs.model_dir, root / "run" / "final"))
    (final / "radgr_train.json").write_text(json.dumps({
        "method": "rad-dpo", "steps": 12, "data": {"samples": "samples"}, "prompt_version": PROMPT_VERSION,
        "codebook_sizes": [4, 4, 4], "model": {"preset": "tiny"}, "train_loss": 1.5}))
    samples = root / "samples"
    samples.mkdir()
    shutil.copy(inputs.categorizer_json, samples / "query_categorizer.json")
    (samples / "stats.json").write_text(json.dumps({"prompt_version": PROMPT_VERSION, "max_history": 7,
                                                    "hard_search": False}))
    metrics = root / "eval.json"
    metrics.write_text(json.dumps({"item_recall@10": 0.25, "sid_mrr": 0.125}))
    return inputs, final, samples, metrics


def _export(run: Run, out: Path, *extra: str) -> int:
    inputs, final, samples, metrics = run
    return main(["export", "--checkpoint", str(final), "--index", str(inputs.index_dir), "--samples", str(samples),
                 "--out", str(out), "--metrics", str(metrics), *extra])


def test_export_then_verify_records_provenance(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    assert _export(run, out) == 0
    assert main(["bundle", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    m = read_manifest(out)
    prov = m["provenance"]
    assert (prov["method"], prov["steps"]) == ("rad-dpo", 12)
    assert prov["metrics"] == {"item_recall@10": 0.25, "sid_mrr": 0.125}
    assert m["name"] == "radgr-tiny-rad-dpo-step12"
    assert m["prompt"] == {"version": PROMPT_VERSION, "max_history": 7, "hard_search": False}
    assert not any(rel.endswith("radgr_train.json") for rel in m["files"])
    # tampering is caught by `bundle verify` with the file named
    (out / "index" / "categories.json").write_text("[]")
    assert main(["bundle", "verify", str(out)]) == 1
    assert "index/categories.json" in capsys.readouterr().err
    assert _export(run, out) == 1  # refuses to replace without --overwrite
    assert _export(run, out, "--overwrite") == 0
    assert main(["bundle", "verify", str(out)]) == 0


def test_export_refuses_other_prompt_version(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs, final, samples, _ = run
    other = Path(shutil.copytree(final, tmp_path / "final"))
    info = json.loads((other / "radgr_train.json").read_text())
    (other / "radgr_train.json").write_text(json.dumps({**info, "prompt_version": "radgr-prompt-v0"}))
    rc = main(["export", "--checkpoint", str(other), "--index", str(inputs.index_dir), "--samples", str(samples),
               "--out", str(tmp_path / "b")])
    assert rc == 1 and "radgr-prompt-v0" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def _teacher_forced(model: Any, prompt_ids: list[int], sid_ids: list[int]) -> float:
    """Sum over the 3 SID tokens of log-softmax over the full vocabulary, given the prompt (plain forward)."""
    ids = torch.tensor([prompt_ids + sid_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + j, tok] for j, tok in enumerate(sid_ids)))


def test_served_scores_equal_teacher_forcing_of_the_exported_model(run: Run, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.app import create_app
    from server.settings import ServerSettings

    out = tmp_path / "bundle"
    assert _export(run, out) == 0
    assert main(["bundle", "verify", str(out)]) == 0
    with TestClient(create_app(ServerSettings(bundle=out))) as client:
        body = client.post("/retrieve", json={"query": "cordless drill", "history": ["item003", "item000"],
                                              "beam_width": 128, "top_k": 50, "debug": True}).json()
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    prompt_ids = body["debug"]["prompt_token_ids"]
    assert prompt_ids == tokenizer(body["debug"]["prompt"], add_special_tokens=False)["input_ids"]
    manifest = read_manifest(out)
    assert len(body["sids"]) == manifest["index"]["num_sids"]  # beam 128 ≥ every SID of the tiny catalog
    for sid in body["sids"]:
        assert sid["token_ids"] == tokenizer.convert_tokens_to_ids(sid["sid"].replace("><", "> <").split())
        assert sid["score"] == pytest.approx(_teacher_forced(model, prompt_ids, sid["token_ids"]), abs=1e-4)
