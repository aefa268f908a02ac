"""The gate's cost and quality on the labelled sets of ``tests/data/gate/``, prequential.

    .venv/bin/python -m tests.bench.bench_gate [--refit-every 10] [--in-sample]

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

from router.gate.evaluate import CURVE_SHARES, Evaluation, evaluate, read_rows
from tierflow.core.config import ActionRule, VerifierName

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "gate"
THRESHOLD = 0.7  # routing.quality_threshold's default
SETS: dict[str, ActionRule] = {
    "mt_bench.jsonl": ActionRule(answer="text"),
    "gemma_arith.jsonl": ActionRule(answer="number"),
    "gemma_labels.jsonl": ActionRule(answer="label", labels=["positive", "negative"]),
}
COMPOSITIONS: list[tuple[str, list[VerifierName]]] = [
    ("shape (seed)", ["shape"]),
    ("checks", ["checks"]),
    ("checks+consistency", ["checks", "consistency"]),
    ("checks+consistency+learned", ["checks", "consistency", "learned"]),
]


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
    args = parser.parse_args()
    mode = "in-sample" if args.in_sample else f"prequential, refit every {args.refit_every} rows"
    print(f"Gate compositions, {mode}, threshold {THRESHOLD} (no target set)\n")
    for name, base in SETS.items():
        rows = read_rows(DATA / name)
        results = []
        started = time.monotonic()
        for label, verifiers in COMPOSITIONS:
            rule = base.model_copy(update={"verifiers": verifiers})
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
        print(f"\n({time.monotonic() - started:.1f}s)\n")


if __name__ == "__main__":
    main()
