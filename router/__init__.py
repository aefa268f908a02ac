"""Client side of the fleet: submit jobs, wait, switch modes, read costs and usage."""

from router.client import JobHandle, get_job, submit_job
from router.export import export_usage_log
from router.mode import get_mode, mode_history, set_mode
from tierflow.store.costs import get_cost_summary

__all__ = [
    "JobHandle",
    "export_usage_log",
    "get_cost_summary",
    "get_job",
    "get_mode",
    "mode_history",
    "set_mode",
    "submit_job",
]
