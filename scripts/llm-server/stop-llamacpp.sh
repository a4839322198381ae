#!/usr/bin/env bash
# Stop the llama-server that start-llamacpp.sh started (by its recorded pid): SIGTERM, then
# SIGKILL if it has not exited after 10 s. Quiet and successful when none is running.
set -euo pipefail
RUN_DIR="${HARNESS_LLAMACPP_RUN:-/tmp/harness-llamacpp-$(id -u)}"
[ -f "$RUN_DIR/pid" ] || exit 0
pid="$(cat "$RUN_DIR/pid")"
# Only the server we started: a recycled pid belonging to anything else is left alone.
if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q llama-server; then
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  echo "stop-llamacpp: stopped llama-server pid $pid" >&2
fi
rm -f "$RUN_DIR/pid" "$RUN_DIR/port" "$RUN_DIR/gguf"
