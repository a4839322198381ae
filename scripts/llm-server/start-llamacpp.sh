#!/usr/bin/env bash
# Start llama.cpp's OpenAI-compatible server (llama-server) on 127.0.0.1, on a free port, serving
# a GGUF the harness made from one of its models (or --gguf FILE), and wait until it is healthy.
# Prints `export HARNESS_LLAMACPP_URL=http://127.0.0.1:PORT/v1` (eval it); the pid and the port go
# to $HARNESS_LLAMACPP_RUN (default /tmp/harness-llamacpp-$UID) for stop-llamacpp.sh.
#   eval "$(scripts/llm-server/start-llamacpp.sh --model llama_tiny --precision fp16 --parallel 4)"
#   harness +scenario=llm_serve backend=openai backend.base_url=$HARNESS_LLAMACPP_URL model=llama_tiny
# Arguments after `--` go to llama-server as they are (e.g. `-- --no-cache-prompt`).
set -euo pipefail
PY="${PY:-.venv/bin/python}"
RUN_DIR="${HARNESS_LLAMACPP_RUN:-/tmp/harness-llamacpp-$(id -u)}"
model=llama_tiny precision=fp16 parallel=4 ctx=4096 gguf="" threads=0 timeout=300 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    --model) model="$2"; shift 2 ;;
    --precision) precision="$2"; shift 2 ;;
    --gguf) gguf="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --ctx) ctx="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    *) echo "start-llamacpp: unknown argument '$1' (--model NAME --precision P --gguf FILE --parallel N --ctx N --threads N --timeout S -- SERVER-ARGS)" >&2; exit 2 ;;
  esac
done

server="$("$PY" -c 'from harness.serving.gguf import tool; print(tool("llama-server") or "")')"
if [ -z "$server" ]; then
  echo "start-llamacpp: llama-server is not built (fix: scripts/llm-server/build-llamacpp.sh, which make venv runs)" >&2
  exit 3
fi
if [ -f "$RUN_DIR/pid" ] && kill -0 "$(cat "$RUN_DIR/pid")" 2>/dev/null; then
  echo "start-llamacpp: a server started by this script is running (pid $(cat "$RUN_DIR/pid")); stop it with stop-llamacpp.sh" >&2
  exit 1
fi
[ -n "$gguf" ] || gguf="$("$PY" -m harness.serving.gguf --model "$model" --precision "$precision")"
[ "$threads" != 0 ] || threads="$(nproc)"

# A free loopback port: the kernel picks one, we hand it to the server.
port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
mkdir -p "$RUN_DIR"
# --parallel slots share the context: continuous batching of up to that many requests.
nohup "$server" -m "$gguf" --host 127.0.0.1 --port "$port" --parallel "$parallel" --ctx-size "$ctx" \
  --threads "$threads" --threads-batch "$threads" --no-webui ${extra[@]+"${extra[@]}"} >"$RUN_DIR/server.log" 2>&1 &
pid=$!
echo "$pid" >"$RUN_DIR/pid"
echo "$port" >"$RUN_DIR/port"

deadline=$(( $(date +%s) + timeout ))
until "$PY" - "$port" <<'PYEOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PYEOF
do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-llamacpp: llama-server exited; its log: $RUN_DIR/server.log" >&2; tail -5 "$RUN_DIR/server.log" >&2
    rm -f "$RUN_DIR/pid" "$RUN_DIR/port"; exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "start-llamacpp: not healthy after ${timeout}s; stopping it (log: $RUN_DIR/server.log)" >&2
    kill "$pid" 2>/dev/null || true; rm -f "$RUN_DIR/pid" "$RUN_DIR/port"; exit 1
  fi
  sleep 0.5
done
echo "$gguf" >"$RUN_DIR/gguf"
echo "llama-server pid $pid on 127.0.0.1:$port serving $gguf ($parallel slots)" >&2
echo "export HARNESS_LLAMACPP_URL=http://127.0.0.1:$port/v1"
