"""Data contracts: pydantic job models and SQLAlchemy tables."""

from schemas.jobs import JobRequest, JobResult
from schemas.tables import Attempt, Base, DeadLetter, Job, ModeSwitch

__all__ = ["Attempt", "Base", "DeadLetter", "Job", "JobRequest", "JobResult", "ModeSwitch"]
