"""The gateway's Batch API beside ``tierflow batch run``: N lines stored and sent, no worker.

    python tests/bench/bench_gateway_batch.py [--lines 10000]

One run, one scratch database (``tierflow_gwbench_<run>``) and key prefix, the fake config of
the tests, ``TIERFLOW_BATCH_IN_FLIGHT=0`` for both (no worker runs, so a window would never
open). The same N chat requests, one after the other:

- gateway: ``tierflow serve``; the ``openai`` SDK uploads the OpenAI JSONL file
  (``files.create``) and creates the batch (``batches.create``: every line checked), then the
  batch's ``submitted_at`` is polled (every 20 ms): upload, create and submission times, lines/s
  from the upload's start to the last line sent;
- CLI: ``tierflow batch run FILE --in-flight 0`` on the same requests in tierflow's own line
  format (``prompt``, ``action_type``): wall time (its start included) and lines/s, and the
  rate past its start (the batch's creation to its last job's).

Nothing is asserted; the database and the Redis keys are removed at the end. Not collected by
pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from tests.support.services import (  # noqa: E402
    create_database,
    delete_prefix,
    drop_database,
    fleet_config,
    port_open,
    write_config,
)


def environment(db_url: str, prefix: str, config: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TIERFLOW_DATABASE_URL": db_url,
        "TIERFLOW_KEY_PREFIX": prefix,
        "TIERFLOW_CONFIG": str(config),
        "TIERFLOW_BATCH_IN_FLIGHT": "0",
        "PYTHONUNBUFFERED": "1",
    }


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return list(conn.execute(query, params).fetchall())


def bench_gateway(env: dict[str, str], db_url: str, n: int, workdir: Path) -> dict[str, float]:
    import openai

    key = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "keys", "create", "--daemon", "bench"],
        env=env, capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.split()  # fmt: skip
    token = next(word for word in key if word.startswith("tf_"))
    port = 18000 + os.getpid() % 1000
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "serve", "--port", str(port)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        while not port_open("127.0.0.1", port, 0.2):
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token)
        lines = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "tierflow/extract_topic",
                    "messages": [{"role": "user", "content": f"Extract topic from: item {i}"}],
                },
            }
            for i in range(n)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        start = time.perf_counter()
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        uploaded_at = time.perf_counter()
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        created_at = time.perf_counter()
        query = "select submitted_at is not null from gateway_batches where id = %s"
        while not sql(db_url, query, (batch.id,))[0][0]:
            time.sleep(0.02)
        done = time.perf_counter()
        stored = sql(
            db_url,
            "select count(*) from jobs j join batches b on b.id = j.batch_id where b.name = %s",
            (batch.id,),
        )[0][0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {
        "lines": stored,
        "upload_s": uploaded_at - start,
        "create_s": created_at - uploaded_at,
        "submit_s": done - created_at,
        "total_s": done - start,
        "lines_per_s": stored / (done - start),
    }


def bench_cli(env: dict[str, str], db_url: str, n: int, workdir: Path) -> dict[str, float]:
    path = workdir / "cli.jsonl"
    with path.open("w") as out:
        for i in range(n):
            line = {"prompt": f"Extract topic from: item {i}", "action_type": "extract_topic"}
            out.write(json.dumps(line) + "\n")
    name = f"cli-{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "batch", "run", str(path), "--name", name,
         "--in-flight", "0"],
        env=env, cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    stored, span = sql(
        db_url,
        "select count(*), extract(epoch from max(j.created_at) - min(b.created_at)) "
        "from jobs j join batches b on b.id = j.batch_id where b.name = %s",
        (name,),
    )[0]
    return {
        "lines": stored,
        "total_s": wall,
        "lines_per_s": stored / wall,
        "past_start_per_s": stored / float(span),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    db_name, prefix = f"tierflow_gwbench_{run}", f"tfgw-{run}"
    db_url = create_database(db_name)
    workdir = Path(mkdtemp(prefix="tfgw-"))
    config = write_config(fleet_config(), workdir)
    env = environment(db_url, prefix, config)
    try:
        subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "db", "upgrade"],
            env=env, cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        gateway = bench_gateway(env, db_url, args.lines, workdir)
        cli = bench_cli(env, db_url, args.lines, workdir)
    finally:
        drop_database(db_name)
        delete_prefix(prefix)
    print(json.dumps({"lines": args.lines, "gateway": gateway, "cli": cli}, indent=2))


if __name__ == "__main__":
    main()
