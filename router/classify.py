"""Task classification (first seed): SIMPLE / MODERATE / COMPLEX from the action and the prompt.

The action table gives the starting class; the prompt and context can only raise it:

- more than 3 files in ``context["files"]``, more than 3 ``context["steps"]`` or a prompt over
  16,000 characters → COMPLEX;
- 2 or 3 steps, 2 or 3 files or a prompt over 4,000 characters → at least MODERATE.

An action missing from the table starts at ``routing.default_complexity`` (MODERATE unless
configured), a middle ground: local quality models first, the API behind them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierflow.core.constants import Complexity

ACTION_COMPLEXITY: dict[str, Complexity] = {
    # simple: binary decisions, classification, extraction, validation, plain reads
    "classify_memory": Complexity.SIMPLE,
    "extract_topic": Complexity.SIMPLE,
    "yes_no_decision": Complexity.SIMPLE,
    "validate_format": Complexity.SIMPLE,
    "read_file": Complexity.SIMPLE,
    "list_files": Complexity.SIMPLE,
    "orch_status": Complexity.SIMPLE,
    # moderate: code generation, 2-3 step reasoning, summaries, edits with context
    "edit_file": Complexity.MODERATE,
    "write_memory": Complexity.MODERATE,
    "consolidate": Complexity.MODERATE,
    "summarize": Complexity.MODERATE,
    "generate_code": Complexity.MODERATE,
    # complex: orchestration, debugging, multi-file work, system-critical decisions
    "spawn_daemon": Complexity.COMPLEX,
    "debug_error": Complexity.COMPLEX,
    "multi_file_refactor": Complexity.COMPLEX,
    "exec": Complexity.COMPLEX,
}

_RANK = {Complexity.SIMPLE: 0, Complexity.MODERATE: 1, Complexity.COMPLEX: 2}

LONG_PROMPT_CHARS = 4_000
HUGE_PROMPT_CHARS = 16_000


@dataclass(frozen=True)
class Classification:
    complexity: Complexity
    reasons: list[str] = field(default_factory=list)


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, list | tuple | dict):
        return len(value)
    return 0


def classify_task(
    action_type: str,
    prompt: str,
    context: dict[str, Any],
    default: Complexity = Complexity.MODERATE,
) -> Classification:
    """Classify one job; ``reasons`` say which rule decided, in order."""
    reasons: list[str] = []
    base = ACTION_COMPLEXITY.get(action_type)
    if base is None:
        complexity = default
        reasons.append(f"action {action_type!r} not in the table: default {default.value}")
    else:
        complexity = base
        reasons.append(f"action {action_type!r} is {base.value}")

    def raise_to(level: Complexity, why: str) -> None:
        nonlocal complexity
        if _RANK[level] > _RANK[complexity]:
            complexity = level
            reasons.append(f"{why}: raised to {level.value}")

    files = _count(context.get("files"))
    steps = _count(context.get("steps"))
    if files > 3:
        raise_to(Complexity.COMPLEX, f"{files} files in context")
    elif files >= 2:
        raise_to(Complexity.MODERATE, f"{files} files in context")
    if steps > 3:
        raise_to(Complexity.COMPLEX, f"{steps} steps")
    elif steps >= 2:
        raise_to(Complexity.MODERATE, f"{steps} steps")
    if len(prompt) > HUGE_PROMPT_CHARS:
        raise_to(Complexity.COMPLEX, f"prompt of {len(prompt)} characters")
    elif len(prompt) > LONG_PROMPT_CHARS:
        raise_to(Complexity.MODERATE, f"prompt of {len(prompt)} characters")
    return Classification(complexity, reasons)
