"""Arithmetic written in an answer, recomputed: every ``expression = value`` the text states.

A model's working is read the way a teacher reads it: for each ``=``, the whole expression
before it (chained operators, parentheses, ``%`` as a hundredth, ``$`` and thousands separators
dropped) and the value or expression after it. :func:`equations` returns only what it could
read without guessing; it stays silent where it cannot:

- the expression runs on into words (``2 hours * 60 = 120``: the ``2 hours`` is not read, so
  ``* 60`` starts with an operator and nothing is claimed), or is a bare number (``x = 5``);
- a side does not parse (``2x + 3 = 7``, ``60% of 40 = 24``: the ``of`` stops the span, and a
  span without an operator states no computation);
- the expression is led by a word that scales it (``half of 10 + 4 = 9``).

:func:`wrong_equations` keeps those whose value is off by more than the rounding its written
decimals allow. Measured on strong models' right answers (the checks table that
``python -m tests.bench.bench_gate`` prints for each set), it is the evidence behind the
``arithmetic`` check (see :mod:`router.gate.kinds`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, DivisionByZero, InvalidOperation

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SPAN_CHARS = set("0123456789.$%+-*/^()xX\u00d7\u00f7 \t")
_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+|[-+*/^()%xX\u00d7\u00f7])")
_MAX_EXPONENT = 64
_MUL, _DIV = set("*xX\u00d7"), set("/\u00f7")
# Words that turn the expression after them into a part of a larger one ("half of 10 + 4").
_SCALING_WORDS = re.compile(
    r"(?i)\b(of|times|by|per|half|twice|double|triple|thrice|quarter|third)\s*$"
)


class _Unreadable(Exception):
    """An expression this module will not guess at."""


@dataclass(frozen=True)
class Equation:
    """One ``left = right`` read from the text, both sides evaluated."""

    left: str
    right: str
    left_value: Decimal
    right_value: Decimal
    decimals: int  # of the right side as written, when it is a plain number

    @property
    def wrong(self) -> bool:
        """Off by a whole unit of the right side's last written place or more: a value rounded,
        truncated, floored or ceiled to its written decimals is not wrong (``10 / 3 = 3.33``,
        ``94 / 8 = 11`` boxes); a percent on the right may name the unit (``0.5 * 100 = 50%``)."""
        unit = Decimal(1) / Decimal(10) ** self.decimals
        candidates = [self.right_value]
        if self.right.rstrip().endswith("%"):
            candidates.append(self.right_value * 100)
        return all(abs(self.left_value - value) >= unit for value in candidates)


def _times_sign(before: list[str], text: str, after: int) -> bool:
    """``x`` multiplies only between a number (or a bracket) and a number: ``3 x 4``, ``3x4``;
    ``19x - 17`` and ``0.5x`` name a variable."""
    previous = before[-1] if before else ""
    following = text[after:].lstrip()[:1]
    after_operand = previous[:1].isdigit() or previous == ")"
    return after_operand and (following.isdigit() or following in "($")


class _Parser:
    """Recursive descent over + - * / with parentheses, unary signs and postfix ``%``."""

    def __init__(self, text: str) -> None:
        pos, tokens = 0, list[str]()
        text = text.rstrip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise _Unreadable(text)
            token = match.group(1)
            if token in ("x", "X") and not _times_sign(tokens, text, match.end()):
                raise _Unreadable("a variable x")
            tokens.append(token)
            pos = match.end()
        self.tokens, self.i = tokens, 0

    def parse(self) -> tuple[Decimal, int]:
        """The value and the number of binary operators applied."""
        self.ops = 0
        value = self._sum()
        if self.i != len(self.tokens):
            raise _Unreadable("trailing tokens")
        return value, self.ops

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _Unreadable("ends early")
        self.i += 1
        return token

    def _sum(self) -> Decimal:
        value = self._product()
        while self._peek() in ("+", "-"):
            op = self._take()
            right = self._product()
            value = value + right if op == "+" else value - right
            self.ops += 1
        return value

    def _product(self) -> Decimal:
        value = self._unary()
        while (token := self._peek()) is not None and (token in _MUL or token in _DIV):
            self._take()
            right = self._unary()
            try:
                value = value * right if token in _MUL else value / right
            except (DivisionByZero, InvalidOperation):
                raise _Unreadable("division by zero") from None
            self.ops += 1
        return value

    def _unary(self) -> Decimal:
        if self._peek() in ("+", "-"):
            sign = -1 if self._take() == "-" else 1
            return sign * self._unary()
        return self._power()

    def _power(self) -> Decimal:
        base = self._percent()
        if self._peek() != "^":
            return base
        self._take()
        exponent = self._unary()  # right-associative: 2^3^2 = 2^9
        if exponent != exponent.to_integral_value() or abs(exponent) > _MAX_EXPONENT:
            raise _Unreadable("an exponent that is not a small integer")
        self.ops += 1
        try:
            return base ** int(exponent)
        except (DivisionByZero, InvalidOperation):
            raise _Unreadable("zero to a negative power") from None

    def _percent(self) -> Decimal:
        token = self._take()
        if token == "(":
            value = self._sum()
            if self._take() != ")":
                raise _Unreadable("unbalanced")
        elif token[0].isdigit() or token[0] == ".":
            value = Decimal(token)
        else:
            raise _Unreadable(f"unexpected {token!r}")
        while self._peek() == "%":
            self._take()
            value /= 100
        return value


def _evaluate(expression: str) -> tuple[Decimal, int]:
    return _Parser(expression.replace("$", "")).parse()


def _left_span(text: str, end: int) -> tuple[str, int]:
    start = end
    while start > 0 and text[start - 1] in _SPAN_CHARS:
        start -= 1
    span = text[start:end]
    # A full stop before a space ends a sentence: the expression starts after it ("= 7. 7 * 2").
    cut = max(span.rfind(". "), span.rfind(".\t"))
    if cut >= 0:
        span, start = span[cut + 1 :], start + cut + 1
    # A letter x that is a word's last letter ("box = 3") is no operator: drop what it leads.
    while span[:1] in ("x", "X") and start > 0 and text[start - 1].isalpha():
        span, start = span[1:], start + 1
    return span, start


def _right_span(text: str, begin: int) -> str:
    end = begin
    while end < len(text) and text[end] in _SPAN_CHARS:
        end += 1
    span = text[begin:end].rstrip()
    # A sentence's full stop after the value ("= 51.") is punctuation, not a decimal point.
    return span[:-1] if span.endswith(".") else span


def _runs_on(text: str, left: str, start: int) -> bool:
    """Whether the left span starts with an operator that joins it to words before it."""
    lead = left.lstrip()[:1]
    operator = lead in "+*/xX\u00d7\u00f7" or (lead == "-" and start > 0)
    return operator and text[:start].rstrip()[-1:].isalnum()


def _glued(text: str, start: int, end: int) -> bool:
    """Whether the equation's spans touch a letter (no space between): algebra, not arithmetic."""
    before = text[start - 1] if start > 0 and not text[start].isspace() else ""
    after = text[end] if end < len(text) and not text[end - 1].isspace() else ""
    return before.isalpha() or after.isalpha() or after.isdigit()


def _plain_decimals(span: str) -> int:
    plain = span.strip().replace("$", "").rstrip("%")
    return len(plain.split(".", 1)[1]) if re.fullmatch(r"-?\d+\.\d+", plain) else 0


def equations(text: str) -> list[Equation]:
    """Every ``expression = value`` in ``text`` that reads without guessing (see the module)."""
    text = _THOUSANDS.sub("", text)
    found = []
    for match in re.finditer(r"(?<![=<>!])=(?!=)", text):
        left, start = _left_span(text, match.start())
        right = _right_span(text, match.end())
        if not left.strip() or not right.strip():
            continue
        if _glued(text, start, match.end() + len(right)):
            continue  # a term with a letter: "3V + 5 = 44", "20 - 12 = 2W"
        if _runs_on(text, left, start):
            continue  # the expression runs on into words before it: "2 hours * 60 = 120"
        if _SCALING_WORDS.search(text[:start]):
            continue
        try:
            left_value, ops = _evaluate(left)
            right_value, _ = _evaluate(right)
        except _Unreadable:
            continue
        if ops == 0:
            continue  # a bare number states no computation
        found.append(
            Equation(left.strip(), right.strip(), left_value, right_value, _plain_decimals(right))
        )
    return found


def wrong_equations(text: str) -> list[Equation]:
    """The equations of :func:`equations` whose stated value is wrong."""
    return [equation for equation in equations(text) if equation.wrong]
