#!/usr/bin/env bash
# One GPU node: a vLLM server (OpenAI-compatible, on loopback) and a local_quality worker that
# feeds it, the worker sized to the server's max_num_seqs. Run from the repository root with the
# fleet's environment (TIERFLOW_BROKER_URL, TIERFLOW_DATABASE_URL, TIERFLOW_CONFIG, ...) set.
#
#   MODEL=meta-llama/Meta-Llama-3-70B-Instruct MAX_NUM_SEQS=512 TP=4 infra/gpu/node.sh
#
# The worker starts once vLLM answers /health (the model load takes minutes). SIGTERM (systemd
# stop, Ctrl-C) stops the worker first with Celery's warm shutdown (its calls finish, its
# prefetched messages go back to the queue), then vLLM.
set -euo pipefail
MODEL=${MODEL:?set MODEL to the weights vLLM should serve}
PORT=${PORT:-8000}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-512}
TP=${TP:-1}
GPU_UTIL=${GPU_UTIL:-0.90}
PY=${PY:-.venv/bin/python}

python3 -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --max-num-seqs "$MAX_NUM_SEQS" --tensor-parallel-size "$TP" \
  --gpu-memory-utilization "$GPU_UTIL" &
VLLM=$!
trap 'kill -TERM ${WORKER:-} 2>/dev/null; wait ${WORKER:-} 2>/dev/null; kill -TERM $VLLM; wait $VLLM' EXIT INT TERM

until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
  kill -0 $VLLM 2>/dev/null || { echo "vLLM exited during start-up" >&2; exit 1; }
  sleep 5
done
echo "vLLM ready on 127.0.0.1:$PORT (max_num_seqs $MAX_NUM_SEQS)"

# one worker thread per sequence the server batches; the model entry for this node in
# llm_config.yaml has base_url http://127.0.0.1:$PORT/v1 and limits.max_concurrency $MAX_NUM_SEQS
TIERFLOW_LOCAL_QUALITY_CONCURRENCY=$MAX_NUM_SEQS TIERFLOW_VLLM_URL="http://127.0.0.1:$PORT/v1" \
  "$PY" -m tierflow.cli worker --tier local_quality &
WORKER=$!
wait $WORKER
