"""The bundle format: write (atomic) → verify → load, and every disagreement refused with a message saying which."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_bundle_fixtures import CODEBOOK_SIZES, TinyInputs, make_tiny_inputs

from decoding.bundle import (
    CATEGORIZER,
    FORMAT_VERSION,
    BundleError,
    load_bundle,
    seal_manifest,
    verify_bundle,
    write_bundle,
)
from decoding.prompt import PROMPT_VERSION
from sid_index.atomic_files import sha256_file
from sid_index.manifest import MANIFEST

PROVENANCE = {"method": "sft", "data": "synthetic-tiny", "steps": 3, "metrics": {"item_recall@10": 0.5}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> TinyInputs:
    return make_tiny_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def good_bundle(inputs: TinyInputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle"
    return write_bundle(out, inputs.model_dir, inputs.index_dir, inputs.categorizer_json, PROVENANCE, name="tiny")


@pytest.fixture
def bundle_copy(good_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_bundle, tmp_path / "copy"))


def _rewrite_manifest(bundle: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    (bundle / MANIFEST).write_text(seal_manifest(manifest))  # a consistent edit: the manifest's own checksum redone


def _rehash(bundle: Path) -> None:
    """Recompute the manifest's checksums, as a careless hand edit of a bundle would."""
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    _rewrite_manifest(bundle, lambda m: m.update(files={rel: sha256_file(bundle / rel) for rel in files
                                                        if rel != MANIFEST}))


def test_round_trip_layout_manifest_and_load(good_bundle: Path) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig

    manifest = verify_bundle(good_bundle)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["prompt"]["version"] == PROMPT_VERSION
    assert manifest["provenance"]["method"] == "sft" and manifest["provenance"]["steps"] == 3
    assert manifest["provenance"]["metrics"] == {"item_recall@10": 0.5}
    files = manifest["files"]
    for rel in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/generation_config.json",
                "index/manifest.json", CATEGORIZER):
        assert rel in files and files[rel] == sha256_file(good_bundle / rel)
    levels = manifest["sid_layout"]["levels"]
    assert [lv["size"] for lv in levels] == list(CODEBOOK_SIZES)
    bundle = load_bundle(good_bundle)
    assert bundle.vocab.offsets == tuple(lv["offset"] for lv in levels)
    for lv in levels:  # the layout says where each level's tokens are; the tokenizer agrees
        assert bundle.tokenizer.convert_tokens_to_ids(lv["last_token"]) == lv["offset"] + lv["size"] - 1
    assert bundle.vocab.eos_id == bundle.tokenizer.eos_token_id == manifest["sid_layout"]["eos_id"]
    assert bundle.index.num_sids == manifest["index"]["num_sids"]
    assert bundle.name == "tiny" and bundle.model is not None
    # model/ is a plain HF directory; every decoding parameter is pinned and strictly valid
    gen = GenerationConfig.from_pretrained(good_bundle / "model")
    gen.validate(strict=True)
    assert (gen.num_beams, gen.num_return_sequences, gen.max_new_tokens, gen.do_sample, gen.length_penalty) == (
        128, 128, 3, False, 0.0)
    model = AutoModelForCausalLM.from_pretrained(good_bundle / "model")
    assert model.config.vocab_size == manifest["sid_layout"]["vocab_size"]


def test_write_refuses_existing_target_and_leaves_no_partial_bundle(inputs: TinyInputs, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match="query categorizer"):
        write_bundle(out, inputs.model_dir, inputs.index_dir, tmp_path / "missing.json", PROVENANCE)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too
    write_bundle(out, inputs.model_dir, inputs.index_dir, inputs.categorizer_json, PROVENANCE)
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(out, inputs.model_dir, inputs.index_dir, inputs.categorizer_json, PROVENANCE)
    write_bundle(out, inputs.model_dir, inputs.index_dir, inputs.categorizer_json, {**PROVENANCE, "steps": 9},
                 overwrite=True)
    assert verify_bundle(out)["provenance"]["steps"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_write_refuses_missing_provenance_and_weights(inputs: TinyInputs, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="missing steps"):
        write_bundle(tmp_path / "b", inputs.model_dir, inputs.index_dir, inputs.categorizer_json,
                     {"method": "sft", "data": "x"})
    bare = Path(shutil.copytree(inputs.model_dir, tmp_path / "bare"))
    (bare / "model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"no \*\.safetensors"):
        write_bundle(tmp_path / "b", bare, inputs.index_dir, inputs.categorizer_json, PROVENANCE)
    assert not (tmp_path / "b").exists()


def test_write_refuses_tokenizer_that_disagrees_with_index(inputs: TinyInputs, tmp_path: Path) -> None:
    from sid_index.index import SidIndex

    rng = np.random.default_rng(1)
    n = 10
    bigger = (5, 4, 4)  # the tokenizer only has 4 level-0 SID tokens
    codes = np.stack([rng.integers(0, s, size=n) for s in bigger], axis=1)
    codes[0, 0] = 4
    other = SidIndex.from_codes([f"x{i}" for i in range(n)], codes, np.ones(n), None, bigger).save(tmp_path / "ix")
    with pytest.raises(BundleError, match=r"tokenizer SID tokens disagree.*<s0_4>"):
        write_bundle(tmp_path / "b", inputs.model_dir, other, inputs.categorizer_json, PROVENANCE)
    assert not (tmp_path / "b").exists()


def test_verify_names_a_changed_file(bundle_copy: Path) -> None:
    weights = bundle_copy / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'model/model.safetensors' fails its sha256"):
        verify_bundle(bundle_copy)


def test_verify_names_a_missing_and_an_unlisted_file(bundle_copy: Path) -> None:
    (bundle_copy / "index" / "sid_codes.npy").rename(bundle_copy / "sid_codes.npy")
    with pytest.raises(BundleError, match=r"'index/sid_codes.npy' is missing"):
        verify_bundle(bundle_copy)
    (bundle_copy / "sid_codes.npy").rename(bundle_copy / "index" / "sid_codes.npy")
    verify_bundle(bundle_copy)
    (bundle_copy / "model" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BundleError, match=r"'model/pytorch_model.bin' is not listed"):
        verify_bundle(bundle_copy)


def test_verify_names_prompt_version_and_format(bundle_copy: Path) -> None:
    _rewrite_manifest(bundle_copy, lambda m: m["prompt"].update(version="old-prompt"))
    with pytest.raises(BundleError, match="prompt version 'old-prompt'"):
        verify_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format_version"):
        verify_bundle(bundle_copy)
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(bundle_copy)


def test_verify_names_tokenizer_layout_disagreement(bundle_copy: Path) -> None:
    _rewrite_manifest(bundle_copy, lambda m: m["sid_layout"]["levels"][1].update(offset=3))
    with pytest.raises(BundleError, match="offsets"):
        verify_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, lambda m: m["sid_layout"]["levels"][1].update(offset=20))
    _rewrite_manifest(bundle_copy, lambda m: m["sid_layout"].update(eos_id=0))
    verify_src = json.loads((bundle_copy / MANIFEST).read_text())["sid_layout"]["levels"][1]["offset"]
    assert verify_src == 20
    with pytest.raises(BundleError, match="eos id"):
        verify_bundle(bundle_copy)


def test_verify_names_index_that_disagrees_with_tokenizer(bundle_copy: Path, tmp_path: Path) -> None:
    """A consistent-checksum bundle whose index was swapped for one with other codebooks is refused."""
    from sid_index.index import SidIndex

    n = 6
    codes = np.array([[i % 3, i % 2, i % 3] for i in range(n)])
    swapped = SidIndex.from_codes([f"y{i}" for i in range(n)], codes, np.ones(n), None, (3, 4, 4))
    shutil.rmtree(bundle_copy / "index")
    swapped.save(bundle_copy / "index")
    _rehash(bundle_copy)
    with pytest.raises(BundleError, match=r"index codebook sizes \(3, 4, 4\) disagree"):
        verify_bundle(bundle_copy)
    # fix the manifest's layout too: now the tokenizer is what disagrees
    _rewrite_manifest(bundle_copy, lambda m: (m["sid_layout"]["levels"][0].update(size=3),
                                              m["index"].update(num_sids=swapped.num_sids, num_items=n)))
    with pytest.raises(BundleError, match="tokenizer SID tokens disagree"):
        verify_bundle(bundle_copy)
