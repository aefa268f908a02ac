"""API keys never leave the process that uses them: not into PostgreSQL, Redis, logs or results.

Workers get recognisable fake keys and talk to local wire-format servers that fail every call
and echo the presented key in each error body (``leak_key``), the worst case a provider can
produce. Afterwards every text/JSON column of every table, every Redis value under the run's
prefix, the worker logs, the job results and their error messages are searched for the keys.
"""

from __future__ import annotations

import os

import pytest

from router import submit_job
from router.client import get_job
from tests.faults.helpers import Figures, rows, wait_finished
from tests.support.fake_providers import AnthropicServer, OpenAIServer
from tests.support.services import REDIS_URL, fleet_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARK = "SECRETSCAN"
KEYS = {
    "ANTHROPIC_API_KEY": f"sk-ant-{MARK}-1234567890",
    "OPENAI_API_KEY": f"sk-{MARK}-openai-0987654321",
    "LOCAL_VLLM_TOKEN": f"plain{MARK}token42",  # no sk- prefix: only the value is known
}
ERRORS = ["auth", "500", "429:1", "context", "forbidden", "503", "auth", "500"] * 6


def scan_database(database: str) -> dict[str, int]:
    """Rows per table.column whose text contains the marker, over every text/JSON column."""
    columns = rows(
        database,
        """
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = 'public'
          AND data_type IN ('text', 'character varying', 'json', 'jsonb')
        """,
    )
    hits = {}
    for c in columns:
        found = rows(
            database,
            f'SELECT count(*) AS n FROM "{c["table_name"]}" '
            f'WHERE "{c["column_name"]}"::text LIKE :pattern',
            pattern=f"%{MARK}%",
        )[0]["n"]
        if found:
            hits[f"{c['table_name']}.{c['column_name']}"] = found
    assert len(columns) >= 20  # the scan really covered the schema
    return hits


def scan_redis(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    hits = 0
    try:
        for key in client.scan_iter(f"{prefix}:*"):
            kind = client.type(key)
            values: list[bytes] = []
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = list(client.hgetall(key).values())
            elif kind == b"zset":
                values = client.zrange(key, 0, -1)
            hits += sum(1 for v in values if MARK.encode() in v)
    finally:
        client.close()
    return hits


def test_keys_never_reach_storage_logs_or_results(fleet, database) -> None:
    with OpenAIServer() as oai, OpenAIServer() as local, AnthropicServer() as claude:
        for srv in (oai, local, claude):
            srv.leak_key = True
            srv.script(ERRORS)
        config = fleet_config(
            local_fast=[
                {
                    "name": "local-vllm",
                    "provider": "openai_compatible",
                    "model_id": "fake-model",
                    "base_url": local.url,
                    "api_key_env": "LOCAL_VLLM_TOKEN",
                    "timeout_s": 5,
                }
            ],
            api_fallback=[
                {
                    "name": "claude",
                    "provider": "anthropic",
                    "model_id": "claude-fake-1",
                    "base_url": claude.url,
                    "timeout_s": 5,
                    "input_cost_per_million": 3.0,
                    "output_cost_per_million": 15.0,
                },
                {
                    "name": "gpt",
                    "provider": "openai",
                    "model_id": "gpt-fake",
                    "base_url": oai.url,
                    "timeout_s": 5,
                },
            ],
        )
        workers = fleet(config, workers=2, env=KEYS)
        jobs = [
            submit_job(f"Start the secret-scan daemon {i}", "spawn_daemon").job_id for i in range(6)
        ]
        jobs += [
            submit_job(f"Extract topic from: 'scan {i}'", "extract_topic").job_id for i in range(4)
        ]
        status = wait_finished(database, jobs, timeout=60)
        presented = {
            name: sum(1 for c in srv.calls if MARK in str(c.headers))
            for name, srv in (("openai", oai), ("local", local), ("anthropic", claude))
        }
        echoed = sum(1 for srv in (oai, local, claude) for c in srv.calls if c.behaviour != "ok")

    results = [get_job(j).result() for j in jobs]
    result_text = "".join(r.model_dump_json() for r in results)
    logs = "".join(w.output() for w in workers)
    db_hits = scan_database(database)
    redis_hits = scan_redis(os.environ["TIERFLOW_KEY_PREFIX"])

    fig = Figures("secrets", jobs=len(jobs))
    fig.succeeded = sum(1 for s in status.values() if s == "succeeded")
    fig.failed = sum(1 for s in status.values() if s == "failed")
    fig.lost = len(jobs) - fig.succeeded - fig.failed
    fig.faults = {"error_replies_echoing_the_key": echoed, **presented}
    fig.notes.update(
        db_hits=db_hits,
        redis_hits=redis_hits,
        log_hits=logs.count(MARK),
        result_hits=result_text.count(MARK),
    )
    fig.report().assert_clean()
    assert echoed > 0 and all(presented.values())  # the keys were really used and echoed
    assert any(r.error for r in results)  # the failures are explained...
    assert db_hits == {} and redis_hits == 0  # ...without the keys
    assert MARK not in logs
    assert MARK not in result_text
    for value in KEYS.values():
        assert value not in logs and value not in result_text
