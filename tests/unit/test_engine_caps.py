"""Engine-served models take their ``max_concurrency`` from the engine's slots (settings.llm)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tierflow.core.settings import get_settings, reset_settings

ENGINE_URL = "http://127.0.0.1:8765/v1"


def _model(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai_compatible", "model_id": "gemma-3-270m",
            "base_url": base_url, **extra}  # fmt: skip


def _caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: list[dict[str, Any]],
          engine_slots: str | None = None) -> dict[str, int | None]:  # fmt: skip
    path = tmp_path / "llm_config.yaml"
    path.write_text(json.dumps({"tiers": {"local_fast": {"models": models}}}))  # JSON is YAML
    monkeypatch.setenv("TIERFLOW_CONFIG", str(path))
    monkeypatch.setenv("TIERFLOW_LOCAL_ENGINE_URL", ENGINE_URL)
    if engine_slots is None:
        monkeypatch.delenv("TIERFLOW_ENGINE_SLOTS", raising=False)
    else:
        monkeypatch.setenv("TIERFLOW_ENGINE_SLOTS", engine_slots)
    reset_settings()
    try:
        config = get_settings().llm
        return {m.name: m.limits.max_concurrency for m in config.tier_models("local_fast")}
    finally:
        reset_settings()


def test_engine_served_models_are_capped_at_the_engine_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = [
        _model("engine", ENGINE_URL + "/", options={"slots": 2, "extra_buffers": "off"}),
        _model("explicit", ENGINE_URL, options={"slots": 2}, limits={"max_concurrency": 1}),
        _model("elsewhere", "http://10.0.0.7:8000/v1"),
    ]
    caps = _caps(tmp_path, monkeypatch, models, engine_slots="6")
    assert caps == {"engine": 2, "explicit": 1, "elsewhere": None}  # options.slots wins
    caps = _caps(tmp_path, monkeypatch, [_model("engine", ENGINE_URL)], engine_slots="6")
    assert caps == {"engine": 6}  # TIERFLOW_ENGINE_SLOTS when the model says nothing
    assert _caps(tmp_path, monkeypatch, [_model("engine", ENGINE_URL)]) == {"engine": None}
