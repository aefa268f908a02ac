"""``tierflow eval``: replay labelled answers through the gate offline, with no model calls.

A **labelled file** (CSV or JSONL) holds one row per prompt: the cheap tier's answer, whether it
was right, and whether the strong tier's answer was right. Columns:

- required: ``prompt``, ``cheap_answer``, ``cheap_correct``, ``strong_correct`` (booleans as
  ``true``/``false`` or ``1``/``0``);
- optional: ``strong_answer``, ``cheap_samples`` (a JSON list of more cheap answers to the same
  prompt, which the consistency verifier compares, as ``Answer.samples``) and
  ``cheap_finish_reason`` (``length`` marks a truncated answer). Other columns are ignored.

:func:`replay` runs the action's verifiers on every cheap answer, as the fleet's ``Gate`` step
would, except that nothing is called: the self-critique and the judge abstain, and the
consistency verifier sees only the samples in the file. A row **escalates** when the gate fails
it; its **outcome** is then ``strong_correct``, else ``cheap_correct``. The learned scorer and
the calibrated threshold are fitted on labels (a row's label is ``cheap_correct``):

- in-sample (the default): on every row, then every row is judged by that fit (optimistic);
- ``prequential``: row ``i`` is judged by a fit on rows ``< i`` only (refitted every
  ``refit_every`` rows), the way the fleet learns from the labels it has so far.

A fit is :func:`router.gate.calibration.fit_gate` on the rows' labels (each row's features as
the gate computed them, labelled ``cheap_correct``): the very function the fleet's gate fits
with, so an offline figure is a forecast of the gate the fleet runs.

:func:`evaluate` compares the gate with weak-only, strong-only, the oracle (escalate exactly the
wrong cheap answers) and random escalation at the gate's rate (its expected value): the share of
strong calls, accuracy, accuracy as a share of strong-only's, the AUROC of the gate's score for
telling right cheap answers from wrong ones, and accuracy at fixed shares of strong calls
(escalating the lowest-ranked rows). The gate's **rank** of a row is its score, less 2 when a
verifier vetoed it: the gate passes exactly the rows whose rank reaches the threshold.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.gate import Answer, GateReport, judge_answer
from router.gate.calibration import Calibration, fit_gate, uses_labels
from router.gate.learned import VETO_PENALTY, Label, LogisticScorer
from router.gate.prerouting import PolicyCost, cascade_costs, prompt_scores
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.errors import ConfigError, TierflowError

REQUIRED = ("prompt", "cheap_answer", "cheap_correct", "strong_correct")
OPTIONAL = ("strong_answer", "cheap_samples", "cheap_finish_reason")
CURVE_SHARES = (0.2, 0.3, 0.4, 0.5)
DEFAULT_REFIT_EVERY = 10
DEFAULT_ACTION = "(default text rule)"
TARGET = 0.95  # the share of strong-only accuracy the cost comparison aims at
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


class EvalFileError(TierflowError, ValueError):
    """A labelled file that cannot be replayed; the message names the file, row and column."""


# --- Reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalRow:
    """One labelled prompt: the cheap answer (and its samples), and who was right."""

    prompt: str
    cheap_answer: str
    cheap_correct: bool
    strong_correct: bool
    strong_answer: str | None = None
    cheap_samples: list[str] | None = None
    cheap_finish_reason: str | None = None


def read_rows(path: str | Path) -> list[EvalRow]:
    """The rows of a ``.csv`` or ``.jsonl`` file; :class:`EvalFileError` on the first bad one."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise EvalFileError(f"{p}: expected a .csv or .jsonl file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFileError(f"{p}: cannot read: {exc}") from None
    raw = _csv_rows(text, p) if suffix == ".csv" else _jsonl_rows(text, p)
    rows = [parse_row(values, f"{p}: row {number}") for number, values in raw]
    if not rows:
        raise EvalFileError(f"{p}: no rows")
    return rows


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise EvalFileError(f"{path}: header: missing column(s) {', '.join(missing)}")
    try:
        for number, values in enumerate(reader, start=1):
            yield number, {k: v for k, v in values.items() if k is not None}
    except csv.Error as exc:
        raise EvalFileError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None


def _jsonl_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    number = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number += 1
        try:
            values = json.loads(line)
        except ValueError as exc:
            raise EvalFileError(f"{path}: row {number} (line {line_no}): not JSON: {exc}") from None
        if not isinstance(values, dict):
            raise EvalFileError(f"{path}: row {number} (line {line_no}): not a JSON object")
        yield number, values


def parse_row(values: Mapping[str, Any], where: str) -> EvalRow:
    """One row from its columns; ``where`` (file and row) starts every error's message."""
    return EvalRow(
        prompt=_text(values, "prompt", where),
        cheap_answer=_text(values, "cheap_answer", where),
        cheap_correct=_bool(values, "cheap_correct", where),
        strong_correct=_bool(values, "strong_correct", where),
        strong_answer=_optional_text(values, "strong_answer", where),
        cheap_samples=_samples(values, where),
        cheap_finish_reason=_optional_text(values, "cheap_finish_reason", where),
    )


def _bad(where: str, column: str, problem: str) -> EvalFileError:
    return EvalFileError(f"{where}, column {column}: {problem}")


def _text(values: Mapping[str, Any], column: str, where: str) -> str:
    value = values.get(column)
    if value is None:
        raise _bad(where, column, "missing")
    if not isinstance(value, str):
        raise _bad(where, column, f"expected text, got {type(value).__name__}")
    return value


def _optional_text(values: Mapping[str, Any], column: str, where: str) -> str | None:
    value = values.get(column)
    return None if value is None or value == "" else _text(values, column, where)


def _bool(values: Mapping[str, Any], column: str, where: str) -> bool:
    value = values.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    shown = "missing" if value is None or value == "" else f"{value!r}"
    raise _bad(where, column, f"expected true/false or 1/0, got {shown}")


def _samples(values: Mapping[str, Any], where: str) -> list[str] | None:
    value = values.get("cheap_samples")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _bad(where, "cheap_samples", "expected a JSON list of answers") from None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad(where, "cheap_samples", "expected a JSON list of answers (strings)")
    return value


def rule_for(config: LLMConfig, action: str | None) -> tuple[str, ActionRule]:
    """The action's rule from the config (its name and rule); a text rule when ``action`` is
    None; :class:`ConfigError` naming the known actions when it is unknown."""
    if action is None:
        return DEFAULT_ACTION, ActionRule(answer="text")
    rule = config.routing.actions.get(action)
    if rule is None:
        known = ", ".join(sorted(config.routing.actions)) or "none"
        raise ConfigError(f"--action {action}: not in routing.actions (known: {known})")
    return action, rule


# --- Replaying -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """One row as the gate judged it."""

    row: EvalRow
    score: float
    vetoed: bool
    passed: bool
    threshold: float

    @property
    def rank(self) -> float:
        """The score, less :data:`VETO_PENALTY` when vetoed: passed iff rank >= threshold."""
        return self.score - VETO_PENALTY if self.vetoed else self.score

    @property
    def escalated(self) -> bool:
        return not self.passed

    @property
    def outcome(self) -> bool:
        return self.row.strong_correct if self.escalated else self.row.cheap_correct


@dataclass(frozen=True)
class Replay:
    """Every row's judgement, how it was fitted, and the last fit's threshold and notes."""

    judged: list[Judged]
    prequential: bool
    refit_every: int
    threshold: float
    notes: list[str] = field(default_factory=list)
    fitted: bool = True


def _answer(
    row: EvalRow, rule: ActionRule, shape_mark: float, scorer: LogisticScorer | None
) -> Answer:
    # samples=None when the file has none: the consistency verifier abstains, as it says.
    return Answer(
        prompt=row.prompt,
        text=row.cheap_answer,
        rule=rule,
        finish_reason=row.cheap_finish_reason,
        threshold=shape_mark,
        samples=row.cheap_samples,
        learned=scorer,
    )


def _judged(row: EvalRow, report: GateReport) -> Judged:
    vetoed = any(not v.passed for v in report.verdicts)
    return Judged(row, report.score, vetoed, report.passed, report.threshold)


def fit(
    rule: ActionRule, default_threshold: float, rows: Sequence[EvalRow], bases: Sequence[GateReport]
) -> Calibration:
    """The scorer and threshold from ``rows`` (judged without a scorer as ``bases``), by
    :func:`router.gate.calibration.fit_gate` on their features: the fleet's own fit."""
    labels = [Label(b.features, r.cheap_correct) for r, b in zip(rows, bases, strict=True)]
    return fit_gate(rule, default_threshold, labels)


def replay(
    rows: Sequence[EvalRow],
    rule: ActionRule,
    default_threshold: float,
    *,
    prequential: bool = False,
    refit_every: int = DEFAULT_REFIT_EVERY,
) -> Replay:
    """Judge every row's cheap answer; see the module's docstring for how the fits are made.

    ``default_threshold`` is ``routing.quality_threshold``: the shape score's mark and the
    threshold until labels calibrate one.
    """
    if refit_every < 1:
        raise ValueError("refit_every must be at least 1")
    # Without a scorer, a row's verdicts depend on that row alone: judging them all up front
    # lets no label of a later row in.
    bases = [
        judge_answer(_answer(row, rule, default_threshold, None), default_threshold) for row in rows
    ]
    if not uses_labels(rule):
        judged = [_judged(row, base) for row, base in zip(rows, bases, strict=True)]
        notes = ["nothing fitted: the action neither learns nor targets a threshold"]
        return Replay(judged, prequential, refit_every, default_threshold, notes, fitted=False)
    if not prequential:
        found = fit(rule, default_threshold, rows, bases)
        judged = [_judge(row, rule, default_threshold, found) for row in rows]
        notes = [*found.notes, f"in-sample: fitted on all {len(rows)} rows, then judged them"]
        return Replay(judged, prequential, refit_every, found.threshold, notes)
    found = fit(rule, default_threshold, [], [])
    judged, unscored = [], 0
    for i, row in enumerate(rows):
        if i and i % refit_every == 0:
            found = fit(rule, default_threshold, rows[:i], bases[:i])
        unscored += found.scorer is None
        judged.append(_judge(row, rule, default_threshold, found))
    notes = list(found.notes)
    if "learned" in rule.verifiers:
        notes.append(f"prequential: {unscored} of {len(rows)} rows judged before a scorer existed")
    return Replay(judged, prequential, refit_every, found.threshold, notes)


def _judge(row: EvalRow, rule: ActionRule, default_threshold: float, found: Calibration) -> Judged:
    answer = _answer(row, rule, default_threshold, found.scorer)
    return _judged(row, judge_answer(answer, found.threshold, found.notes))


# --- Metrics -------------------------------------------------------------------------------


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auroc(scores: Sequence[float], good: Sequence[bool]) -> float | None:
    """The chance that a random right answer scores above a random wrong one (ties count
    half): the Mann-Whitney statistic from average ranks. None without both kinds of answer."""
    right = sum(1 for g in good if g)
    wrong = len(good) - right
    if right == 0 or wrong == 0:
        return None
    ranks = _average_ranks(scores)
    rank_sum = sum(r for r, g in zip(ranks, good, strict=True) if g)
    return (rank_sum - right * (right + 1) / 2) / (right * wrong)


def accuracy_at(
    ranks: Sequence[float], cheap: Sequence[bool], strong: Sequence[bool], share: float
) -> float:
    """Expected accuracy when the lowest-ranked ``share`` of rows escalate. Rows tied at the cut
    escalate in proportion (the expectation over every order of the ties; no randomness)."""
    n = len(ranks)
    budget = share * n
    total = 0.0
    ordered = sorted(range(n), key=lambda i: ranks[i])
    start = 0
    while start < n:
        end = start
        while end + 1 < n and ranks[ordered[end + 1]] == ranks[ordered[start]]:
            end += 1
        group = ordered[start : end + 1]
        taken = min(float(len(group)), max(0.0, budget)) / len(group)
        budget -= taken * len(group)
        total += sum(taken * strong[i] + (1 - taken) * cheap[i] for i in group)
        start = end + 1
    return total / n


@dataclass(frozen=True)
class Policy:
    """One way of choosing which rows escalate, and what it gives."""

    name: str
    strong_calls: float
    accuracy: float
    quality_vs_strong: float | None
    auroc: float | None = None


@dataclass(frozen=True)
class CurvePoint:
    """Accuracy at a fixed share of strong calls: the gate's ranking, random, the oracle's."""

    strong_calls: float
    gate: float
    random: float
    oracle: float


@dataclass(frozen=True)
class Evaluation:
    """The gate beside the baselines on one file (see the module's docstring)."""

    action: str
    verifiers: list[str]
    rows: int
    prequential: bool
    fitted: bool
    refit_every: int
    threshold: float
    gate: Policy
    weak_only: Policy
    strong_only: Policy
    oracle: Policy
    random: Policy
    curve: list[CurvePoint]
    notes: list[str]
    at_target: list[PolicyCost] = field(default_factory=list)
    target: float = TARGET

    @property
    def auroc(self) -> float | None:
        return self.gate.auroc

    @property
    def policies(self) -> list[Policy]:
        return [self.gate, self.weak_only, self.strong_only, self.oracle, self.random]

    def as_dict(self) -> dict[str, Any]:
        """What ``--json`` prints: shares as fractions in [0, 1]."""
        found = asdict(self)
        for policy in ("gate", "weak_only", "strong_only", "oracle", "random"):
            found[policy].pop("name")
        found["auroc"] = self.auroc
        found["mode"] = "prequential" if self.prequential else "in-sample"
        return found


def _policy(name: str, calls: float, accuracy: float, strong: float, auc: float | None) -> Policy:
    versus = accuracy / strong if strong > 0 else None
    return Policy(name, calls, accuracy, versus, auc)


def summarize(action: str, rule: ActionRule, played: Replay) -> Evaluation:
    """The gate's replay beside weak-only, strong-only, the oracle and random at its rate."""
    judged = played.judged
    n = len(judged)
    cheap = [j.row.cheap_correct for j in judged]
    strong = [j.row.strong_correct for j in judged]
    ranks = [j.rank for j in judged]
    weak_acc, strong_acc = sum(cheap) / n, sum(strong) / n
    rate = sum(j.escalated for j in judged) / n
    gate_auc = auroc(ranks, cheap)
    both = gate_auc is not None
    oracle_ranks = [float(c) - float(s) for c, s in zip(cheap, strong, strict=True)]
    curve = [
        CurvePoint(
            share,
            accuracy_at(ranks, cheap, strong, share),
            (1 - share) * weak_acc + share * strong_acc,
            accuracy_at(oracle_ranks, cheap, strong, share),
        )
        for share in CURVE_SHARES
    ]
    at_target = _at_target(judged, ranks, cheap, strong)
    gate_acc = sum(j.outcome for j in judged) / n
    oracle_acc = sum(c or s for c, s in zip(cheap, strong, strict=True)) / n
    random_acc = (1 - rate) * weak_acc + rate * strong_acc
    return Evaluation(
        action=action,
        verifiers=list(rule.verifiers),
        rows=n,
        prequential=played.prequential,
        fitted=played.fitted,
        refit_every=played.refit_every,
        threshold=played.threshold,
        gate=_policy("gate", rate, gate_acc, strong_acc, gate_auc),
        weak_only=_policy("weak only", 0.0, weak_acc, strong_acc, None),
        strong_only=_policy("strong only", 1.0, strong_acc, strong_acc, None),
        oracle=_policy("oracle", 1 - weak_acc, oracle_acc, strong_acc, 1.0 if both else None),
        random=_policy(
            "random at the gate's rate", rate, random_acc, strong_acc, 0.5 if both else None
        ),
        curve=curve,
        notes=played.notes,
        at_target=at_target,
    )


def _at_target(
    judged: Sequence[Judged], ranks: list[float], cheap: list[bool], strong: list[bool]
) -> list[PolicyCost]:
    """Calls per row at :data:`TARGET` of strong-only accuracy: random escalation, the oracle,
    the cascade by the gate's ranking and the router (prompt only) before it."""
    n, weak_n, strong_n = len(judged), sum(cheap), sum(strong)
    found: list[PolicyCost] = []
    if strong_n > weak_n:
        share = max(0.0, (TARGET * strong_n - weak_n) / (strong_n - weak_n))
        if share <= 1:
            found.append(PolicyCost("random", share, 1.0, 0.0, TARGET * strong_n / n))
    oracle_ranks = [float(c) - float(s) for c, s in zip(cheap, strong, strict=True)]
    oracle, _ = cascade_costs(oracle_ranks, [0.0] * n, cheap, strong, TARGET)
    route = prompt_scores([j.row.prompt for j in judged], cheap)
    cascade, routed = cascade_costs(ranks, route, cheap, strong, TARGET)
    named = (("oracle", oracle), ("gate cascade", cascade), ("router + gate", routed))
    for name, p in named:
        if p is not None:
            found.append(PolicyCost(name, p.strong, p.cheap, p.routed, p.accuracy))
    return found


def evaluate(
    rows: Sequence[EvalRow],
    rule: ActionRule,
    default_threshold: float,
    *,
    action: str = DEFAULT_ACTION,
    prequential: bool = False,
    refit_every: int = DEFAULT_REFIT_EVERY,
) -> Evaluation:
    """:func:`replay` then :func:`summarize`."""
    played = replay(rows, rule, default_threshold, prequential=prequential, refit_every=refit_every)
    return summarize(action, rule, played)
