"""sid_index.atomic_files: atomic writes leave the old file or the new one, never a partial one or a temp file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sid_index.atomic_files import (
    publish_directory,
    save_figure_atomic,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from sid_index.tokens import shared_prefix_len


def test_write_bytes_text_json_replace_and_leave_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.json"
    write_text_atomic(p, "old")
    write_json_atomic(p, {"b": 1, "a": "é"})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    write_bytes_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    write_text_atomic(p, "old")
    with pytest.raises(TypeError):
        write_json_atomic(p, {"x": object()})
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


class _BadFigure:
    def savefig(self, fname: object, **kwargs: object) -> None:
        raise RuntimeError("render failed")


def test_figure_failure_leaves_old_png(tmp_path: Path) -> None:
    p = tmp_path / "f.png"
    write_bytes_atomic(p, b"png")
    with pytest.raises(RuntimeError):
        save_figure_atomic(_BadFigure(), p)
    assert p.read_bytes() == b"png"


def test_save_figure_writes_a_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure_atomic(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_publish_directory_replaces_whole_or_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with publish_directory(target) as d:
        (d / "x").write_text("1")
    with pytest.raises(RuntimeError), publish_directory(target) as d:
        (d / "x").write_text("2")
        raise RuntimeError("half-way")
    assert (target / "x").read_text() == "1"
    assert [x.name for x in tmp_path.iterdir()] == ["bundle"]
    with publish_directory(target) as d:
        (d / "y").write_text("3")
    assert sorted(x.name for x in target.iterdir()) == ["y"]
    assert [x.name for x in tmp_path.iterdir()] == ["bundle"]
    with pytest.raises(FileExistsError, match="bundle"), publish_directory(target, overwrite=False):
        pass


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "b"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert sha256_file(p, chunk=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("a", "b", "n"), [((1, 2, 3), (1, 2, 3), 3), ((1, 2, 3), (1, 2, 4), 2),
                                           ((1, 2, 3), (0, 2, 3), 0), ((5, 1, 1), (5, 0, 1), 1)])
def test_shared_prefix_len(a: tuple[int, ...], b: tuple[int, ...], n: int) -> None:
    assert shared_prefix_len(a, b) == n
