"""Sharded samples on Ray: the N fit and N build jobs as Ray tasks give the files one job gives; the CLI's options.

The dataset is tests/test_data_shards.py's (the simulator's sessions as 6 files ``day=D/part-P.parquet``), the index
saved to a directory that every Ray worker loads itself. Ray runs locally with 2 CPUs: its workers are separate
processes importing radgr from this environment, so they share nothing with the driver but the files. The tests
that start Ray skip without it (the ``cluster`` extra), except in CI (``CI=true``), where they fail: scripts/setup.sh
installs it there.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

import pytest
from conftest import require_extra
from test_data_shards import _same_output, simulated_dataset

from cli.main import main
from sid_index.index_files import IndexFormatError
from training.data.samples import SampleConfig, build_samples
from training.data.shards_ray import RayMissingError, build_samples_ray, check_address

CFG = SampleConfig(batch_size=16)


def _require_ray() -> None:
    require_extra("ray", "cluster")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the partitioned dataset, the index directory, one job's output on them)."""
    d = tmp_path_factory.mktemp("sim")
    _, parts, index = simulated_dataset(d)
    index.save(d / "index")
    build_samples(parts, index, d / "one", CFG)
    return parts, d / "index", d / "one"


def test_ray_tasks_equal_one_job(world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """In a Ray instance the caller started (left running): a failing task's error comes back as the task's own
    exception; 3 shard jobs over the 6 files give one job's files and statistics."""
    _require_ray()
    import ray

    parts, index_dir, one = world
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with pytest.raises(IndexFormatError, match="no-index"):
            build_samples_ray(parts, tmp_path / "no-index", tmp_path / "bad", CFG, num_shards=2)
        stats = build_samples_ray(parts, index_dir, tmp_path / "ray", CFG, num_shards=3)
        assert ray.is_initialized()  # not its instance: left running
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, handler)  # ray.init's own handler would outlive it
    _same_output(one, tmp_path / "ray")
    assert stats == json.loads((one / "stats.json").read_text())
    assert not (tmp_path / "ray" / "shards").exists()


def test_samples_cli_shards_in_process_and_on_ray(world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``--shards 8`` (more shards than files: some empty) in this process, and ``--shards 3 --ray local`` (starts
    and stops its own local Ray): one job's files."""
    _require_ray()
    import ray

    parts, index_dir, one = world
    base = ["data", "samples", "--sessions", str(parts), "--index", str(index_dir), "--batch-size", "16"]
    assert main([*base, "--out", str(tmp_path / "in-process"), "--shards", "8"]) == 0
    handler = signal.getsignal(signal.SIGTERM)
    assert main([*base, "--out", str(tmp_path / "ray"), "--shards", "3", "--ray", "local"]) == 0
    assert not ray.is_initialized() and signal.getsignal(signal.SIGTERM) is handler  # Ray's handler not left
    _same_output(one, tmp_path / "in-process")
    _same_output(one, tmp_path / "ray")


@pytest.mark.parametrize(("option", "message"), [
    (["--shards", "0"], "--shards must be in [1, 10000], given 0"),
    (["--shards", "10001"], "--shards must be in [1, 10000], given 10001"),
    (["--ray", "cluster-7"], "--ray: address must be 'local', 'auto', HOST:PORT or ray://HOST:PORT with a port in "
                             "[1, 65535], given 'cluster-7'"),
    (["--ray", "head:70000"], "given 'head:70000'"),
])
def test_samples_cli_bad_values_exit_2(world: tuple[Path, Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], option: list[str], message: str) -> None:
    parts, index_dir, _ = world
    assert main(["data", "samples", "--sessions", str(parts), "--index", str(index_dir), "--out",
                 str(tmp_path / "out"), *option]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_samples_cli_no_cluster_at_the_address_exit_2(world: tuple[Path, Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A HOST:PORT where nothing listens fails at once (``ray.init`` alone would keep retrying)."""
    _require_ray()
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    parts, index_dir, _ = world
    assert main(["data", "samples", "--sessions", str(parts), "--index", str(index_dir), "--out",
                 str(tmp_path / "out"), "--shards", "2", "--ray", f"127.0.0.1:{port}"]) == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_addresses() -> None:
    assert check_address(None) is None and check_address("local") is None
    for ok in ("auto", "10.0.0.2:6379", "ray://head.example:10001"):
        assert check_address(ok) == ok
    for bad in ("", "6379", ":6379", "head:", "head:port", "ray://head"):
        with pytest.raises(ValueError, match="address must be"):
            check_address(bad)


def test_without_ray_a_clear_error(world: tuple[Path, Path, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    parts, index_dir, _ = world
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayMissingError, match=r"Ray is not installed: pip install -e '\.\[cluster\]'"):
        build_samples_ray(parts, index_dir, tmp_path / "lib", CFG, num_shards=2)
    assert main(["data", "samples", "--sessions", str(parts), "--index", str(index_dir), "--out",
                 str(tmp_path / "cli"), "--shards", "2", "--ray", "local"]) == 2
    assert "--ray: Ray is not installed: pip install -e '.[cluster]' (or pip install 'ray==2.60.0')" in (
        capsys.readouterr().err)
