#!/usr/bin/env bash
# Start a private single-node Slurm cluster on this machine (munged, slurmctld, slurmd),
# so the submitit launcher can be exercised for real: CI, or a laptop before a real cluster.
#
#   eval "$(scripts/slurm/start-local-slurm.sh)"    # prints: export SLURM_CONF=...
#   sinfo                                           # the node is idle
#   scripts/slurm/stop-local-slurm.sh               # stops exactly the daemons started here
#
# Needs root and the Debian packages `slurm-wlm` and `munge` (it installs nothing itself:
# package installation is the caller's business, see .ci/run). Everything it creates lives in
# one state folder ($HARNESS_SLURM_DIR, default /tmp/harness-slurm): slurm.conf, a fresh munge
# key and socket, spool/state folders, logs and pid files. It never touches /etc/slurm,
# /etc/munge or a system munged, so it can run beside a real installation (pick other ports
# with HARNESS_SLURMCTLD_PORT / HARNESS_SLURMD_PORT if 6817/6818 are taken).
#
# The node is declared with the machine's real CPUs and memory (`slurmd -C`); select/cons_tres
# with CR_Core_Memory makes CPUs and memory consumable, so two 1-CPU jobs run side by side on a
# 2-core machine -- exactly the case the harness's host lock (harness/hostlock.py) serialises.
# proctrack/linuxproc and task/none need no cgroups, so it runs inside containers.
set -euo pipefail

STATE="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
PARTITION="${HARNESS_SLURM_PARTITION:-local}"
CTLD_PORT="${HARNESS_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${HARNESS_SLURMD_PORT:-6818}"
WAIT_S="${HARNESS_SLURM_WAIT_S:-90}"

log() { echo "start-local-slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root here) (fix: sudo $0)"
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || die "'$tool' not found (fix: apt-get install -y slurm-wlm munge)"
done
if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
  die "a cluster from $STATE is already running (fix: $(dirname "$0")/stop-local-slurm.sh first)"
fi

started_ms=$(date +%s%3N)
if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] && [ ! -f "$STATE/.harness-slurm" ]; then
  die "$STATE is not empty and was not made by this script (fix: HARNESS_SLURM_DIR=<an empty or new folder>)"
fi
rm -rf "$STATE"
mkdir -p "$STATE"/{munge,munge-private,spool,state,log}
touch "$STATE/.harness-slurm"
# From here on, a failure stops whatever was already started.
trap 'log "failed; stopping what was started"; "$(dirname "$0")/stop-local-slurm.sh" >&2 || true' ERR
chmod 0755 "$STATE" "$STATE/munge"      # any user's sinfo/sbatch reads slurm.conf and the socket
chmod 0700 "$STATE/munge-private"        # the key and the PRNG seed stay root's
HOST="$(hostname -s)"

# --- munge: private key, socket and pid file -------------------------------------------------
dd if=/dev/urandom of="$STATE/munge-private/munge.key" bs=1 count=1024 status=none
chmod 0400 "$STATE/munge-private/munge.key"
SOCKET="$STATE/munge/munge.socket"
munged --force \
  --socket="$SOCKET" --key-file="$STATE/munge-private/munge.key" \
  --pid-file="$STATE/munged.pid" --log-file="$STATE/log/munged.log" \
  --seed-file="$STATE/munge-private/munged.seed"

# --- slurm.conf: one node with the machine's real CPUs and memory -----------------------------
NODE_LINE="$(slurmd -C | head -1)"          # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
[[ "$NODE_LINE" == NodeName=* ]] || die "slurmd -C printed no node line: $NODE_LINE"
NODE_NAME="${NODE_LINE#NodeName=}"; NODE_NAME="${NODE_NAME%% *}"
CPUS="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
MEM_MB="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
cat >"$STATE/slurm.conf" <<EOF
# Written by scripts/slurm/start-local-slurm.sh: a private single-node cluster.
ClusterName=harness
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that names no memory gets the whole node's and blocks every other job.
DefMemPerCPU=$(( MEM_MB / CPUS ))
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
$NODE_LINE State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$STATE/slurm.conf"

# --- daemons: controller first (-c: start from a clean state), then the node ------------------
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

deadline=$(( $(date +%s) + WAIT_S ))
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
until [ "$(sinfo -h -N -n "$NODE_NAME" -o %t 2>/dev/null)" = "idle" ]; do
  dead=""
  alive "$STATE/slurmctld.pid" || dead="slurmctld"
  alive "$STATE/slurmd.pid" || dead="$dead slurmd"
  if [ -n "$dead" ] || [ "$(date +%s)" -ge "$deadline" ]; then
    log "node $NODE_NAME not idle after $(( $(date +%s%3N) - started_ms )) ms${dead:+ ($dead exited)}; last lines of the logs:"
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    false  # the ERR trap stops the daemons
  fi
  sleep 0.5
done
ms=$(( $(date +%s%3N) - started_ms ))
elapsed="$((ms / 1000)).$(printf %03d $((ms % 1000)))"
trap - ERR
log "node $NODE_NAME idle in partition '$PARTITION' after ${elapsed}s (state: $STATE)"
echo "export SLURM_CONF=$SLURM_CONF"
