"""``TIERFLOW_DASHBOARD_TOKEN``: read once with the settings (a bad one refused at start, naming
it, never echoing it), and given by ``tierflow up``'s supervisor to the dashboard alone."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierflow.app.dashboard import TOKEN_ENV, configured_token, dashboard_child
from tierflow.app.supervisor import WITHHELD_ENV, Supervisor
from tierflow.core.errors import ConfigError
from tierflow.core.settings import get_settings, reset_settings

GOOD = "a-dashboard-token-0123456789"
PRINT_ENV = [
    sys.executable, "-c",
    f"import json, os; print(json.dumps({{'token': os.environ.get('{TOKEN_ENV}')}}), flush=True);"
    " import time; time.sleep(60)",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    reset_settings()
    yield
    reset_settings()


@pytest.mark.parametrize(
    "bad",
    ["short-token", "sixteen chars with spaces", "tökén-with-non-ascii-letters", "x" * 513],
)
def test_a_bad_token_is_refused_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(TOKEN_ENV, bad)
    with pytest.raises(ConfigError, match=TOKEN_ENV) as raised:
        get_settings()
    assert bad not in str(raised.value)


def test_a_good_token_is_read_and_kept_out_of_the_settings_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, f"  {GOOD}\n")
    assert configured_token() == GOOD
    assert GOOD not in repr(get_settings())
    monkeypatch.setenv(TOKEN_ENV, "   ")  # blank: none configured
    reset_settings()
    assert configured_token() is None


def test_dashboard_child_gets_the_token_and_this_process_keeps_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    _, note, env = dashboard_child(0)
    generated = env[TOKEN_ENV]
    assert note.endswith(f"#token={generated}") and len(generated) >= 40
    assert TOKEN_ENV not in os.environ  # not put where the other children would inherit it
    monkeypatch.setenv(TOKEN_ENV, GOOD)
    reset_settings()
    _, note, env = dashboard_child(0)
    assert env == {TOKEN_ENV: GOOD} and GOOD not in note and TOKEN_ENV in note


def _printed_token(log: Path) -> str | None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if lines:
            return json.loads(lines[0])["token"]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{log} stayed empty")


def test_the_supervisor_gives_the_token_to_the_dashboard_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TOKEN_ENV in WITHHELD_ENV
    monkeypatch.setenv(TOKEN_ENV, GOOD)  # as if exported in the shell that ran `tierflow up`
    sup = Supervisor(tmp_path / "logs", tick_s=0.05)
    sup.start()
    try:
        worker = sup.add("worker-x", PRINT_ENV)
        beat = sup.add("beat", PRINT_ENV)
        dashboard = sup.add("dashboard", PRINT_ENV, env={TOKEN_ENV: GOOD})
        assert _printed_token(worker.log) is None
        assert _printed_token(beat.log) is None
        assert _printed_token(dashboard.log) == GOOD
    finally:
        sup.stop(timeout=5)
