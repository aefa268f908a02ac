"""Client side of the fleet: submit jobs, wait for them, switch modes, read costs."""

from router.client import JobHandle, get_job, submit_job
from router.mode import get_mode, mode_history, set_mode

__all__ = ["JobHandle", "get_job", "get_mode", "mode_history", "set_mode", "submit_job"]
