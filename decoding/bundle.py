"""The servable bundle: one directory holding a model, its SID index and everything the server needs to render
prompts exactly as training did. Training writes it (``radgr export``); the server reads it. Neither imports
the other: this format is what they share.

Layout::

    BUNDLE/
      model/                 standard Hugging Face directory: config.json, *.safetensors, tokenizer.json +
                             tokenizer_config.json (fast tokenizer holding the SID tokens), generation_config.json
                             with every decoding parameter pinned (beam search, 3 new tokens, no sampling, ...)
      index/                 a SidIndex directory (sid_index.index)
      query_categorizer.json the hard-search query categorizer (decoding.hard_search)
      manifest.json          format name/version, sha256 of every other file, the SID token layout per level
                             (offset, size), eos id, vocab size, prompt version and config, index summary,
                             provenance (method, data, steps, metrics), the model name, and ``manifest_sha256``:
                             the sha256 of the manifest's own bytes with that value zeroed (:func:`seal_manifest`)

Contract:
- ``write_bundle(out_dir, model_dir, index_dir, categorizer_json, provenance)`` builds the bundle in a temporary
  sibling directory and renames it into place, so ``out_dir`` is either absent, the old bundle, or the complete
  new one; it refuses inputs that disagree (tokenizer SID tokens vs index codebooks, model vocabulary too small)
  before anything appears under ``out_dir``.
- ``verify_bundle(dir)`` checks, in order: manifest readable, of a known format version and matching its own
  ``manifest_sha256``; every file listed and no file unlisted; every sha256 (so one flipped byte anywhere in a
  bundle is refused, naming the file); prompt version equals :data:`decoding.prompt.PROMPT_VERSION`; the index
  loads and its codebook sizes and counts match the manifest; the tokenizer's SID tokens sit exactly at the
  manifest's offsets with the manifest's eos id; the model's vocabulary holds them; the categorizer loads.
  Any failure raises :class:`BundleError` saying which check and which file.
- ``load_bundle(dir, with_model=True)`` verifies, then returns a :class:`Bundle` with the tokenizer, index,
  categorizer, :class:`~decoding.sid_vocab.SidVocab`, prompt config and (optionally) the model in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from decoding.engine import MAX_BEAM_WIDTH
from decoding.hard_search import QueryCategorizer
from decoding.prompt import PROMPT_VERSION
from decoding.request_prompt import PromptConfig
from decoding.sid_vocab import SidVocab
from sid_index.atomic_files import publish_directory, sha256_file
from sid_index.index import SidIndex
from sid_index.manifest import MANIFEST, read_format_manifest
from sid_index.tokens import NUM_LEVELS, sid_token

logger = logging.getLogger(__name__)

FORMAT_NAME = "radgr-bundle"
FORMAT_VERSION = 2  # 2: the manifest checks its own bytes (manifest_sha256)
MANIFEST_SEAL = "manifest_sha256"
_UNSEALED = "0" * 64
MODEL_DIR = "model"
INDEX_DIR = "index"
CATEGORIZER = "query_categorizer.json"
GENERATION_CONFIG = "generation_config.json"
# Files of a Hugging Face model directory that belong in a bundle (training state, optimizer, pickles do not).
_MODEL_FILE_NAMES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "chat_template.jinja", "model.safetensors.index.json")
_REQUIRED_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", GENERATION_CONFIG)
PROVENANCE_KEYS = ("method", "data", "steps")


class BundleError(ValueError):
    """A bundle (or the inputs of one) is inconsistent; the message names the check and the file."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    tokenizer: Any
    index: SidIndex
    categorizer: QueryCategorizer
    vocab: SidVocab
    prompt_config: PromptConfig
    model: Any | None = None

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR


# -- small pure helpers ---------------------------------------------------------------------------------------------
def pinned_generation_config(eos_id: int | None, pad_id: int | None,
                             beam_width: int = MAX_BEAM_WIDTH) -> dict[str, Any]:
    """Every decoding parameter of SID beam search, explicit, so no library default leaks in (padding defaults to
    eos). The one definition: ``training.model.hf_generation_config`` builds a strictly validated
    ``GenerationConfig`` from it for model directories; bundles write it as ``model/generation_config.json``."""
    eos = None if eos_id is None else int(eos_id)
    return {
        "num_beams": beam_width, "num_return_sequences": beam_width, "max_new_tokens": NUM_LEVELS,
        "min_new_tokens": NUM_LEVELS, "do_sample": False, "length_penalty": 0.0, "early_stopping": True,
        "temperature": None, "top_k": None, "top_p": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
        "num_beam_groups": 1, "diversity_penalty": 0.0, "renormalize_logits": False, "use_cache": True,
        "output_scores": False, "return_dict_in_generate": False, "bos_token_id": None,
        "eos_token_id": eos, "pad_token_id": eos if pad_id is None else int(pad_id),
    }


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sid_layout(vocab: SidVocab) -> dict[str, Any]:
    return {
        "levels": [{"level": lvl, "offset": int(o), "size": int(s), "first_token": sid_token(lvl, 0),
                    "last_token": sid_token(lvl, int(s) - 1)}
                   for lvl, (o, s) in enumerate(zip(vocab.offsets, vocab.sizes, strict=True))],
        "eos_id": int(vocab.eos_id), "vocab_size": int(vocab.vocab_size),
    }


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise BundleError(f"tokenizer in {str(model_dir)!r} does not load: {type(exc).__name__}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise BundleError(f"tokenizer in {str(model_dir)!r} must be a fast tokenizer (tokenizer.json)")
    return tok


def _model_vocab_size(model_dir: Path) -> int:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"model file 'config.json' in {str(model_dir)!r} is unreadable: {exc}") from exc
    size = config.get("vocab_size")
    if size is None and isinstance(config.get("text_config"), dict):
        size = config["text_config"].get("vocab_size")
    if not isinstance(size, int) or size < 1:
        raise BundleError(f"model file 'config.json' must hold an integer vocab_size >= 1, given {size!r}")
    return size


def _vocab_against_index(tokenizer: Any, index: SidIndex, vocab_size: int, where: str) -> SidVocab:
    try:
        vocab = SidVocab.from_tokenizer(tokenizer, index.codebook_sizes, vocab_size=vocab_size)
    except ValueError as exc:
        raise BundleError(f"tokenizer SID tokens disagree with the index codebooks {tuple(index.codebook_sizes)} "
                          f"({where}): {exc}") from exc
    known = tokenizer.get_vocab()
    for level, size in enumerate(vocab.sizes):
        if sid_token(level, size) in known:
            raise BundleError(f"tokenizer SID tokens disagree with the index codebooks {tuple(index.codebook_sizes)} "
                              f"({where}): the tokenizer has {sid_token(level, size)}, beyond level {level}'s "
                              f"{size} codes")
    last = max(o + s for o, s in zip(vocab.offsets, vocab.sizes, strict=True)) - 1
    if last >= vocab_size or vocab.eos_id >= vocab_size:
        raise BundleError(f"model vocab_size {vocab_size} must exceed every SID token id and eos id "
                          f"(largest {max(last, vocab.eos_id)}) ({where})")
    return vocab


def _seal_line(value: str) -> bytes:
    # the top-level field as json.dumps(indent=2) writes it: nested fields sit deeper, so this line is unique
    return f'\n  "{MANIFEST_SEAL}": "{value}"'.encode()


def seal_manifest(manifest: Mapping[str, Any]) -> str:
    """The manifest as JSON text (indent 2, sorted keys) whose ``manifest_sha256`` is the sha256 of the text's
    UTF-8 bytes with that value replaced by 64 zeros; any changed byte of the file then fails the check."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SEAL}
    text = json.dumps({**body, MANIFEST_SEAL: _UNSEALED}, indent=2, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return text.replace(_seal_line(_UNSEALED).decode(), _seal_line(digest).decode(), 1)


def _check_seal(path: Path, manifest: Mapping[str, Any]) -> None:
    value = manifest.get(MANIFEST_SEAL)
    if not isinstance(value, str) or len(value) != 64:
        raise BundleError(f"bundle file {MANIFEST!r} has no valid {MANIFEST_SEAL} (changed or corrupt)")
    raw = path.read_bytes()
    if raw.count(_seal_line(value)) != 1:
        raise BundleError(f"bundle file {MANIFEST!r} fails its own checksum {MANIFEST_SEAL} (changed or corrupt)")
    if hashlib.sha256(raw.replace(_seal_line(value), _seal_line(_UNSEALED))).hexdigest() != value:
        raise BundleError(f"bundle file {MANIFEST!r} fails its own checksum {MANIFEST_SEAL} (changed or corrupt)")


# -- write --------------------------------------------------------------------------------------------------------
def _copy_model_files(model_dir: Path, dest: Path) -> None:
    if not model_dir.is_dir():
        raise BundleError(f"model directory {str(model_dir)!r} does not exist")
    dest.mkdir(parents=True)
    names = [n for n in _MODEL_FILE_NAMES if (model_dir / n).is_file()]
    weights = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not weights:
        raise BundleError(f"model directory {str(model_dir)!r} holds no *.safetensors weights")
    for required in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if required not in names:
            raise BundleError(f"model file {required!r} is missing in {str(model_dir)!r}")
    for name in (*names, *weights):
        shutil.copy2(model_dir / name, dest / name)


def _check_provenance(provenance: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in PROVENANCE_KEYS if k not in provenance]
    if missing:
        raise BundleError(f"provenance must hold {', '.join(PROVENANCE_KEYS)}; missing {', '.join(missing)}")
    out = dict(provenance)
    out.setdefault("metrics", {})
    try:
        json.dumps(out)
    except TypeError as exc:
        raise BundleError(f"provenance must be JSON-serialisable: {exc}") from exc
    return out


def write_bundle(out_dir: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                 index_dir: str | os.PathLike[str], categorizer_json: str | os.PathLike[str],
                 provenance: Mapping[str, Any], *, name: str | None = None,
                 prompt_config: PromptConfig | None = None, overwrite: bool = False) -> Path:
    """Assemble and atomically publish a bundle; returns its path (see the module docstring)."""
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise BundleError(f"bundle directory {str(target)!r} already exists (pass overwrite=True to replace it)")
    prov = _check_provenance(provenance)
    prompt_cfg = prompt_config if prompt_config is not None else PromptConfig()
    with publish_directory(target, overwrite=overwrite) as staging:
        _copy_model_files(Path(model_dir), staging / MODEL_DIR)
        tokenizer = _load_tokenizer(staging / MODEL_DIR)
        try:
            index = SidIndex.load(index_dir)
        except ValueError as exc:
            raise BundleError(f"index {str(index_dir)!r} does not load: {exc}") from exc
        vocab = _vocab_against_index(tokenizer, index, _model_vocab_size(staging / MODEL_DIR), "inputs")
        gen = pinned_generation_config(vocab.eos_id, tokenizer.pad_token_id)
        (staging / MODEL_DIR / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2, sort_keys=True))
        shutil.copytree(index_dir, staging / INDEX_DIR)
        try:
            categorizer = QueryCategorizer.load(categorizer_json)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"query categorizer {str(categorizer_json)!r} does not load: {exc}") from exc
        (staging / CATEGORIZER).write_text(categorizer.to_json(), encoding="utf-8")
        files = {rel: sha256_file(staging / rel) for rel in _relative_files(staging)}
        manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "name": name or str(prov.get("name") or target.name),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prompt": {"version": PROMPT_VERSION, "max_history": prompt_cfg.max_history,
                       "hard_search": prompt_cfg.hard_search},
            "sid_layout": sid_layout(vocab),
            "index": {"codebook_sizes": [int(s) for s in index.codebook_sizes], "num_sids": index.num_sids,
                      "num_items": index.num_items},
            "generation": gen,
            "provenance": prov,
            "files": files,
        }
        (staging / MANIFEST).write_text(seal_manifest(manifest), encoding="utf-8")
    return target


# -- verify / load ------------------------------------------------------------------------------------------------
def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The bundle's manifest after the format checks and the check that every top-level field is there."""
    manifest = read_format_manifest(bundle_dir, kind="bundle", format_name=FORMAT_NAME,
                                    format_version=FORMAT_VERSION, error=BundleError)
    _check_seal(Path(bundle_dir) / MANIFEST, manifest)
    for key in ("name", "prompt", "sid_layout", "index", "provenance", "files"):
        if key not in manifest:
            raise BundleError(f"manifest is missing field {key!r}")
    return manifest


def _check_files(d: Path, manifest: Mapping[str, Any]) -> None:
    listed: dict[str, str] = manifest["files"]
    present = set(_relative_files(d)) - {MANIFEST}
    for rel in (*(f"{MODEL_DIR}/{n}" for n in _REQUIRED_MODEL_FILES), CATEGORIZER, f"{INDEX_DIR}/manifest.json"):
        if rel not in listed:
            raise BundleError(f"manifest does not list required file {rel!r}")
    if not any(rel.startswith(f"{MODEL_DIR}/") and rel.endswith(".safetensors") for rel in listed):
        raise BundleError("manifest lists no model/*.safetensors weights")
    for rel in sorted(listed):
        if rel not in present:
            raise BundleError(f"bundle file {rel!r} is missing (listed in the manifest)")
    for rel in sorted(present - set(listed)):
        raise BundleError(f"bundle file {rel!r} is not listed in the manifest (unexpected file)")
    for rel in sorted(listed):
        if sha256_file(d / rel) != listed[rel]:
            raise BundleError(f"bundle file {rel!r} fails its sha256 checksum (changed or corrupt)")


def _check(bundle_dir: str | os.PathLike[str]) -> Bundle:
    """Every check of :func:`verify_bundle`; the checked bundle without its model."""
    d = Path(bundle_dir)
    manifest = read_manifest(d)
    _check_files(d, manifest)
    prompt = manifest["prompt"]
    if prompt.get("version") != PROMPT_VERSION:
        raise BundleError(f"manifest prompt version {prompt.get('version')!r} differs from this code's "
                          f"{PROMPT_VERSION!r}: prompts would not match training")
    try:
        prompt_cfg = PromptConfig(max_history=int(prompt.get("max_history", 50)),
                                  hard_search=bool(prompt.get("hard_search", True)))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest prompt config is invalid: {exc}") from exc
    try:
        index = SidIndex.load(d / INDEX_DIR)
    except ValueError as exc:
        raise BundleError(f"bundle index does not load: {exc}") from exc
    layout = manifest["sid_layout"]
    sizes = tuple(int(lv["size"]) for lv in layout["levels"])
    if sizes != tuple(int(s) for s in index.codebook_sizes):
        raise BundleError(f"index codebook sizes {tuple(index.codebook_sizes)} disagree with the manifest's SID "
                          f"layout sizes {sizes}")
    summary = manifest["index"]
    if (int(summary["num_sids"]), int(summary["num_items"])) != (index.num_sids, index.num_items):
        raise BundleError(f"index holds {index.num_sids} SIDs / {index.num_items} items, the manifest says "
                          f"{summary['num_sids']} / {summary['num_items']}")
    model_dir = d / MODEL_DIR
    tokenizer = _load_tokenizer(model_dir)
    vocab_size = _model_vocab_size(model_dir)
    if vocab_size != int(layout["vocab_size"]):
        raise BundleError(f"model vocab_size {vocab_size} disagrees with the manifest's {layout['vocab_size']}")
    vocab = _vocab_against_index(tokenizer, index, vocab_size, "model/tokenizer.json")
    expected_offsets = tuple(int(lv["offset"]) for lv in layout["levels"])
    if vocab.offsets != expected_offsets:
        raise BundleError(f"tokenizer SID token offsets {vocab.offsets} disagree with the manifest's "
                          f"{expected_offsets}")
    if vocab.eos_id != int(layout["eos_id"]):
        raise BundleError(f"tokenizer eos id {vocab.eos_id} disagrees with the manifest's {layout['eos_id']}")
    try:
        categorizer = QueryCategorizer.load(d / CATEGORIZER)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"bundle file {CATEGORIZER!r} does not load: {exc}") from exc
    return Bundle(d, manifest, tokenizer, index, categorizer, vocab, prompt_cfg)


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run every check; returns the manifest, or raises :class:`BundleError` naming what disagrees."""
    return _check(bundle_dir).manifest


def load_bundle(bundle_dir: str | os.PathLike[str], *, with_model: bool = True) -> Bundle:
    """Verify, then load everything the server needs (the model in eval mode when ``with_model``)."""
    checked = _check(bundle_dir)
    model = None
    if with_model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(Path(bundle_dir) / MODEL_DIR), dtype="auto").eval()
        out_size = int(model.get_output_embeddings().weight.shape[0])
        if out_size != checked.vocab.vocab_size:
            raise BundleError(f"model output vocabulary {out_size} disagrees with the manifest's "
                              f"{checked.vocab.vocab_size}")
    return replace(checked, model=model)
