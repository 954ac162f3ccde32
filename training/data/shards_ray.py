"""The sharded sample build (:mod:`training.data.shards`) on Ray: its N fit and N build jobs as Ray tasks.

Contract
--------
- Ray is imported here and nowhere else in radgr (an import-linter contract), and only inside
  :func:`build_samples_ray`: radgr imports, and every other build runs, without Ray installed. Without Ray,
  :func:`build_samples_ray` raises :class:`RayMissingError` (an ``ImportError``) saying how to install it (the
  ``cluster`` extra: ``pip install -e '.[cluster]'``, pinned ``ray==2.60.0``).
- :func:`build_samples_ray` runs :mod:`training.data.shards`' four steps, in order:

  1. submits ``fit_shard`` for every shard k as N Ray tasks and waits for all of them;
  2. ``merge_fits`` in this process (the driver);
  3. submits ``build_shard`` for every shard k as N Ray tasks and waits for all of them;
  4. ``merge_shards`` in the driver; returns the statistics.

  The output directory then holds exactly what ``build_samples_sharded`` (and ``build_samples`` in one job)
  writes: the same rows in the same order and the same ``stats.json`` (``tests/test_data_shards_ray.py``).
- Where it runs: ``address=None`` (or ``"local"``) starts a new Ray instance on this machine with ``num_cpus``
  workers (default: min(N, the machine's cores)), no dashboard and no worker output copied to the driver's
  console, and shuts it down afterwards. ``address="auto"`` or ``"HOST:PORT"`` (or ``"ray://HOST:PORT"``)
  connects to a running cluster and leaves it running; a ``HOST:PORT`` where no TCP connection opens within
  10 s raises ``ConnectionError`` (``ray.init`` alone would keep retrying for minutes). ``auto`` is resolved by
  Ray (``RAY_ADDRESS``, else the cluster last started on this machine) and not checked: after a head that died
  without ``ray stop``, Ray waits on its dead address for minutes; give ``HOST:PORT`` then. Ray 2.60 clusters
  use token authentication by default: ``auto`` finds the token (``~/.ray/auth_token``) itself, a
  ``HOST:PORT`` needs ``RAY_AUTH_MODE=token`` and the token in the driver's environment. If Ray is already
  initialised in this process, that instance is used as it is and left running. The caller's SIGTERM handler
  is put back afterwards (``ray.init`` replaces it and leaves its own).
- What every node needs: radgr installed (the tasks call ``training.data.shards``), and the dataset, the index
  directory and the output directory at the same absolute paths (a shared filesystem); the output directory must
  be writable by every task, and the driver reads it to merge. Relative paths are made absolute on the driver.
- Each task loads the index from its directory itself (nothing large is sent through Ray but the split map and
  the negative pool, put into Ray's object store once). A task's memory is one shard job's: bounded by the
  builder's batch size and the index, not by the dataset.
- The steps write atomically and a rerun overwrites, so Ray's retry of a task whose worker died is safe. A task
  that raises (bad data, a missing file) fails the build with that task's exception, re-raised here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sid_index.index import SidIndex
from training.data.samples import SampleConfig
from training.data.shards import build_shard, fit_shard, merge_fits, merge_shards

logger = logging.getLogger(__name__)

RAY_PIN = "ray==2.60.0"
CONNECT_TIMEOUT_S = 10.0
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # its warning at every start: muted


class RayMissingError(ImportError):
    """Ray is not installed in this environment."""


def check_address(address: str | None) -> str | None:
    """``address`` as :func:`build_samples_ray` takes it: None for a new local instance (given None or
    ``"local"``), else ``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` unchanged; ``ValueError`` otherwise."""
    if address is None or address == "local":
        return None
    if address == "auto":
        return address
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("address must be 'local', 'auto', HOST:PORT or ray://HOST:PORT with a port in [1, 65535], "
                         f"given {address!r}")
    return address


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Warnings of one logger muted for the block (its level restored after)."""
    muted = logging.getLogger(logger_name)
    level = muted.level
    muted.setLevel(logging.ERROR)
    try:
        yield
    finally:
        muted.setLevel(level)


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """The caller's SIGTERM handler put back after the block: ``ray.init`` installs its own (exit, stopping a local
    instance) and leaves it there after ``ray.shutdown``."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Ray sets no handler off the main thread either
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _reachable(address: str) -> None:
    """For ``HOST:PORT`` (or ``ray://HOST:PORT``): ``ConnectionError`` unless a TCP connection opens within
    :data:`CONNECT_TIMEOUT_S` (``ray.init`` would retry an address where nothing listens forever)."""
    if address == "auto":
        return  # Ray finds the address itself, and says so at once when it finds none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address}: {exc}") from exc


def _start(init: Callable[..., object], address: str | None, num_cpus: int) -> None:
    """``ray.init``: a new local instance (``address`` None) or a connection to a cluster, Ray's warning muted; a
    failed connection by ``HOST:PORT`` says what token authentication needs when that may be why."""
    if address is not None:
        _reachable(address)
    with _quiet(_RAY_AUTH_LOGGER):
        if address is None:
            init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
            return
        try:
            init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            if address == "auto" or os.environ.get("RAY_AUTH_MODE"):
                raise
            # Ray 2.60 reads a cluster's token for `auto` only; with HOST:PORT it sends none unless told to
            raise ConnectionError(f"{exc} (a cluster with token authentication, Ray's default, needs "
                                  "RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)") from exc


def _fit_task(dataset: str, shard: int, num_shards: int, index_dir: str, out_dir: str, cfg: SampleConfig,
              split_map: dict[str, str] | None) -> str:
    """Step 1 for one shard, on a Ray worker: the index loaded from its directory."""
    return str(fit_shard(dataset, shard, num_shards, SidIndex.load(index_dir), out_dir, cfg, split_map))


def _build_task(dataset: str, shard: int, num_shards: int, index_dir: str, out_dir: str, cfg: SampleConfig,
                split_map: dict[str, str] | None, pool_item_ids: Sequence[str] | None) -> str:
    """Step 3 for one shard, on a Ray worker."""
    return str(build_shard(dataset, shard, num_shards, SidIndex.load(index_dir), out_dir, cfg, split_map,
                           pool_item_ids))


def build_samples_ray(dataset: str | os.PathLike[str], index_dir: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], cfg: SampleConfig, num_shards: int, *,
                      address: str | None = None, num_cpus: int | None = None,
                      split_map: dict[str, str] | None = None, pool_item_ids: Sequence[str] | None = None,
                      keep_shards: bool = False) -> dict[str, Any]:
    """The sharded build with steps 1 and 3 as Ray tasks (module docstring); returns the statistics.

    ``num_cpus`` is the size of a local Ray instance (ignored when connecting to a cluster or reusing one).
    """
    address = check_address(address)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, given {num_shards}")
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1, given {num_cpus}")
    if cfg.split == "file" and split_map is None:
        raise ValueError("SampleConfig.split is 'file' but no split_map was given")
    try:
        import ray
        from ray.exceptions import RayTaskError
    except ImportError as exc:
        raise RayMissingError(
            f"Ray is not installed: pip install -e '.[cluster]' (or pip install '{RAY_PIN}')") from exc

    data, index, out = (str(Path(p).resolve()) for p in (dataset, index_dir, out_dir))
    started = not ray.is_initialized()
    with _sigterm_kept():
        try:
            if started:
                _start(ray.init, address, num_cpus or min(num_shards, os.cpu_count() or 1))
            Path(out).mkdir(parents=True, exist_ok=True)
            split_ref = ray.put(split_map)
            pool: Sequence[str] | None = list(pool_item_ids) if pool_item_ids is not None else None
            pool_ref = ray.put(pool)
            fit, build = ray.remote(_fit_task), ray.remote(_build_task)
            ray.get([fit.remote(data, k, num_shards, index, out, cfg, split_ref) for k in range(num_shards)])
            merge_fits(out, num_shards)
            logger.info("fitted %d shards on Ray", num_shards)
            ray.get([build.remote(data, k, num_shards, index, out, cfg, split_ref, pool_ref)
                     for k in range(num_shards)])
            logger.info("built %d shards on Ray", num_shards)
            return merge_shards(data, out, num_shards, cfg, keep_shards)
        except RayTaskError as exc:  # the task's own exception, without Ray's wrapper around it
            raise exc.cause from exc
        finally:
            if started:
                ray.shutdown()
