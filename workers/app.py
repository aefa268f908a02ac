"""The fleet's Celery application with its tasks registered (``celery -A workers.app worker``).

Importing :mod:`workers.tasks` registers the tasks and, through the backends package, the
provider SDKs (loaded at worker start, not on a worker's first job). The application object
itself is the ground floor's (:mod:`tierflow.core.celery_app`), so the client can send tasks
without importing the fleet.
"""

from __future__ import annotations

from tierflow.core.celery_app import app
from tierflow.core.settings import get_settings
from workers import tasks
from workers.backends import registry

# A model naming an unknown provider, or options its backend does not read, stops the worker at
# start with the field named (the settings have already validated the rest of the file).
registry.check(get_settings().llm)

__all__ = ["app", "tasks"]
