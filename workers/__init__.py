"""Worker side of the fleet: Celery tasks, backends, limits and persistence."""
