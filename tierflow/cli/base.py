"""What every command does before it runs: check the settings and the whole config."""

from __future__ import annotations

from tierflow.core.settings import get_settings
from workers.backends import registry


def check_config_at_start() -> None:
    """Validate the settings and the whole config (providers and their options included), so a
    bad file fails naming its field before anything runs. Raises the settings' or the config's
    validation error."""
    registry.check(get_settings().llm)
