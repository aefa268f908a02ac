"""Packing small ``label`` jobs into one prompt, and splitting the answer back. Pure functions.

The seed's "batch 10 classification tasks → single prompt": :func:`compose_pack` numbers the
members' prompts (``Item 1:`` ...) and asks for one line per item, ``<number>: <label>``; the
prompt ends with ``Answers:`` and the first marker ``1:`` (its :attr:`PackedPrompt.primer`: a
base model, such as the embedded Gemma, continues the list instead of echoing the
instructions). :func:`split_answer` reads the answer, with the primer put back in front
(:meth:`PackedPrompt.answer`), into one :class:`Part` per item, so that each member is gated on
its own part. The split trusts numbers, not positions:

- a line that starts with an item number (``1: x``, ``1. x``, ``1) x``, ``Item 1 - x``,
  ``**1.** x``, ``(1) x``) is that item's part; lines may come in any order;
- several items on one line (``1: yes, 2: no``) are split when each marker is the next number;
- a line without a number only fills the item before it when that item's part is still empty
  (``1:`` then ``positive`` on the next line; the primer then a model's first line); a numbered
  line for that item later replaces such a guess; any other unnumbered line is ignored
  (chatter, echoes);
- a number outside ``1..n`` is ignored; a number given twice with different answers is a
  *conflict*, and a number never given is *missing*: those parts have no text and a
  ``problem``, and the fleet turns them into an error for that member alone;
- when the answer was cut at its token limit, the last part it gave is marked ``cut`` (it may
  be incomplete: the member is judged as a truncated answer).

:func:`share_tokens` divides the pack's token usage between its members (exactly, in
integers), so each member's attempt carries its share and the total is charged once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Tokens of answer allowed per item ("12: preference" is about 5; room for a short slip).
PACK_TOKENS_PER_ITEM = 16

_NUMBER = r"(\d{1,4})"
# A line's leading marker: optional bullet or markdown, an optional "item"/"answer" word, the
# number, then ":", ")", "]", a "." that is not a decimal point, or a spaced dash.
_LINE_MARKER = re.compile(
    rf"^[\s>*#•\-]*\**\s*(?:item|answer)?\s*#?\(?{_NUMBER}\)?\s*\**\s*"
    r"(?:[:)\]]|\.(?!\d)|\s[-\u2013]\s)\s*",
    re.I,
)
# A marker inside a line (after a comma, semicolon or space): only "N:" or "N)".
_INLINE_MARKER = re.compile(rf"(?:^|[,;]|\s)\s*(?:item\s*)?#?{_NUMBER}\s*[:)]\s*", re.I)


@dataclass(frozen=True)
class PackedPrompt:
    """One call for a pack: the system text and the numbered prompt."""

    system: str
    prompt: str
    primer: str = "1:"  # what the prompt ends with: the answer's start, written for the model

    def answer(self, text: str) -> str:
        """The whole answer to split: the primer, then the model's continuation."""
        return f"{self.primer}\n{text}"


@dataclass(frozen=True)
class Part:
    """One item's part of a packed answer: ``text`` (None when unusable, then ``problem`` says
    why), and ``cut`` when it is the last part of an answer stopped at its token limit."""

    text: str | None
    problem: str | None = None
    cut: bool = False


def pack_instructions(labels: Sequence[str], n: int) -> str:
    """The system text of a pack of ``n`` items answered with one of ``labels`` each."""
    return (
        f"Label each of the {n} numbered items below on its own with exactly one of: "
        f"{', '.join(labels)}. Reply with {n} lines, one per item, in order: the item's "
        f"number, a colon, then its label. Write nothing else."
    )


def compose_pack(items: Sequence[str], labels: Sequence[str]) -> PackedPrompt:
    """The packed prompt of ``items`` (each member's own prompt, context included), numbered
    from 1 in order, with the answer format the split expects. Raises ValueError on no items."""
    if not items:
        raise ValueError("a pack needs at least one item")
    n = len(items)
    blocks = [f"Item {k}:\n{item.strip()}" for k, item in enumerate(items, start=1)]
    tail = f"Answers (items 1 to {n}):\n1:"
    return PackedPrompt(pack_instructions(labels, n), "\n\n".join([*blocks, tail]))


def pack_max_tokens(model_max_tokens: int, n: int) -> int:
    """The answer's token limit for a pack of ``n``: the model's own, or more when ``n`` lines
    need more (:data:`PACK_TOKENS_PER_ITEM` each)."""
    return max(model_max_tokens, PACK_TOKENS_PER_ITEM * n)


def _markers(line: str, n: int) -> list[tuple[int, str]]:
    """``(item, text)`` for each item a line answers: its leading marker, then any inline
    marker that is the next number; no leading marker: nothing."""
    head = _LINE_MARKER.match(line)
    if head is None:
        return []
    found = [(int(head[1]), head.end())]
    cuts: list[tuple[int, int, int]] = []  # (item, marker start, text start)
    for match in _INLINE_MARKER.finditer(line, head.end()):
        expected = (cuts[-1][0] if cuts else found[0][0]) + 1
        if int(match[1]) == expected and expected <= n:
            cuts.append((expected, match.start(), match.end()))
    pieces = []
    item, start = found[0]
    for nxt, marker_at, text_at in cuts:
        pieces.append((item, line[start:marker_at]))
        item, start = nxt, text_at
    pieces.append((item, line[start:]))
    return [(k, text.strip().rstrip(",;").strip(" *")) for k, text in pieces]


def split_answer(text: str, n: int, *, truncated: bool = False) -> list[Part]:
    """One :class:`Part` per item ``1..n`` of a packed answer (see the module for the rules).

    ``truncated``: the answer stopped at its token limit; the part given last is marked cut.
    """
    answers: dict[int, set[str]] = {}
    texts: dict[int, str] = {}
    order: list[int] = []  # items in the order the answer gave them
    previous: int | None = None
    guessed: set[int] = set()  # items filled by an unnumbered line
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        pieces = _markers(line, n)
        if not pieces:
            # An unnumbered line completes the item before it only while that one is empty.
            if previous is not None and not texts.get(previous):
                texts[previous] = line
                answers[previous] = {_normal(line)}
                guessed.add(previous)
            continue
        for item, piece in pieces:
            if not 1 <= item <= n:
                previous = None
                continue
            previous = item
            if item in guessed and piece:  # a numbered answer beats the guess
                guessed.discard(item)
                answers.pop(item, None)
                texts.pop(item, None)
            answers.setdefault(item, set())
            if piece:
                answers[item].add(_normal(piece))
                if not texts.get(item):
                    texts[item] = piece
            if item in order:
                order.remove(item)
            order.append(item)
    last = order[-1] if order else None
    parts = []
    for item in range(1, n + 1):
        given = answers.get(item)
        if given is None:
            parts.append(Part(None, f"no line for item {item} of {n}"))
        elif len(given) > 1:
            parts.append(Part(None, f"conflicting answers for item {item} of {n}"))
        elif not texts.get(item):
            parts.append(Part(None, f"empty answer for item {item} of {n}"))
        else:
            parts.append(Part(texts[item], cut=truncated and item == last))
    return parts


def _normal(text: str) -> str:
    return " ".join(text.lower().replace("*", "").split()).strip(" .,;")


def share_tokens(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` tokens divided in proportion to ``weights`` (largest remainders), in integers
    that sum to ``total``; all-zero weights share evenly. Raises ValueError on no weights."""
    if not weights:
        raise ValueError("no weights to share between")
    total = max(0, int(total))
    if sum(weights) <= 0:
        weights = [1.0] * len(weights)
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    left = total - sum(shares)
    by_remainder = sorted(range(len(exact)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares
