"""The Celery application of the fleet (``celery -A workers.app worker``)."""

from __future__ import annotations

from celery import Celery, signals

app = Celery("tierflow")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


@signals.worker_init.connect
def _load_backends(**_: object) -> None:
    """Import the provider SDKs at start, not on each worker's first job (1-5 s)."""
    from workers.backends.base import _load_builtin_backends

    _load_builtin_backends()
