"""Budgets stored with ``tierflow budget set`` are the ones the fleet uses (in place of the
config's), and a daemon that has already spent its budget is refused at submit when nothing
free could serve the job; with a free tier in the plan the job runs there."""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from router import submit_job
from tests.support.services import fake_model, fleet_config
from tierflow.cli import app
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.store.budgets import stored_budget
from workers.budget import Budgets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(*args: str) -> str:
    from tierflow.cli import budget_cmds  # noqa: F401 - registers ``budget``

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_stored_budget_is_enforced_and_checked_at_submit(fleet) -> None:
    daemon = f"spender-{uuid.uuid4().hex[:8]}"
    paid = fake_model(
        "paid-api", input_cost_per_million=1000.0, output_cost_per_million=1000.0, max_tokens=40
    )
    config = fleet_config(
        api_fallback=[paid], action_tier_overrides={"write_memory": "api_fallback"}
    )
    config["budgets"] = {daemon: {"daily_usd": 50.0}}  # the stored ceiling below wins
    fleet(config)

    def paid_job(i: int):  # type: ignore[no-untyped-def]
        handle = submit_job(
            f"Summarize note {i}: ceilings", "write_memory", metadata={"daemon": daemon}
        )
        return handle, handle.wait(timeout=60)

    # a stored ceiling below one call's estimate: the fleet refuses the paid tier
    cli("budget", "set", "--daemon", daemon, "--daily", "0.00001", "--monthly", "5")
    shown = cli("budget", "show")
    assert daemon in shown and "stored" in shown
    _, refused = paid_job(0)
    assert not refused.ok and "budget exhausted" in (refused.error or ""), refused.error
    assert refused.cost_usd == 0 and refused.attempts  # refused by BudgetGate, in the fleet

    # room again: the job is paid for and the spend is counted against the stored ceiling
    cli("budget", "set", "--daemon", daemon, "--daily", "1", "--monthly", "5")
    _, paid_for = paid_job(1)
    assert paid_for.ok and paid_for.cost_usd > 0
    day, _ = Budgets(get_redis(), get_keys().prefix).spent(daemon)
    assert day == pytest.approx(paid_for.cost_usd, abs=1e-9)

    # the ceiling lowered below what was spent: refused at submit, stored, no attempt made
    cli("budget", "set", "--daemon", daemon, "--daily", f"{paid_for.cost_usd / 2:.8f}")
    handle, at_submit = paid_job(2)
    assert handle.created and at_submit.status == "failed" and at_submit.attempts == []
    assert (at_submit.error or "").startswith("budget exhausted"), at_submit.error
    assert "no free tier" in (at_submit.error or "")
    # a job whose plan has a free tier still runs, on that tier
    free = submit_job(
        "Extract topic from: 'budgets at submit'", "extract_topic", metadata={"daemon": daemon}
    ).wait(timeout=60)
    assert free.ok and free.cost_usd == 0

    # cleared: the config's ceiling (50 USD) applies again
    cli("budget", "clear", "--daemon", daemon)
    assert stored_budget(daemon) is None
    _, again = paid_job(3)
    assert again.ok and again.cost_usd > 0


def test_budget_set_needs_a_ceiling(database) -> None:  # type: ignore[no-untyped-def]
    from tierflow.cli import budget_cmds  # noqa: F401

    result = CliRunner().invoke(app, ["budget", "set", "--daemon", "x"])
    assert result.exit_code != 0 and "--daily" in result.output
