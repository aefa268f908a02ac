"""The engine's state as the supervisor records it, and the error a worker reports when the
embedded engine's URL does not answer (real Redis under a key prefix of this test's own)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from tests.support import services
from tierflow.app.embedded import free_port
from tierflow.core import errors
from tierflow.core.config import ModelConfig
from tierflow.core.engine_state import engine_state_note, record_engine_state
from tierflow.core.settings import get_settings, reset_settings
from workers.backends.base import CompletionRequest
from workers.backends.openai_compatible import OpenAICompatibleBackend

pytestmark = pytest.mark.integration

AT = r"\d\d:\d\d:\d\d"


@pytest.fixture
def engine_url(services_ready: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh key prefix, and TIERFLOW_LOCAL_ENGINE_URL on a port nothing listens on."""
    prefix = f"tfengine-{uuid.uuid4().hex[:10]}"
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("TIERFLOW_KEY_PREFIX", prefix)
    monkeypatch.setenv("TIERFLOW_LOCAL_ENGINE_URL", url)
    reset_settings()
    yield url
    services.delete_prefix(prefix)
    reset_settings()


def _model(base_url: str) -> ModelConfig:
    return ModelConfig(
        name="gemma3-270m", provider="openai_compatible", model_id="gemma-3-270m",
        base_url=base_url, timeout_s=5,
    )  # fmt: skip


def test_notes_follow_the_recorded_state(engine_url: str) -> None:
    assert engine_state_note() is None  # nothing recorded
    record_engine_state("down", "local engine exited with SIGSEGV", restarting=True, restarts=1)
    note = engine_state_note()
    assert note is not None
    assert re.fullmatch(rf"local engine exited with SIGSEGV at {AT}; restarting", note)
    record_engine_state("up", "local engine ready", restarts=1)
    assert engine_state_note() is None
    record_engine_state("stopped", "local engine stopped with the fleet")
    assert re.fullmatch(rf"local engine stopped with the fleet at {AT}", engine_state_note() or "")


def test_a_dead_engine_is_named_in_the_connect_error(engine_url: str) -> None:
    record_engine_state("down", "local engine exited with SIGSEGV", restarting=True, restarts=2)
    backend = OpenAICompatibleBackend(_model(engine_url))
    with pytest.raises(errors.BackendUnavailable) as caught:
        backend.complete(CompletionRequest("The capital of France is", max_tokens=4))
    assert re.fullmatch(
        rf"openai_compatible: cannot connect to the server "
        rf"\(local engine exited with SIGSEGV at {AT}; restarting\)",
        str(caught.value),
    )
    with pytest.raises(errors.BackendUnavailable, match="exited with SIGSEGV"):
        list(backend.stream(CompletionRequest("The capital of France is", max_tokens=4)))
    availability = backend.availability()
    assert not availability.ok and "local engine exited with SIGSEGV" in availability.reason


def test_other_servers_and_unknown_states_get_the_plain_error(engine_url: str) -> None:
    record_engine_state("down", "local engine exited with SIGSEGV", restarting=True)
    elsewhere = OpenAICompatibleBackend(_model(f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(errors.BackendUnavailable) as caught:
        elsewhere.complete(CompletionRequest("hi", max_tokens=2))
    assert str(caught.value) == "openai_compatible: cannot connect to the server"
    record_engine_state("up", "local engine ready")
    with pytest.raises(errors.BackendUnavailable) as caught:
        OpenAICompatibleBackend(_model(engine_url)).complete(CompletionRequest("hi", max_tokens=2))
    assert str(caught.value) == "openai_compatible: cannot connect to the server"


def test_redis_trouble_costs_the_note_not_the_call(
    engine_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERFLOW_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_settings()
    assert get_settings().local_engine_url == engine_url
    record_engine_state("down", "local engine exited with SIGSEGV")  # logged, not raised
    assert engine_state_note() is None
