#!/usr/bin/env bash
# Stop the daemons that start-local-slurm.sh started, by the pid files in its state folder
# ($HARNESS_SLURM_DIR, default /tmp/harness-slurm): slurmd, then slurmctld, then munged.
# Only those pids are signalled, and only while they still run the expected program, so a
# system Slurm or munge on the same machine is left alone. Safe to call twice (a trap can call
# it after the start script already cleaned up).
set -uo pipefail

STATE="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
log() { echo "stop-local-slurm: $*" >&2; }

stop_pid_file() {  # <pid file> <program name>
  local file="$1" name="$2" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file" 2>/dev/null)"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do                     # up to 10 s, then force
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
    log "stopped $name ($pid)"
  fi
  rm -f "$file"
}

# Jobs still on this cluster are cancelled first, so no job step outlives its slurmd.
ctld_pid="$(cat "$STATE/slurmctld.pid" 2>/dev/null || true)"
if [ -n "$ctld_pid" ] && [ "$(cat "/proc/$ctld_pid/comm" 2>/dev/null)" = slurmctld ] && [ -f "$STATE/slurm.conf" ]; then
  export SLURM_CONF="$STATE/slurm.conf"
  mapfile -t jobs < <(squeue -h -o %i 2>/dev/null)
  if [ "${#jobs[@]}" -gt 0 ]; then
    log "cancelling jobs still queued or running: ${jobs[*]}"
    scancel "${jobs[@]}" 2>/dev/null
    for _ in $(seq 1 100); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi

stop_pid_file "$STATE/slurmd.pid" slurmd
stop_pid_file "$STATE/slurmctld.pid" slurmctld
stop_pid_file "$STATE/munged.pid" munged
exit 0
