"""decoding.engine_process: the PyTorch engine in a child process answers exactly as in-process, reports the child's
errors, restarts after the child was killed, and names a bundle it cannot load."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bundle_fixtures import make_tiny_bundle

from decoding.bundle import INDEX_DIR, load_bundle
from decoding.engine import RetrievalRequest, RetrievalResult
from decoding.engine_factory import EngineOptions, build_engine
from decoding.engine_process import ProcessEngine

OPTIONS = EngineOptions(kind="torch", device="cpu", torch_threads=1)
REQUESTS = [RetrievalRequest((3, 4, 5), beam_width=8, top_k_items=5),
            RetrievalRequest((7, 3), beam_width=3, top_k_items=2)]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("proc"))


@pytest.fixture(scope="module")
def engine(bundle_dir: Path) -> Iterator[ProcessEngine]:
    e = ProcessEngine(OPTIONS, bundle_dir, nice=5, start_timeout_s=300)
    yield e
    e.close()


def _strip(results: list[RetrievalResult]) -> list[tuple[object, object]]:
    return [(r.sids, r.items) for r in results]  # timings differ run to run


@pytest.mark.slow
def test_same_results_as_the_engine_in_process(engine: ProcessEngine, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    local = build_engine(OPTIONS, bundle.model_dir, bundle.index, bundle.path / INDEX_DIR, bundle.vocab,
                         model=bundle.model)
    assert engine.name == local.name == "torch"
    assert engine.pid is not None and os.getpriority(os.PRIO_PROCESS, engine.pid) == os.getpriority(
        os.PRIO_PROCESS, 0) + 5
    assert _strip(engine.retrieve_batch(REQUESTS)) == _strip(local.retrieve_batch(REQUESTS))


@pytest.mark.slow
def test_an_engine_error_comes_back_and_the_child_keeps_serving(engine: ProcessEngine) -> None:
    pid = engine.pid
    with pytest.raises(RuntimeError, match=r"ValueError: requests\[0\]\.prompt_ids must be token ids"):
        engine.retrieve_batch([RetrievalRequest((10**6,), beam_width=2)])
    assert engine.pid == pid and len(engine.retrieve_batch(REQUESTS[:1])[0].sids) == 8


@pytest.mark.slow
def test_a_killed_child_is_reported_then_restarted(engine: ProcessEngine) -> None:
    expected = _strip(engine.retrieve_batch(REQUESTS))
    pid = engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"engine process died \(exit code -9\)"):
        engine.retrieve_batch(REQUESTS)
    assert _strip(engine.retrieve_batch(REQUESTS)) == expected  # a fresh child
    assert engine.starts == 2 and engine.pid not in (None, pid)


@pytest.mark.slow
def test_a_bundle_it_cannot_load_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"failed to start: BundleError: .*nothing"):
        ProcessEngine(OPTIONS, tmp_path / "nothing", start_timeout_s=300)


def test_bad_timeouts_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start_timeout_s must be > 0"):
        ProcessEngine(OPTIONS, tmp_path, start_timeout_s=0)
    with pytest.raises(ValueError, match=r"nice must be in \[0, 19\], given 20"):
        ProcessEngine(OPTIONS, tmp_path, nice=20)


@pytest.mark.slow
def test_the_server_serves_through_an_engine_process(bundle_dir: Path) -> None:
    """``engine_process=True``: the server's own process never loads the model, answers as the in-process engine
    does, and stops the child when it stops."""
    import httpx
    from test_server_fixtures import serve_in_thread

    from server.app import create_app
    from server.settings import ServerSettings

    body = {"query": "cordless drill", "beam_width": 8, "top_k": 5}
    answers, children = [], []
    for in_child in (True, False):
        app = create_app(ServerSettings(bundle=bundle_dir, engine="torch", engine_process=in_child, torch_threads=1,
                                        max_wait_ms=0))
        with serve_in_thread(app, timeout_s=300) as url:
            state = app.state.serving
            assert (state.bundle.model is None) == in_child
            r = httpx.post(f"{url}/retrieve", json=body, timeout=60)
            assert r.status_code == 200, r.text
            answers.append([(h["sid"], h["score"]) for h in r.json()["sids"]])
            if in_child:
                children.append(state.engine)
    assert answers[0] == answers[1] and len(answers[0]) == 8
    assert children[0].pid is None  # closed with the server
