"""Damaged files: every command that reads one says which file, on one line, and exits 2 (a bundle: 1), never with a
traceback and never with a wrong result; an export killed mid-write leaves the old bundle or nothing.

The damage is real: a file cut short (as a full disk or a killed copy leaves it) or one flipped bit (as a bad disk
or memory leaves it), in sessions, samples and catalog Parquet files, SID index files, model directories and every
file of a bundle; the server refuses a damaged bundle at start-up, naming the file.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_tiny_model, make_tiny_tokenizer
from test_bundle_fixtures import CODEBOOK_SIZES, WORDS, make_tiny_inputs
from test_faults_training import _sample

from cli.main import main
from decoding.bundle import BundleError, read_manifest, verify_bundle
from decoding.prompt import PROMPT_VERSION
from sid_index.catalog import read_catalog
from sid_index.index import SidIndex
from training.data.sample_format import Sample, samples_to_batch

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- damage
def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[min(int(len(data) * at), len(data) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


def _flip_footer(path: Path) -> None:
    _flip(path, 0.97)


DAMAGES: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "flipped-middle": _flip,
                                              "flipped-footer": _flip_footer}


def _one_line_error(capsys: pytest.CaptureFixture[str], *names: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("\r", "Loading weights"))]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- sessions, catalog, index → radgr data samples
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    assert main(["data", "simulate", "--out", str(root), "--items", "200", "--users", "20", "--sessions-per-day",
                 "30", "--days", "2"]) == 0
    cat = read_catalog(root / "catalog.parquet")
    n = cat.num_items
    codes = np.stack([np.arange(n) % 4, np.arange(n) % 5, np.arange(n) % 7], 1)
    SidIndex.from_codes(cat.item_ids, codes, cat.popularity, cat.categories, (4, 5, 7)).save(root / "index")
    return root


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        return Path(shutil.copytree(src, dst))
    dst.parent.mkdir(parents=True, exist_ok=True)
    for side in (src, src.with_name(src.name + ".sha256")):
        if side.exists():
            shutil.copy2(side, dst.parent / side.name.replace(src.name, dst.name))
    return dst


def _samples_args(sessions: Path, index: Path, catalog: Path, out: Path) -> list[str]:
    return ["data", "samples", "--sessions", str(sessions), "--index", str(index), "--catalog", str(catalog),
            "--out", str(out)]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("which", ["sessions", "catalog"])
def test_damaged_sessions_or_catalog_parquet_exit_2_naming_the_file(
        which: str, damage: str, sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sessions = _copy(sim / "sessions.parquet", tmp_path / "sessions.parquet")
    catalog = _copy(sim / "catalog.parquet", tmp_path / "catalog.parquet")
    assert (tmp_path / "sessions.parquet.sha256").is_file()  # radgr's writers leave a checksum beside the file
    bad = sessions if which == "sessions" else catalog
    DAMAGES[damage](bad)
    capsys.readouterr()
    out = tmp_path / "samples"
    assert main(_samples_args(sessions, sim / "index", catalog, out)) == 2
    _one_line_error(capsys, str(bad))
    assert not out.exists()
    if which == "catalog":
        assert main(["index", "build", "--catalog", str(catalog), "--out", str(tmp_path / "ix"),
                     "--embeddings", str(tmp_path / "none.npy")]) == 2
        _one_line_error(capsys, str(catalog))


def test_every_flipped_bit_of_a_sessions_file_is_refused_never_read_wrong(sim: Path, tmp_path: Path) -> None:
    """Parquet's page CRCs miss page headers and the footer; the .sha256 beside the file covers every byte."""
    from training.data.schema import read_sessions

    path = _copy(sim / "sessions.parquet", tmp_path / "sessions.parquet")
    good = path.read_bytes()
    for pos in random.Random(0).sample(range(len(good)), 200):
        data = bytearray(good)
        data[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=re.escape(str(path))):
            read_sessions(path)


def test_a_foreign_parquet_file_without_checksum_is_still_named(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A samples file written by another tool (no .sha256, no page CRCs), cut short: exit 2 naming it."""
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = random.Random(0)
    pq.write_table(pa.Table.from_batches([samples_to_batch([_sample(i, rng) for i in range(8)])]),
                   samples / "train.parquet")
    _truncate(samples / "train.parquet")
    capsys.readouterr()
    assert main(["train", "sft", "--samples", str(samples), "--index", str(tmp_path / "ix"), "--out",
                 str(tmp_path / "run")]) == 2  # the index is read first: it does not exist
    _one_line_error(capsys, "ix")
    SidIndex.from_codes(["a"], np.array([[0, 0, 0]]), np.ones(1), None, CODEBOOK_SIZES).save(tmp_path / "ix")
    assert main(["train", "sft", "--samples", str(samples), "--index", str(tmp_path / "ix"), "--out",
                 str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(samples / "train.parquet"), "not a readable Parquet file")
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize(("name", "damage"), [("sid_item_rows.npy", "flipped-middle"), ("sid_codes.npy", "truncated"),
                                              ("item_ids.marisa", "flipped-middle"), ("manifest.json", "truncated")])
def test_damaged_index_file_exit_2_naming_it(name: str, damage: str, sim: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    index = _copy(sim / "index", tmp_path / "index")
    DAMAGES[damage](index / name)
    capsys.readouterr()
    assert main(_samples_args(sim / "sessions.parquet", index, sim / "catalog.parquet", tmp_path / "out")) == 2
    _one_line_error(capsys, name)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- samples and model directories → train, eval, export
@pytest.fixture(scope="module")
def model_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model dir written by radgr (save_model_dir: radgr_train.json lists every file's sha256), its index,
    samples (train/test, radgr's writer: with .sha256) and query categorizer."""
    from training.data.sample_format import SampleWriter
    from training.model import save_model_dir

    root = tmp_path_factory.mktemp("mw")
    tiny = make_tiny_inputs(root / "inputs")
    tok = make_tiny_tokenizer(CODEBOOK_SIZES, words=WORDS)
    model = save_model_dir(make_tiny_model(len(tok)), tok, root / "sft" / "final",
                           {"method": "sft", "steps": 1, "data": {}, "codebook_sizes": list(CODEBOOK_SIZES)})
    samples = root / "samples"
    index = SidIndex.load(tiny.index_dir)
    for split in ("train", "test"):
        with SampleWriter(samples / f"{split}.parquet") as w:
            for i in range(8):
                w.add(_indexed_sample(i, split, index), flush_at=100)
    shutil.copy2(tiny.categorizer_json, samples / "query_categorizer.json")
    return {"model": model, "index": tiny.index_dir, "samples": samples}


def _indexed_sample(i: int, split: str, index: SidIndex) -> Sample:
    """A session whose positive and 2 negatives are items of ``index`` (so evaluation can run on it)."""
    items = [index.items_of_sid_row(r)[0] for r in range(index.num_sids)]
    pos, negs = items[i % len(items)], [items[(i + k) % len(items)] for k in (1, 2)]
    return Sample(session_id=f"{split}{i}", day=1 if split == "train" else 2, split=split,
                  prompt=f"query: {WORDS[i % len(WORDS)]} item:", prompt_version=PROMPT_VERSION,
                  positive_items=(pos,), positive_codes=(index.codes_of_item(pos),), top_index=0,
                  negative_items=tuple(negs), negative_codes=tuple(index.codes_of_item(n) for n in negs),
                  negative_relevant=(False, False), relevant_items=(pos,), relevant_grades=(1,))


def _world_copy(world: dict[str, Path], tmp: Path) -> dict[str, Path]:
    return {k: Path(shutil.copytree(v, tmp / k)) for k, v in world.items()}


@pytest.mark.parametrize("damage", ["truncated", "flipped-middle"])
def test_damaged_samples_exit_2_from_sft_and_align(damage: str, model_world: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    w = _world_copy(model_world, tmp_path)
    bad = w["samples"] / "train.parquet"
    DAMAGES[damage](bad)
    capsys.readouterr()
    assert main(["train", "sft", "--samples", str(w["samples"]), "--index", str(w["index"]), "--out",
                 str(tmp_path / "sft")]) == 2
    _one_line_error(capsys, str(bad))
    assert main(["train", "align", "--method", "simpo", "--sft", str(w["model"]), "--samples", str(w["samples"]),
                 "--out", str(tmp_path / "al")]) == 2
    _one_line_error(capsys, str(bad))
    assert not (tmp_path / "sft" / "final").exists() and not (tmp_path / "al" / "final").exists()


@pytest.mark.parametrize(("name", "damage"), [("model.safetensors", "truncated"),
                                              ("model.safetensors", "flipped-middle"),
                                              ("tokenizer.json", "flipped-middle"), ("config.json", "truncated")])
def test_damaged_model_dir_exit_2_from_eval_align_and_export(name: str, damage: str, model_world: dict[str, Path],
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped weight byte would load and give wrong rankings: the sha256 in radgr_train.json refuses it."""
    w = _world_copy(model_world, tmp_path)
    DAMAGES[damage](w["model"] / name)
    capsys.readouterr()
    assert main(["eval", "--model", str(w["model"]), "--index", str(w["index"]), "--samples", str(w["samples"]),
                 "--engine", "torch", "--no-hallucination"]) == 2
    _one_line_error(capsys, str(w["model"] / name))
    assert main(["export", "--checkpoint", str(w["model"]), "--index", str(w["index"]), "--samples",
                 str(w["samples"]), "--out", str(tmp_path / "bundle")]) == 2
    _one_line_error(capsys, str(w["model"] / name))
    assert not (tmp_path / "bundle").exists()
    assert main(["train", "align", "--method", "orpo", "--sft", str(w["model"]), "--samples", str(w["samples"]),
                 "--out", str(tmp_path / "al")]) == 2
    _one_line_error(capsys, str(w["model"] / name))


# ---------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def bundle(model_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle"
    assert main(["export", "--checkpoint", str(model_world["model"]), "--index", str(model_world["index"]),
                 "--samples", str(model_world["samples"]), "--out", str(out)]) == 0
    return out


def test_a_flipped_byte_in_any_bundle_file_is_refused_naming_it(bundle: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Every file: weights, tokenizer, configs, index arrays and tries, categorizer, both manifests."""
    b = Path(shutil.copytree(bundle, tmp_path / "b"))
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert {"manifest.json", "model/model.safetensors", "model/tokenizer.json", "index/sid_codes.npy",
            "index/manifest.json", "query_categorizer.json"} <= set(files)
    for k, rel in enumerate(files):
        good = (b / rel).read_bytes()
        _flip(b / rel, at=(k % 5 + 0.5) / 5)  # at various depths of the files
        capsys.readouterr()
        assert main(["bundle", "verify", str(b)]) == 1, rel
        _one_line_error(capsys, f"'{rel}'" if rel != "manifest.json" else "manifest")
        (b / rel).write_bytes(good)
    assert main(["bundle", "verify", str(b)]) == 0


@pytest.mark.parametrize("rel", ["model/model.safetensors", "manifest.json", "index/sid_item_rows.npy"])
def test_the_server_refuses_a_damaged_bundle_at_start_up(rel: str, bundle: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import ServerSettings

    b = Path(shutil.copytree(bundle, tmp_path / "b"))
    _flip(b / rel, at=0.6)
    app = create_app(ServerSettings(bundle=b, engine="torch"))
    with pytest.raises(BundleError, match=re.escape(f"'{rel}'")), TestClient(app):
        pass


def test_a_manifest_edit_is_caught_by_its_own_checksum(bundle: Path, tmp_path: Path) -> None:
    """A change that leaves valid JSON (another model name) is refused too, not only a broken file."""
    b = Path(shutil.copytree(bundle, tmp_path / "b"))
    text = (b / "manifest.json").read_text()
    name = read_manifest(b)["name"]
    (b / "manifest.json").write_text(text.replace(f'"name": "{name}"', f'"name": "{name}x"'))
    with pytest.raises(BundleError, match=r"'manifest\.json' fails its own checksum"):
        verify_bundle(b)


# ---------------------------------------------------------------- radgr export killed mid-write
def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _export_killed(export: list[str], out: Path, when: str, log: Path) -> bool:
    """Run ``radgr export`` and SIGKILL it at ``when``; True when the kill landed mid-write (staging left behind)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as out_log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *export], cwd=REPO, env=env, stdout=out_log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        staging = _staging(out)
        if staging and (when == "staging-appears" or (staging[0] / "model" / "model.safetensors").is_file()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    rc = proc.wait(timeout=30)
    assert rc in (0, -signal.SIGKILL), log.read_text()
    return rc == -signal.SIGKILL and bool(_staging(out))


@pytest.mark.slow
@pytest.mark.parametrize(("old", "when"), [(True, "weights-copied"), (False, "staging-appears")])
def test_export_killed_mid_write_leaves_the_old_bundle_or_nothing(old: bool, when: str, bundle: Path,
                                                                  model_world: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """`radgr export --overwrite` killed with SIGKILL while it fills its staging folder: the path still holds the old
    bundle (it verifies, same manifest bytes), or nothing when there was none; the next export then succeeds.
    A busy machine can starve this process past the staging window, so a kill that missed it is tried again."""
    out = tmp_path / "bundle"
    export = ["export", "--checkpoint", str(model_world["model"]), "--index", str(model_world["index"]),
              "--samples", str(model_world["samples"]), "--out", str(out), "--overwrite", "--name", "new"]
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        for leftover in _staging(out):
            shutil.rmtree(leftover)
        if old:
            shutil.copytree(bundle, out)
        if _export_killed(export, out, when, tmp_path / "export.log"):
            break
    else:
        pytest.fail("three exports ended before the kill landed mid-write")
    if old:
        assert (out / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
        verify_bundle(out)
    else:
        assert not out.exists()
    assert main(export) == 0
    assert read_manifest(out)["name"] == "new"
