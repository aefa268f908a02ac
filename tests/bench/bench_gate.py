"""The gate's cost and quality on labelled real answers, prequential.

    .venv/bin/python -m tests.bench.bench_gate [--refit-every 10] [--in-sample] [--only NAME]

Sets: ``tests/data/gate/`` and the dev sets of ``../shared/data`` (math word problems: SVAMP,
ASDiv, MultiArith, AQuA; dates), answered by gpt-3.5-turbo (cheap) and gpt-4 (strong). For each
set a first table gives every check's false rejections on the strong model's right answers (a
veto must stay at or under 1%) and the share of the cheap model's wrong answers it catches; then
the gate compositions, and for each the calls per row at 95% of strong-only accuracy: random
escalation, the oracle, the gate's cascade and the prompt router before it (every row a cheap
call in a cascade; a routed row none).

Run from the repository root. For each set (real model outputs with labels: MT-Bench answers of
Mixtral judged by GPT-4, and Gemma 3 270M's own answers to arithmetic and sentiment questions)
and each gate composition (the seed's shape score alone; the kind's checks; checks and
consistency; checks, consistency and the learned scorer) it prints one markdown table: the share
of strong calls, accuracy, accuracy relative to strong-only, the AUROC of the gate's score for
right vs wrong cheap answers, random escalation at the same rate, and accuracy when a fixed share
of the rows (the lowest-ranked) escalates. No model is called.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from router.gate.evaluate import CURVE_SHARES, EvalRow, Evaluation, evaluate, read_rows
from router.gate.kinds import extract
from tierflow.core.config import ActionRule, VerifierName

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "gate"
SHARED = ROOT.parent / "shared" / "data"
THRESHOLD = 0.7  # routing.quality_threshold's default
NUMBER = ActionRule(answer="number")
SETS: dict[str, tuple[Path, ActionRule]] = {
    "mt_bench": (DATA / "mt_bench.jsonl", ActionRule(answer="text")),
    "gemma_arith": (DATA / "gemma_arith.jsonl", NUMBER),
    "gemma_labels": (
        DATA / "gemma_labels.jsonl",
        ActionRule(answer="label", labels=["positive", "negative"]),
    ),
    "svamp": (SHARED / "mathwp" / "svamp.jsonl", NUMBER),
    "asdiv": (SHARED / "mathwp" / "asdiv.jsonl", NUMBER),
    "multiarith": (SHARED / "mathwp" / "multiarith.jsonl", NUMBER),
    "aqua": (SHARED / "mathwp" / "aqua.jsonl", NUMBER),
    "date": (SHARED / "date" / "date.jsonl", NUMBER),
}
COMPOSITIONS: list[tuple[str, list[VerifierName], float | None]] = [
    ("shape (seed)", ["shape"], None),
    ("checks+shape (no labels)", ["checks", "shape"], None),
    ("checks+consistency", ["checks", "consistency"], None),
    ("checks+learned q.95", ["checks", "learned"], 0.95),
    ("checks+consistency+learned q.95", ["checks", "consistency", "learned"], 0.95),
    ("checks+shape+learned q.95 (packaged)", ["checks", "shape", "learned"], 0.95),
]


def checks_table(rows: list[EvalRow], rule: ActionRule) -> str:
    """Each check's false rejections on the strong model's right answers (its veto's cost) and
    the cheap model's wrong answers it catches."""
    right = [r.strong_answer for r in rows if r.strong_correct and r.strong_answer]
    wrong = [r.cheap_answer for r in rows if not r.cheap_correct]
    codes = sorted({c for text in right + wrong for c in extract(text, rule).codes})
    lines = ["| check | rejects strong right | catches cheap wrong |", "|---|---|---|"]
    for code in codes or ["(none failed)"]:
        rejected = sum(code in extract(t, rule).codes for t in right) / max(1, len(right))
        caught = sum(code in extract(t, rule).codes for t in wrong) / max(1, len(wrong))
        lines.append(
            f"| {code} | {_pct(rejected)} of {len(right)} | {_pct(caught)} of {len(wrong)} |"
        )
    return "\n".join(lines)


def target_table(results: list[tuple[str, Evaluation]]) -> str:
    lines = [
        "| gate | policy | strong calls | cheap calls | routed | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for label, found in results:
        for policy in found.at_target:
            lines.append(
                f"| {label} | {policy.name} | {_pct(policy.strong)} | {_pct(policy.cheap)} | "
                f"{_pct(policy.routed)} | {_pct(policy.accuracy)} |"
            )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def table(name: str, results: list[tuple[str, Evaluation]]) -> str:
    first = results[0][1]
    budgets = " | ".join(f"acc@{share:.0%}" for share in CURVE_SHARES)
    lines = [
        f"### {name}: {first.rows} rows, weak {_pct(first.weak_only.accuracy)}, "
        f"strong {_pct(first.strong_only.accuracy)}, oracle {_pct(first.oracle.accuracy)} "
        f"at {_pct(first.oracle.strong_calls)} strong calls",
        "",
        f"| gate | strong calls | accuracy | vs strong | random same rate | AUROC | {budgets} |",
        "|---|---|---|---|---|---|" + "---|" * len(CURVE_SHARES),
    ]
    for label, found in results:
        auc = "-" if found.auroc is None else f"{found.auroc:.3f}"
        curve = " | ".join(_pct(point.gate) for point in found.curve)
        lines.append(
            f"| {label} | {_pct(found.gate.strong_calls)} | {_pct(found.gate.accuracy)} | "
            f"{_pct(found.gate.quality_vs_strong)} | {_pct(found.random.accuracy)} | {auc} | "
            f"{curve} |"
        )
    random = " | ".join(_pct(point.random) for point in first.curve)
    oracle = " | ".join(_pct(point.oracle) for point in first.curve)
    lines.append(f"| (random at the budget) | | | | | 0.500 | {random} |")
    lines.append(f"| (oracle at the budget) | | | | | 1.000 | {oracle} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refit-every", type=int, default=10)
    parser.add_argument("--in-sample", action="store_true", help="fit on every row instead")
    parser.add_argument("--only", action="append", help="a set's name (repeatable)")
    args = parser.parse_args()
    mode = "in-sample" if args.in_sample else f"prequential, refit every {args.refit_every} rows"
    print(f"Gate compositions, {mode}, threshold {THRESHOLD} until a target is fitted\n")
    for name, (path, base) in SETS.items():
        if (args.only and name not in args.only) or not path.exists():
            continue
        rows = read_rows(path)
        print(f"### {name}: checks\n\n{checks_table(rows, base)}\n")
        results = []
        started = time.monotonic()
        for label, verifiers, target in COMPOSITIONS:
            update = {"verifiers": verifiers, "target_quality": target}
            rule = base.model_copy(update=update)
            found = evaluate(
                rows,
                rule,
                THRESHOLD,
                action=label,
                prequential=not args.in_sample,
                refit_every=args.refit_every,
            )
            results.append((label, found))
        print(table(name, results))
        print(f"\nCalls per row at 95% of strong-only accuracy:\n\n{target_table(results)}")
        print(f"\n({time.monotonic() - started:.1f}s)\n")


if __name__ == "__main__":
    main()
