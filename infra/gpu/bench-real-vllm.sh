#!/usr/bin/env bash
# The saturation benchmark (tests/bench/bench_gpu.py) against a REAL vLLM server on this GPU
# machine instead of the simulated one: a direct asyncio client, then one local_quality worker,
# same concurrency, same window. Needs PostgreSQL and Redis on loopback as the tests do.
#
#   MODEL=Qwen/Qwen2.5-0.5B-Instruct infra/gpu/bench-real-vllm.sh [extra bench_gpu.py options]
#
# Starts vLLM on 127.0.0.1:$PORT with --max-num-seqs $SLOTS unless a server already answers
# there (then MODEL must name what it serves), and stops what it started.
set -euo pipefail
MODEL=${MODEL:?set MODEL to the weights vLLM should serve}
PORT=${PORT:-8000}
SLOTS=${SLOTS:-1024}
CONCURRENCY=${CONCURRENCY:-640}
PY=${PY:-.venv/bin/python}
STARTED=
if ! curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
  python3 -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 127.0.0.1 \
    --port "$PORT" --max-num-seqs "$SLOTS" --gpu-memory-utilization "${GPU_UTIL:-0.90}" \
    > "${TMPDIR:-/tmp}/vllm-bench.log" 2>&1 &
  STARTED=$!
  trap 'kill -TERM $STARTED; wait $STARTED' EXIT
  until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
    kill -0 $STARTED 2>/dev/null || { tail -50 "${TMPDIR:-/tmp}/vllm-bench.log"; exit 1; }
    sleep 3
  done
fi
"$PY" tests/bench/bench_gpu.py --url "http://127.0.0.1:$PORT/v1" --model "$MODEL" \
  --slots "$SLOTS" --concurrency "$CONCURRENCY" "$@"
