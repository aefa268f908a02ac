"""The semantic cache's embedding model, really loaded: all-MiniLM-L6-v2 from its PyPI package,
run by tierflow's numpy forward (no torch).

The three pairs of sentence-transformers' own similarity example come out as its documentation
prints them for this model (0.8939, 0.2838, -0.0327), which checks the forward end to end; the
other pairs are the cache's cases: paraphrases above the default threshold, different questions
below it. ``-s`` prints every similarity measured and the time per prompt.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tierflow.core.config import CachingConfig
from workers.embeddings import DIMENSIONS, MAX_TOKENS, embedder

THRESHOLD = CachingConfig().semantic_threshold

REFERENCE = [  # sentence-transformers' STS example with all-MiniLM-L6-v2
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
]
PARAPHRASES = [
    ("How do I reset my password?", "What's the way to reset my password?"),
    ("Classify this memory: I prefer tea over coffee",
     "Classify this memory: I like tea more than coffee"),
    ("Extract the topic: Implemented async caching in the gateway",
     "Extract the topic: Added asynchronous caching to the gateway"),
]  # fmt: skip
DIFFERENT = [
    ("How do I reset my password?", "The cat sat on the mat"),
    ("Classify this memory: I prefer tea over coffee", "Classify this memory: buy milk tomorrow"),
    ("Extract the topic: Implemented async caching in the gateway",
     "Extract the topic: Fixed a typo in the README"),
    ("Summarize: the deploy failed because the disk was full",
     "Summarize: the deploy succeeded after the disk was cleaned"),
    ("What is 17 + 25?", "What is 17 + 26?"),
]  # fmt: skip


def cosine(a: str, b: str) -> float:
    vectors = embedder().encode([a, b])
    return float(vectors[0] @ vectors[1])


def test_reference_similarities_match_sentence_transformers() -> None:
    for a, b, expected in REFERENCE:
        measured = cosine(a, b)
        print(f"reference {measured:+.4f} (published {expected:+.4f})  {a!r} ~ {b!r}")
        assert measured == pytest.approx(expected, abs=2e-3)


def test_paraphrases_clear_the_threshold_and_different_questions_do_not() -> None:
    paraphrase = [cosine(a, b) for a, b in PARAPHRASES]
    different = [cosine(a, b) for a, b in DIFFERENT]
    for (a, b), score in zip(PARAPHRASES + DIFFERENT, paraphrase + different, strict=True):
        print(f"{score:.4f}  {a!r} ~ {b!r}")
    assert min(paraphrase) >= THRESHOLD, paraphrase
    assert max(different) < THRESHOLD, different
    # each paraphrase is closer to its pair than to any unrelated sentence of the same prompt
    assert cosine(*PARAPHRASES[0]) > 0.9 > 0.2 > cosine(*DIFFERENT[0])


def test_vectors_are_unit_length_and_batching_changes_nothing() -> None:
    texts = ["short", "a somewhat longer sentence about resetting passwords", "x " * 40]
    together = embedder().encode(texts)
    alone = np.vstack([embedder().encode([t]) for t in texts])
    assert together.shape == (3, DIMENSIONS) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-5)  # padding is masked out


def test_long_texts_are_said_not_to_fit() -> None:
    model = embedder()
    assert model.fits("How do I reset my password?")
    long = "word " * (MAX_TOKENS + 10)
    assert not model.fits(long) and model.token_count(long) > MAX_TOKENS


def test_latency_per_prompt() -> None:
    model = embedder()
    model.encode(["warm up"])
    started = time.perf_counter()
    for i in range(10):
        model.encode([f"How do I reset my password, take {i}?"])
    per_prompt_ms = (time.perf_counter() - started) / 10 * 1000
    print(f"embedding latency: {per_prompt_ms:.1f} ms per short prompt")
    assert per_prompt_ms < 2000  # a loose bound: shared CI machines are slow and noisy
