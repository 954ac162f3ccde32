"""The shipped scale-out configs stay consistent: every compose replica owns its own GPU and is in nginx's upstream;
the FSDP configs wrap a layer class the models have and differ only in device and precision."""

from __future__ import annotations

import re
from pathlib import Path

import yaml  # type: ignore[import-untyped]  # PyYAML (an accelerate dependency) ships no stubs

ROOT = Path(__file__).resolve().parents[1]


def test_each_replica_has_its_own_gpu_and_is_load_balanced() -> None:
    compose = yaml.safe_load((ROOT / "configs" / "serving" / "docker-compose.yml").read_text())
    nginx = (ROOT / "configs" / "serving" / "nginx.conf").read_text()
    replicas = {name: svc for name, svc in compose["services"].items() if name.startswith("radgr-")}
    assert len(replicas) >= 2
    gpus = [svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for svc in replicas.values()]
    assert len({tuple(g) for g in gpus}) == len(gpus) and all(len(g) == 1 for g in gpus)
    upstream = set(re.findall(r"^\s*server\s+(\S+?):8000\b", nginx, flags=re.M))
    assert upstream == set(replicas)
    assert "/ready" in " ".join(next(iter(replicas.values()))["healthcheck"]["test"])
    assert set(compose["services"]["lb"]["depends_on"]) == set(replicas)


def test_fsdp_configs_wrap_qwen3_layers() -> None:
    from transformers.models.qwen3 import modeling_qwen3

    gpu, cpu = (yaml.safe_load((ROOT / "configs" / f).read_text()) for f in ("fsdp.yaml", "fsdp_cpu.yaml"))
    for cfg in (gpu, cpu):
        assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
        assert hasattr(modeling_qwen3, cfg["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"])
    assert gpu["fsdp_config"] == cpu["fsdp_config"]
    assert (gpu["use_cpu"], gpu["mixed_precision"]) == (False, "bf16")
    assert (cpu["use_cpu"], cpu["mixed_precision"]) == (True, "no")
