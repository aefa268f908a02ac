"""The one token estimate, for reservations and fakes before a tokenizer's real count is known."""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """About four characters a token, at least one (used to reserve, never to charge)."""
    return max(1, (len(text) + 3) // 4)
