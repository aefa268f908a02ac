"""Fleet limits (:mod:`workers.limits`) against a real Redis, under a key prefix of their own.

Windows, cooldowns and circuit periods are shortened (``window_s``, ``open_for_s``,
``slot_ttl_s``) so the sliding and the expiries are seen within a second or two.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
import redis

from tests.support import services
from tierflow.core.config import ModelConfig
from tierflow.core.constants import Keys
from workers.limits import FleetLimits

pytestmark = pytest.mark.integration


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    if not services.port_open("127.0.0.1", 6379):
        services.skip_unless_ci("no Redis at 127.0.0.1:6379")
    c = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    p = f"tflimits-{uuid.uuid4().hex[:10]}"
    yield p
    services.delete_prefix(p)


def model(**limits: Any) -> ModelConfig:
    return ModelConfig(
        name=f"m-{uuid.uuid4().hex[:6]}",
        provider="fake",
        model_id="fake",
        max_tokens=100,
        limits=limits,
    )


def make(client: redis.Redis, prefix: str, **kwargs: Any) -> FleetLimits:
    return FleetLimits(client, Keys(prefix), **kwargs)


# -- rate limits ---------------------------------------------------------------------------


def test_rpm_refuses_over_limit_and_reports_the_wait(client: redis.Redis, prefix: str) -> None:
    lim = make(client, prefix, window_s=1.0)
    m = model(requests_per_minute=3)
    started = time.monotonic()
    granted = [lim.reserve(m, 10, 10) for _ in range(3)]
    assert all(r.granted for r in granted)
    refused = lim.reserve(m, 10, 10)
    assert not refused.granted and not refused.impossible
    # the oldest request leaves the 1 s window first: the wait is what is left of it
    elapsed = time.monotonic() - started
    assert 0 < refused.wait_s <= 1.0 - elapsed + 0.05
    assert not lim.reserve(m, 10, 10).granted  # refusals take nothing
    time.sleep(refused.wait_s + 0.05)
    assert lim.reserve(m, 10, 10).granted  # room again once the announced wait is over


def test_window_slides_rather_than_resetting(client: redis.Redis, prefix: str) -> None:
    lim = make(client, prefix, window_s=1.0)
    m = model(requests_per_minute=2)
    assert lim.reserve(m, 1, 1).granted
    time.sleep(0.6)
    assert lim.reserve(m, 1, 1).granted
    first_leaves = lim.reserve(m, 1, 1)
    assert not first_leaves.granted
    assert first_leaves.wait_s <= 0.45  # only the first request must age out
    time.sleep(first_leaves.wait_s + 0.02)
    assert lim.reserve(m, 1, 1).granted
    assert not lim.reserve(m, 1, 1).granted  # the second one is still inside the window


def test_tpm_counts_tokens_and_a_request_alone_over_the_limit_is_impossible(
    client: redis.Redis, prefix: str
) -> None:
    lim = make(client, prefix, window_s=1.0)
    m = model(input_tokens_per_minute=100, output_tokens_per_minute=1000)
    assert lim.reserve(m, 60, 10).granted
    over = lim.reserve(m, 50, 10)  # 60 + 50 > 100
    assert not over.granted and over.wait_s > 0
    assert lim.reserve(m, 40, 10).granted  # exactly at the limit
    alone = lim.reserve(m, 101, 10)
    assert alone.impossible and not alone.granted
    # refused reservations took nothing: output tokens so far are 10 + 10
    used = sum(
        int(member.rsplit("|", 1)[1])
        for member in client.zrange(Keys(prefix).rate(f"{m.name}:out"), 0, -1)
    )
    assert used == 20


def test_settle_replaces_reserved_output_tokens_by_real_usage(
    client: redis.Redis, prefix: str
) -> None:
    lim = make(client, prefix, window_s=5.0)
    m = model(output_tokens_per_minute=250)
    first = lim.reserve(m, 10, 100)  # reserved at max_tokens
    second = lim.reserve(m, 10, 100)
    assert first.granted and second.granted
    assert not lim.reserve(m, 10, 100).granted  # 300 > 250 while reserved
    lim.settle(m, first, 10, 20)  # the answer used 20 tokens, not 100
    assert lim.reserve(m, 10, 100).granted  # 20 + 100 + 100 <= 250
    lim.settle(m, second, 10, 0)  # a failed call used no output
    members = client.zrange(Keys(prefix).rate(f"{m.name}:out"), 0, -1)
    assert sorted(int(x.rsplit("|", 1)[1]) for x in members) == [20, 100]


def test_unlimited_model_is_always_granted(client: redis.Redis, prefix: str) -> None:
    lim = make(client, prefix)
    m = model()
    assert all(lim.reserve(m, 10_000, 10_000).granted for _ in range(50))
    assert not list(client.scan_iter(f"{prefix}:*"))  # nothing stored for it


# -- cooldowns and the circuit breaker -------------------------------------------------------


def test_cooldown_blocks_then_expires_and_is_never_shortened(
    client: redis.Redis, prefix: str
) -> None:
    lim = make(client, prefix)
    m = model()
    assert lim.blocked(m) is None
    lim.cool_down(m, 0.8)
    reason, seconds = lim.blocked(m) or ("", 0.0)
    assert "cooling down" in reason and 0.5 < seconds <= 0.8
    lim.cool_down(m, 0.1)  # e.g. a 5xx after the provider's retry-after: must not cut it short
    still = lim.blocked(m)
    assert still is not None and still[1] > 0.5
    time.sleep(0.85)
    assert lim.blocked(m) is None


def test_circuit_opens_after_n_failures_half_open_one_probe_success_closes(
    client: redis.Redis, prefix: str
) -> None:
    worker_a = make(client, prefix, failure_threshold=3, open_for_s=0.5)
    worker_b = make(client, prefix, failure_threshold=3, open_for_s=0.5)
    m = model()
    assert worker_a.record_failure(m) is False
    assert worker_b.record_failure(m) is False
    assert worker_a.blocked(m) is None  # two failures: still closed
    assert worker_b.record_failure(m) is True  # the third opens it
    reason, _ = worker_a.blocked(m) or ("", 0.0)
    assert reason.startswith("circuit open")
    time.sleep(0.55)
    # half-open: exactly one caller gets the probe, fleet-wide
    answers = [lim.blocked(m) for lim in (worker_a, worker_b, worker_a, worker_b)]
    assert answers[0] is None
    assert all(a is not None and "half-open" in a[0] for a in answers[1:])
    worker_a.record_success(m)  # the probe succeeded: closed for everyone
    assert worker_b.blocked(m) is None and worker_a.blocked(m) is None
    assert worker_a.record_failure(m) is False  # the failure count starts again


def test_failed_probe_reopens_and_unused_probe_is_given_back(
    client: redis.Redis, prefix: str
) -> None:
    a = make(client, prefix, failure_threshold=2, open_for_s=0.4)
    b = make(client, prefix, failure_threshold=2, open_for_s=0.4)
    m = model()
    a.record_failure(m)
    a.record_failure(m)
    time.sleep(0.45)
    assert a.blocked(m) is None  # a holds the probe
    assert a.record_failure(m) is True  # the probe failed: open again at once
    assert (b.blocked(m) or ("",))[0].startswith("circuit open")
    time.sleep(0.45)
    assert b.blocked(m) is None  # b holds the probe now
    assert a.blocked(m) is not None
    a.release_probe(m)  # a holds none: must not free b's
    assert a.blocked(m) is not None
    b.release_probe(m)  # b did not call after all (e.g. its rate limit refused)
    assert a.blocked(m) is None  # the next caller gets the probe


def test_many_workers_racing_for_the_half_open_probe_get_exactly_one(
    client: redis.Redis, prefix: str
) -> None:
    m = model()
    opener = make(client, prefix, failure_threshold=1, open_for_s=0.3)
    opener.record_failure(m)
    time.sleep(0.35)
    barrier = threading.Barrier(16)

    def race(_: int) -> bool:
        lim = make(client, prefix, failure_threshold=1, open_for_s=0.3)
        barrier.wait()
        return lim.blocked(m) is None

    with ThreadPoolExecutor(16) as pool:
        allowed = list(pool.map(race, range(16)))
    assert sum(allowed) == 1


def test_a_healthy_read_is_taken_for_a_while_and_forgotten_when_this_process_records(
    client: redis.Redis, prefix: str
) -> None:
    """A process takes "healthy" for ``health_fresh_s`` (no Redis read per call); a circuit
    another process opened is seen once that ends, one this process opened at once."""
    other_process = redis.Redis.from_url(services.REDIS_URL)  # its own client: its own view
    try:
        here = make(client, prefix, failure_threshold=1, open_for_s=5.0, health_fresh_s=1.0)
        there = make(other_process, prefix, failure_threshold=1, open_for_s=5.0)
        m, mine, uncached = model(), model(), model()
        assert here.blocked(m) is None  # read: healthy, taken for 1 s
        assert there.record_failure(m) is True  # another process opens the circuit
        assert here.blocked(m) is None  # not read again yet: the documented staleness
        time.sleep(1.05)
        assert (here.blocked(m) or ("",))[0].startswith("circuit open")

        assert here.blocked(mine) is None
        assert here.record_failure(mine) is True  # recorded here: forgotten at once
        assert (here.blocked(mine) or ("",))[0].startswith("circuit open")

        never = make(client, prefix, failure_threshold=1, open_for_s=5.0, health_fresh_s=0)
        assert never.blocked(uncached) is None
        assert there.record_failure(uncached) is True
        assert (never.blocked(uncached) or ("",))[0].startswith("circuit open")
    finally:
        other_process.close()


# -- concurrency caps ------------------------------------------------------------------------


def test_concurrency_cap_and_release(client: redis.Redis, prefix: str) -> None:
    lim = make(client, prefix)
    m = model(max_concurrency=2)
    one, two = lim.take_slot(m), lim.take_slot(m)
    assert one and two
    assert lim.take_slot(m) is None
    lim.release_slot(m, one)
    assert lim.take_slot(m) is not None
    uncapped = model()
    assert all(lim.take_slot(uncapped) for _ in range(20))


def test_slots_of_dead_holders_expire(client: redis.Redis, prefix: str) -> None:
    dead = make(client, prefix, slot_ttl_s=0.5)
    m = model(max_concurrency=2)
    assert dead.take_slot(m) and dead.take_slot(m)  # taken, then the holder "dies"
    alive = make(client, prefix, slot_ttl_s=0.5)
    assert alive.take_slot(m) is None
    time.sleep(0.55)
    assert alive.take_slot(m) is not None


# -- atomicity under contention ---------------------------------------------------------------


def _reserve_many(args: tuple[str, dict[str, Any], int]) -> int:
    """In another process: reserve ``n`` times, return how many were granted."""
    prefix, model_fields, n = args
    client = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    lim = FleetLimits(client, Keys(prefix), window_s=30.0)
    m = ModelConfig(**model_fields)
    granted = sum(1 for _ in range(n) if lim.reserve(m, 7, 13).granted)
    client.close()
    return granted


def test_concurrent_threads_and_processes_never_exceed_the_limits(
    client: redis.Redis, prefix: str
) -> None:
    m = model(requests_per_minute=40, input_tokens_per_minute=7 * 35, max_concurrency=5)
    # processes: 4 x 25 attempts against 40 requests / 245 input tokens (35 requests)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        granted_p = sum(pool.map(_reserve_many, [(prefix, m.model_dump(), 25)] * 4))
    # threads on top: nothing more may be granted in the same window
    lim = make(client, prefix, window_s=30.0)
    barrier = threading.Barrier(12)

    def reserve(_: int) -> bool:
        barrier.wait()
        return lim.reserve(m, 7, 13).granted

    with ThreadPoolExecutor(12) as pool:
        granted_t = sum(pool.map(reserve, range(12)))
    assert granted_p == 35  # the input-token budget is the tighter limit
    assert granted_t == 0

    # concurrency slots: 24 threads, cap 5; count holders at every moment
    holding = 0
    peak = 0
    lock = threading.Lock()
    got = 0
    start = threading.Barrier(24)

    def hold(_: int) -> None:
        nonlocal holding, peak, got
        start.wait()
        for _ in range(20):
            token = lim.take_slot(m)
            if token is None:
                continue
            with lock:
                holding += 1
                got += 1
                peak = max(peak, holding)
            time.sleep(0.001)
            with lock:
                holding -= 1
            lim.release_slot(m, token)

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(hold, range(24)))
    print(
        f"\nreserve: {granted_p} granted of 100 by 4 processes, {granted_t} of 12 by threads "
        f"(limit 35); slots: {got} taken, peak {peak} (cap 5)"
    )
    assert 0 < peak <= 5 and got > 5
