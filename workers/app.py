"""The Celery application of the fleet (``celery -A workers.app worker``)."""

from __future__ import annotations

from celery import Celery

app = Celery("tierflow")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
