"""Fair shares of a tier (:mod:`router.fairshare`) against a real Redis, under their own prefix.

Each test offers attempt payloads and frees slots by hand, the way ``enqueue_attempt`` and the
end of ``run_attempt`` do, and checks which attempts are admitted and in what order.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from router.dispatch import attempt_payload
from router.fairshare import FairShare, contended, job_daemon, tier_capacity
from tests.support import services
from tierflow.core.config import parse_config
from tierflow.core.constants import Keys, Tier
from tierflow.core.errors import ConfigError

pytestmark = pytest.mark.integration
FAST = Tier.LOCAL_FAST


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    if not services.port_open("127.0.0.1", 6379):
        services.skip_unless_ci("no Redis at 127.0.0.1:6379")
    c = redis.Redis.from_url(services.REDIS_URL)
    yield c
    c.close()


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[Keys]:
    prefix = f"tffair-{uuid.uuid4().hex[:10]}"
    yield Keys(prefix)
    services.delete_prefix(prefix)


def config(cap: int | None, daemons: dict[str, Any] | None = None) -> Any:
    limits = {"limits": {"max_concurrency": cap}} if cap else {}
    raw = services.fleet_config(local_fast=[services.fake_model("fast", **limits)])
    if daemons is not None:
        raw["daemons"] = daemons
    return parse_config(raw)


class Lines:
    """Offer and release like the fleet does; remembers which jobs were sent."""

    def __init__(self, share: FairShare) -> None:
        self.share = share
        self.sent: list[dict[str, Any]] = []

    def offer(self, daemon: str | None, priority: int = 5, job: str | None = None) -> str:
        job = job or uuid.uuid4().hex
        payload = attempt_payload(job, FAST, 0, 0, 0, priority, 0, "extract_topic", daemon)
        self.sent += self.share.offer(FAST, daemon, payload["m"], payload, priority)
        return job

    def release_one(self) -> dict[str, Any]:
        done = self.sent.pop(0)
        self.sent += self.share.release(FAST, done["m"])
        return done


def test_capacity_is_the_sum_of_model_caps_and_uncapped_tiers_admit_freely() -> None:
    raw = services.fleet_config(
        local_fast=[
            services.fake_model("a", limits={"max_concurrency": 3}),
            services.fake_model("b", limits={"max_concurrency": 2}),
        ]
    )
    assert tier_capacity(parse_config(raw), FAST) == 5
    assert tier_capacity(config(None), FAST) is None
    # A tier whose models are all disabled has nothing to share: its attempts are skipped at
    # once, never left waiting for a slot that cannot free (a 0-slot tier hung them).
    idle = services.fleet_config(
        local_fast=[services.fake_model("off", enabled=False, limits={"max_concurrency": 3})]
    )
    assert tier_capacity(parse_config(idle), FAST) is None
    assert not contended(parse_config(idle), FAST)
    assert not contended(config(None), FAST)
    assert contended(config(None, {"a": {"max_in_flight": 2}}), FAST)
    assert contended(config(4), FAST)
    off = services.fleet_config(
        local_fast=[services.fake_model("fast", limits={"max_concurrency": 4})]
    )
    off["fair_share"] = False
    assert not contended(parse_config(off), FAST)
    assert job_daemon({"daemon": "a"}) == "a" and job_daemon({"daemon": ""}) is None
    assert job_daemon({"daemon": 3}) is None and job_daemon(None) is None


def test_bad_daemon_settings_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="weight"):
        config(4, {"a": {"weight": 0}})
    with pytest.raises(ConfigError, match="max_in_flight"):
        config(4, {"a": {"max_in_flight": 0}})
    with pytest.raises(ConfigError, match="names"):
        config(4, {" a": {}})
    with pytest.raises(ConfigError, match="burst"):
        config(4, {"a": {"burst": 3}})
    raw = services.fleet_config()
    raw.update(fair_share=False, daemons={"a": {"weight": 2}})
    with pytest.raises(ConfigError, match="fair_share"):
        parse_config(raw)


def test_a_daemon_alone_gets_every_slot_and_the_next_as_each_frees(
    client: redis.Redis, keys: Keys
) -> None:
    lines = Lines(FairShare(client, keys, config(4), 60))
    jobs = [lines.offer("A") for _ in range(10)]
    assert [p["j"] for p in lines.sent] == jobs[:4]
    lines.release_one()
    assert [p["j"] for p in lines.sent] == jobs[1:5]
    loads = lines.share.loads(FAST)
    assert loads["A"].running == 4 and loads["A"].waiting == 5 and loads["A"].served == 5


def test_a_burst_waits_behind_its_own_jobs_not_in_front_of_another_daemon(
    client: redis.Redis, keys: Keys
) -> None:
    lines = Lines(FairShare(client, keys, config(2), 60))
    for _ in range(50):
        lines.offer("A")
    b = lines.offer("B")
    assert all(p["d"] == "A" for p in lines.sent)  # the tier was full
    lines.release_one()
    assert lines.sent[-1]["j"] == b  # B's first job takes the first freed slot


def test_weights_share_a_contended_tier_three_to_one(client: redis.Redis, keys: Keys) -> None:
    share = FairShare(client, keys, config(1, {"A": {"weight": 3}, "B": {"weight": 1}}), 60)
    lines = Lines(share)
    for _ in range(100):
        lines.offer("A")
        lines.offer("B")
    served = Counter(lines.release_one()["d"] for _ in range(80))
    assert abs(served["A"] / served["B"] - 3.0) <= 0.3, served


def test_a_capped_daemon_never_exceeds_its_cap_and_withholds_nothing_from_others(
    client: redis.Redis, keys: Keys
) -> None:
    lines = Lines(FairShare(client, keys, config(4, {"C": {"max_in_flight": 1}}), 60))
    for _ in range(3):
        lines.offer("C")
    assert [p["d"] for p in lines.sent] == ["C"]  # two slots free, C at its cap
    lines.offer("D")
    lines.offer("D")
    assert sorted(p["d"] for p in lines.sent) == ["C", "D", "D"]
    lines.release_one()  # C's run ends: its next job takes the slot
    assert sorted(p["d"] for p in lines.sent) == ["C", "D", "D"]
    assert lines.share.loads(FAST)["C"].running == 1


def test_priority_orders_jobs_within_a_daemon(client: redis.Redis, keys: Keys) -> None:
    lines = Lines(FairShare(client, keys, config(1), 60))
    lines.offer("A")
    low = lines.offer("A", priority=2)
    high = lines.offer("A", priority=8)
    lines.release_one()
    assert lines.sent[-1]["j"] == high
    lines.release_one()
    assert lines.sent[-1]["j"] == low


def test_a_resend_keeps_its_place_and_an_admitted_one_is_sent_again(
    client: redis.Redis, keys: Keys
) -> None:
    lines = Lines(FairShare(client, keys, config(1), 60))
    first = lines.offer("A")
    second = lines.offer("A")
    third = lines.offer("A")
    lines.offer("A", job=second)  # a resend while it waits: no second copy, same place
    assert lines.share.loads(FAST)["A"].waiting == 2
    lines.offer("A", job=first)  # a resend of the admitted one: sent again on its slot
    assert [p["j"] for p in lines.sent] == [first, first]
    assert lines.share.loads(FAST)["A"].running == 1
    lines.sent.pop()
    lines.release_one()
    lines.release_one()
    assert [p["j"] for p in lines.sent] == [third]


def test_the_slot_of_a_dead_holder_expires_and_the_next_job_is_admitted(
    client: redis.Redis, keys: Keys
) -> None:
    share = FairShare(client, keys, config(1), slot_ttl_s=0.2)
    lines = Lines(share)
    lines.offer("A")
    waiting = lines.offer("B")
    assert share.release(FAST, None) == []
    time.sleep(0.3)
    assert [p["j"] for p in share.release(FAST, None)] == [waiting]


def test_batch_lines_yield_to_every_daemon(client: redis.Redis, keys: Keys) -> None:
    lines = Lines(FairShare(client, keys, config(1), 60))
    lines.offer("A")
    batch = [lines.offer("A", priority=1) for _ in range(3)]
    interactive = lines.offer("B")
    lines.release_one()
    assert lines.sent[-1]["j"] == interactive
    lines.release_one()
    assert lines.sent[-1]["j"] == batch[0]  # nothing else waits: the batch is not held back


def test_metrics_show_each_daemons_share_of_a_contended_tier(
    config_file: Any, monkeypatch: pytest.MonkeyPatch, client: redis.Redis, keys: Keys
) -> None:
    from tierflow.app.metrics import share_gauges
    from tierflow.core.settings import get_settings

    monkeypatch.setenv("TIERFLOW_KEY_PREFIX", keys.prefix)
    raw = services.fleet_config(
        local_fast=[services.fake_model("fast", limits={"max_concurrency": 2})]
    )
    config_file(raw)
    lines = Lines(FairShare(client, keys, get_settings().llm, 60))
    for _ in range(3):
        lines.offer("A")
    lines.offer("B")
    running, waiting = share_gauges(get_settings().llm)
    assert {(s.labels["daemon"], s.value) for s in running.samples} == {("A", 2), ("B", 0)}
    assert {(s.labels["daemon"], s.value) for s in waiting.samples} == {("A", 1), ("B", 1)}
    assert {s.labels["tier"] for s in running.samples} == {"local_fast"}
