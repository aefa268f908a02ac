"""The gateway serves any action ``submit_job`` accepts, configured or not; a name it would
refuse is a model that does not exist."""

from __future__ import annotations

import pytest

from tierflow.app.gateway import BadRequest, action_for


def test_any_action_submit_job_accepts_is_a_model() -> None:
    assert action_for("tierflow/classify_memory", None) == "classify_memory"
    assert action_for("tierflow/an_action_nobody_configured", None) == "an_action_nobody_configured"
    assert action_for("auto", "summarize_day") == "summarize_day"
    assert action_for("auto", None) == "unknown"


@pytest.mark.parametrize("model", ["tierflow/Bad Action", "tierflow/", "tierflow/x-y", "gpt-4o"])
def test_a_name_submit_job_refuses_does_not_exist(model: str) -> None:
    with pytest.raises(BadRequest) as refused:
        action_for(model, None)
    assert refused.value.status == 404 and "does not exist" in str(refused.value)


def test_a_header_that_contradicts_the_model_is_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        action_for("tierflow/classify_memory", "extract_topic")
    assert refused.value.status == 400
