"""tierflow: a Celery worker fleet that runs LLM jobs on the cheapest tier that does them well."""

__version__ = "0.1.0"
