"""Build the labelled gate sets of ``tests/data/gate/`` (the format ``tierflow eval`` reads).

    .venv/bin/python -m tests.bench.make_gate_sets mt-bench
    .venv/bin/python -m tests.bench.make_gate_sets gemma-arith [--n 300] [--samples 2]
    .venv/bin/python -m tests.bench.make_gate_sets gemma-labels [--n 200] [--samples 2]
    ... [--budget-s 290] [--resume]   # stop after that long; --resume appends to the file

Run from the repository root (``-m`` so this checkout's packages are the ones imported).

- ``mt-bench``: RouteLLM's MT-Bench judgements (``../shared/data/routellm``, Apache-2.0) turned
  into rows: cheap = Mixtral-8x7B-Instruct, strong = GPT-4-1106-preview, both turns; an answer
  is correct when the GPT-4 judge scored it ``>= --good`` (default 7) out of 10.
- ``gemma-*``: real answers of the embedded model (Gemma 3 270M, the packaged GGUF, llama.cpp)
  to questions whose answers are known: the main answer at the fleet's default temperature, and
  ``--samples`` more at the consistency verifier's temperature; ``cheap_correct`` is the answer
  extracted by the action's kind (:mod:`router.gate.kinds`) against the truth. The strong tier
  is *assumed* right on these easy tasks: ``strong_answer`` is the reference answer and
  ``strong_correct`` is true (see tests/data/gate/README.md).

Generation runs in a child process (``--child``): a crash of llama.cpp (a segfault) is reported
as such and leaves no half-written file. On CPUs that advertise AMX inside a VM, llama.cpp's AMX
path faults at the first generation, so the model is loaded with llama.cpp's extra buffer types
off (:func:`no_extra_buffer_types`), in this script only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from router.gate.kinds import extract
from tierflow.core.config import ActionRule
from workers.engine.loader import resolve_model_path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "gate"
ROUTELLM = ROOT.parent / "shared" / "data" / "routellm" / "mt_bench_judgements.jsonl"
CHEAP_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"

MAIN_TEMPERATURE = 0.2  # ModelConfig.temperature's default: what the fleet sends
SAMPLE_TEMPERATURE = 0.7  # workers/pipeline/gate.py CONSISTENCY_TEMPERATURE
MAX_TOKENS = 16
STOP = ["\n"]
N_THREADS = 2
N_CTX = 256
SEED = 20240601

NUMBER_RULE = ActionRule(answer="number")
LABELS = ["positive", "negative"]
LABEL_RULE = ActionRule(answer="label", labels=LABELS)


# --- MT-Bench ------------------------------------------------------------------------------

_TURN = re.compile(
    r"### (User|Assistant A):\n(.*?)(?=\n\n### (?:User|Assistant A):\n|\n\n<\|The End)", re.S
)
_SINGLE_Q = re.compile(
    r"\[Question\]\n(.*?)\n\n\[The Start of (?:Reference|Assistant's) Answer\]", re.S
)
_SINGLE_A = re.compile(
    r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S
)
_CONVERSATION = "<|The Start of Assistant A's Conversation with User|>"


def conversation(record: dict[str, Any]) -> tuple[list[str], str]:
    """The user turns up to the judged one, and the judged answer, from what the judge saw.

    Turn 1 (``single-*``) shows ``[Question]`` and the answer; turn 2 (``*-multi-turn``) the
    whole conversation (after the reference answer, for math) as ``### User:`` /
    ``### Assistant A:`` blocks: the last assistant block is the judged answer.
    """
    text = record["user_prompt"]
    if record["turn"] == 1:
        question, answer = _SINGLE_Q.search(text), _SINGLE_A.search(text)
        if question is None or answer is None:
            raise ValueError(f"question {record['question_id']}: turn 1 not recognised")
        return [question[1].strip()], answer[1].strip()
    blocks = _TURN.findall(text[text.index(_CONVERSATION) :])
    users = [body.strip() for who, body in blocks if who == "User"]
    answers = [body.strip() for who, body in blocks if who == "Assistant A"]
    if len(users) != 2 or len(answers) != 2:
        raise ValueError(f"question {record['question_id']}: turn 2 not recognised")
    return users, answers[-1]


def mt_bench(good: float) -> list[dict[str, Any]]:
    """One row per (question, turn): cheap = Mixtral, strong = GPT-4, correct = score >= good;
    in a fixed shuffled order."""
    seen: dict[tuple[int, int], dict[str, tuple[list[str], str, float]]] = {}
    for line in ROUTELLM.read_text().splitlines():
        record = json.loads(line)
        key = (record["question_id"], record["turn"])
        seen.setdefault(key, {})[record["model"]] = (*conversation(record), record["score"])
    rows = []
    for (question_id, turn), by_model in sorted(seen.items()):
        users, cheap, cheap_score = by_model[CHEAP_MODEL]
        strong_users, strong, strong_score = by_model[STRONG_MODEL]
        assert users == strong_users, (question_id, turn)
        rows.append(
            {
                "id": f"mt{question_id}-t{turn}",
                "turn": turn,
                # Turn 2: both user turns (each model saw its own first answer between them).
                "prompt": "\n\n".join(users),
                "cheap_answer": cheap,
                "cheap_correct": cheap_score >= good,
                "strong_answer": strong,
                "strong_correct": strong_score >= good,
                "cheap_score": cheap_score,
                "strong_score": strong_score,
            }
        )
    # A fixed shuffle: a prequential replay then sees the categories mixed, as traffic is,
    # not in the blocks of the question ids (writing, roleplay, ..., humanities).
    random.Random(SEED).shuffle(rows)
    return rows


# --- Gemma: the tasks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    prompt: str
    truth: str  # the reference answer, as the kind extracts it


def arithmetic(n: int, rng: random.Random) -> list[Question]:
    """``a + b``, ``a - b`` (operands 1..20, results may be negative) and ``a * b`` (2..9)."""
    questions = []
    for _ in range(n):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
        else:
            a, b = rng.randint(1, 20), rng.randint(1, 20)
        truth = a + b if op == "+" else a - b if op == "-" else a * b
        questions.append(Question(f"Q: What is {a} {op} {b}?\nA:", str(truth)))
    return questions


SUBJECTS = [
    "the hotel room", "our waiter", "the new phone", "the movie", "the delivery",
    "the concert", "this laptop", "the customer service", "the coffee", "the hike",
    "the app update", "the train ride", "the book", "the pizza", "the museum tour",
    "the headphones", "the dentist visit", "the weekend trip", "the meeting", "the software",
    "the seats", "the checkout process", "the soup", "the lecture",
]  # fmt: skip
POSITIVE = [
    "was wonderful", "was spotless", "exceeded my expectations", "was a real delight",
    "was friendly and quick", "worked perfectly", "made my day", "was worth every penny",
    "was better than I hoped", "left me smiling", "was excellent", "was surprisingly pleasant",
    "was fantastic", "felt comfortable and calm", "was a great choice", "went smoothly",
]  # fmt: skip
NEGATIVE = [
    "was a disaster", "was filthy", "broke after two days", "was a waste of money",
    "was rude and slow", "kept crashing", "ruined my evening", "was disappointing",
    "was worse than I feared", "left me angry", "was terrible", "was painfully boring",
    "was awful", "felt cramped and noisy", "was a bad choice", "went badly wrong",
]  # fmt: skip
# Negations flip the sentiment: "was not {good}" is negative, "was not {bad} at all" positive.
NOT_GOOD = ["good", "pleasant", "worth it", "clean", "helpful", "comfortable"]
NOT_BAD = ["bad", "boring", "a problem", "dirty", "rude", "noisy"]
FRAMES = ["{s} {p}.", "Honestly, {s} {p}.", "I have to say {s} {p}.", "Overall, {s} {p}."]


def sentence(rng: random.Random) -> tuple[str, str]:
    """One sentence with its sentiment; a fifth of them negated."""
    subject = rng.choice(SUBJECTS)
    if rng.random() < 0.2:
        if rng.random() < 0.5:
            label, predicate = "negative", f"was not {rng.choice(NOT_GOOD)}"
        else:
            label, predicate = "positive", f"was not {rng.choice(NOT_BAD)} at all"
    else:
        label = rng.choice(LABELS)
        predicate = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    text = rng.choice(FRAMES).format(s=subject, p=predicate)
    return text[0].upper() + text[1:], label


def sentiments(n: int, rng: random.Random) -> list[Question]:
    questions: list[Question] = []
    seen: set[str] = set()
    while len(questions) < n:
        text, label = sentence(rng)
        if text in seen:
            continue
        seen.add(text)
        prompt = f'Q: Is the sentiment of this sentence positive or negative? "{text}"\nA:'
        questions.append(Question(prompt, label))
    return questions


TASKS = {
    "gemma-arith": (arithmetic, NUMBER_RULE, "gemma_arith.jsonl"),
    "gemma-labels": (sentiments, LABEL_RULE, "gemma_labels.jsonl"),
}


# --- Gemma: generation (in the child) ------------------------------------------------------


@contextlib.contextmanager
def no_extra_buffer_types() -> Iterator[None]:
    """While a ``llama_cpp.Llama`` is built, its model params have ``use_extra_bufts`` off.

    ``Llama.__init__`` starts from ``llama_cpp.llama_cpp.llama_model_default_params()`` and
    loads the model before returning, so the default params are wrapped for that call only.
    Off, llama.cpp neither repacks weights for the AMX (nor the AVX) kernels: slower, but it runs
    on a VM that advertises AMX and faults on its first use.
    """
    import llama_cpp.llama_cpp as low  # heavy optional dependency: only the child loads it

    original = low.llama_model_default_params

    def params() -> Any:
        found = original()
        found.use_extra_bufts = False
        return found

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def load_model() -> Any:
    import llama_cpp  # heavy optional dependency: only the child loads it

    with no_extra_buffer_types():
        llm = llama_cpp.Llama(
            model_path=str(resolve_model_path()),
            n_ctx=N_CTX,
            n_batch=64,
            n_threads=N_THREADS,
            n_threads_batch=N_THREADS,
            seed=SEED,
            verbose=False,
        )
    assert llm.model_params.use_extra_bufts is False
    return llm


def complete(llm: Any, prompt: str, temperature: float, seed: int) -> tuple[str, str, int]:
    out = llm(prompt, max_tokens=MAX_TOKENS, temperature=temperature, stop=STOP, seed=seed)
    choice = out["choices"][0]
    return choice["text"], choice["finish_reason"], out["usage"]["completion_tokens"]


def correct(text: str, truth: str, rule: ActionRule) -> bool:
    value = extract(text, rule).value
    if rule.answer == "number":
        return value is not None and Decimal(value) == Decimal(truth)
    return value == truth


def generate(task: str, n: int, samples: int, budget_s: float, out: Path, start: int) -> None:
    """The child: answer questions ``start..n-1``, one JSON line each, until done or past the
    budget. Questions and seeds depend on the index only, so a resumed file equals a whole run."""
    make, rule, _ = TASKS[task]
    questions = make(n, random.Random(f"{task}-{SEED}"))
    llm = load_model()
    complete(llm, "Q: What is 1 + 1?\nA:", 0.0, 0)  # warm-up
    started, tokens = time.monotonic(), 0
    with out.open("w") as file:
        for i, question in enumerate(questions[start:], start=start):
            text, finish, used = complete(llm, question.prompt, MAIN_TEMPERATURE, SEED + i)
            extra = []
            for k in range(samples):
                sample, _, more = complete(
                    llm, question.prompt, SAMPLE_TEMPERATURE, SEED + 1000 * (k + 1) + i
                )
                extra.append(sample)
                used += more
            tokens += used
            row = {
                "id": f"{task}-{i}",
                "prompt": question.prompt,
                "cheap_answer": text,
                "cheap_samples": extra,
                "cheap_finish_reason": finish,
                "cheap_correct": correct(text, question.truth, rule),
                "strong_answer": question.truth,
                "strong_correct": True,
            }
            file.write(json.dumps(row) + "\n")
            elapsed = time.monotonic() - started
            if (i + 1) % 25 == 0:
                print(f"{task}: {i + 1} questions, {tokens / elapsed:.1f} tokens/s", flush=True)
            if elapsed > budget_s:
                print(
                    f"{task}: budget of {budget_s:.0f}s spent after {i + 1} questions", flush=True
                )
                break
    elapsed = time.monotonic() - started
    print(f"{task}: {tokens} completion tokens in {elapsed:.1f}s = {tokens / elapsed:.1f} tokens/s")


# --- Main ----------------------------------------------------------------------------------


def write_rows(rows: list[dict[str, Any]], name: str) -> Path:
    path = OUT_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def summary(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    cheap = sum(r["cheap_correct"] for r in rows) / len(rows)
    strong = sum(r["strong_correct"] for r in rows) / len(rows)
    size = path.stat().st_size / 1024
    return (
        f"{path.name}: {len(rows)} rows, "
        f"cheap {cheap:.1%} right, strong {strong:.1%}, {size:.0f} KiB"
    )


def run_child(args: argparse.Namespace) -> int:
    """Generate in a child process; keep the file only when the child finished cleanly."""
    _, _, name = TASKS[args.set]
    target = OUT_DIR / name
    partial = target.with_name(f"{name}.{os.getpid()}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = target.read_text() if args.resume and target.exists() else ""
    start = len(kept.splitlines())
    module = "tests.bench.make_gate_sets"
    command = [sys.executable, "-m", module, args.set, "--child", str(partial), "--n", str(args.n)]
    command += ["--samples", str(args.samples), "--budget-s", str(args.budget_s)]
    command += ["--start", str(start)]
    done = subprocess.run(command, cwd=ROOT, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        why = (
            f"signal {signal.Signals(-done.returncode).name}"
            if done.returncode < 0
            else f"exit {done.returncode}"
        )
        print(f"{args.set}: generation failed ({why}); nothing written", file=sys.stderr)
        return 1
    if kept:
        partial.write_text(kept + partial.read_text())
    os.replace(partial, target)
    print(summary(target))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("set", choices=["mt-bench", *TASKS])
    parser.add_argument(
        "--good", type=float, default=7.0, help="mt-bench: judge score counted right"
    )
    parser.add_argument("--n", type=int, default=200, help="gemma: questions")
    parser.add_argument("--samples", type=int, default=2, help="gemma: extra samples per question")
    parser.add_argument("--budget-s", type=float, default=290.0, help="gemma: stop after this long")
    parser.add_argument("--resume", action="store_true", help="gemma: append to the file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.set == "mt-bench":
        print(summary(write_rows(mt_bench(args.good), "mt_bench.jsonl")))
        return 0
    if args.child is not None:
        generate(args.set, args.n, args.samples, args.budget_s, args.child, args.start)
        return 0
    return run_child(args)


if __name__ == "__main__":
    sys.exit(main())
