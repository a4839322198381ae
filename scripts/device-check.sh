#!/usr/bin/env bash
# device-check.sh: reference records from a borrowed NVIDIA GPU machine, offline, in ~5 minutes.
#
#   scripts/device-check.sh [--label NAME] [--budget SECONDS] [--archive FILE.tgz] [--wheels DIR]
#   scripts/device-check.sh --dry-run      # check for a GPU and the wheels, print the plan
#   scripts/device-check.sh --setup-only   # install + import checks, then `harness-backends`
#
# What it runs, most important first, each with its own timeout inside one time budget
# (default 300 s; a run that no longer fits is skipped and listed): pytorch on CUDA at
# fp32, bf16 and fp16, with torch.compile, the bert_train scenario with bf16 AMP, then
# tf32, CUDA graphs, fp16 AMP training, a CPU baseline on the same machine, and TensorRT
# when its wheel is there. Records land in results/reference/<label>/ with
# hardware.label=<label> (default: the GPU's name, e.g. nvidia-h200); it ends with
# harness-report over results/reference/, i.e. beside every other machine's records.
#
# It installs nothing from the network. Where the harness is not installed (the borrowed
# machine's plain python3), it installs the wheels in .whl/ into a target folder with
# `pip install --no-index --no-deps --target` and copies the current sources over the
# harness wheel, so the code run is this checkout's. Prepare .whl/ here first with
# scripts/build-device-wheels.sh (see docs/accelerators.md), then carry .whl along.
#
# Exit status: 0 when every run that was attempted ended ok (or unavailable/unsupported
# for the optional TensorRT runs), 1 when one failed, timed out or mismatched, 2 for bad
# arguments or a broken setup, 3 when no GPU is visible (not in --dry-run).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$PWD

PY=${PYTHON:-python3}
SITE=${DEVICE_CHECK_SITE:-/tmp/site}
WHEEL_DIR=$REPO/.whl
BUDGET=${DEVICE_CHECK_BUDGET_S:-300}
MODE=run
LABEL=""
ARCHIVE=""
# Wheels the device's python3 lacks (scripts/build-device-wheels.sh builds exactly these).
WHEELS=(harness hydra_core omegaconf antlr4_python3_runtime jsonschema jsonschema_specifications referencing rpds_py)

usage() { sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//'; }
say() { printf '· %s\n' "$*"; }
fail() { printf 'device-check: error: %s\n' "$1" >&2; exit "${2:-2}"; }

while (($#)); do
    case $1 in
        --dry-run) MODE=dry ;;
        --setup-only) MODE=setup ;;
        --label) LABEL=${2:-}; shift ;;
        --label=*) LABEL=${1#*=} ;;
        --budget) BUDGET=${2:-}; shift ;;
        --budget=*) BUDGET=${1#*=} ;;
        --archive) ARCHIVE=${2:-}; shift ;;
        --archive=*) ARCHIVE=${1#*=} ;;
        --wheels) WHEEL_DIR=${2:-}; shift ;;
        --wheels=*) WHEEL_DIR=${1#*=} ;;
        --site) SITE=${2:-}; shift ;;
        --site=*) SITE=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; fail "unknown argument '$1'" ;;
    esac
    shift
done
[[ $BUDGET =~ ^[0-9]+$ ]] || fail "--budget needs whole seconds, got '$BUDGET'"
[[ -z $LABEL || $LABEL =~ ^[A-Za-z0-9._-]+$ ]] || fail "--label may hold letters, digits, '.', '_' and '-' only, got '$LABEL'"

# --- the GPU and the label ------------------------------------------------------------

gpu_name() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1
        return
    fi
    "$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null
}

slug() { tr '[:upper:]' '[:lower:]' <<<"$1" | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//'; }

GPU=$(gpu_name || true)
if [[ -z $GPU ]]; then
    case $MODE in
        run) fail "no NVIDIA GPU visible (nvidia-smi and torch.cuda find none): run this on the GPU machine, or use --dry-run" 3 ;;
        *) say "GPU: none visible here (a real run would stop with exit 3)" ;;
    esac
else
    say "GPU: $GPU"
fi
[[ -n $LABEL ]] || LABEL=$(slug "${GPU:-no-gpu}")
RESULTS=$REPO/results/reference/$LABEL
REPORT_DIR=$REPO/reports/device-check-$LABEL
say "label: $LABEL -> ${RESULTS#"$REPO"/}"

# --- the harness: installed, or from the carried wheels --------------------------------

wheel_files() { compgen -G "$WHEEL_DIR/*.whl" || true; }

check_wheels() {  # says what the wheel folder lacks; the import check below is the real gate
    local name missing=()
    for name in "${WHEELS[@]}"; do
        compgen -G "$WHEEL_DIR/${name}-*.whl" >/dev/null || missing+=("$name")
    done
    if ((${#missing[@]})); then
        say "wheels: $WHEEL_DIR lacks ${missing[*]} (fine where python3 has them; else run scripts/build-device-wheels.sh)"
        return 1
    fi
    say "wheels: $WHEEL_DIR has all of ${WHEELS[*]}"
}

harness_installed() {
    "$PY" -c 'import sys
from importlib.metadata import entry_points
sys.exit(0 if any(e.name == "pytorch" for e in entry_points(group="harness")) else 1)' 2>/dev/null
}

install_from_wheels() {
    local files
    mapfile -t files < <(wheel_files)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${files[@]}" \
        || fail "pip could not install .whl/*.whl into $SITE"
    # The wheel gives the installed layout and the entry points; the code is this checkout's.
    local dest=$SITE/harness
    if ! { cp -R harness/. "$dest/" && cp -R backends/. "$dest/backends/" && cp -R scenarios/. "$dest/scenarios/" \
        && cp -R conf/. "$dest/conf/"; }; then
        fail "could not copy the sources over $dest"
    fi
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    # Entry points come from the wheel's metadata: name plugins it predates explicitly.
    local extra
    extra=$("$PY" - <<'PYCODE'
import tomllib
from importlib.metadata import entry_points
wanted = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]["harness"]
have = {e.name: e.value for e in entry_points(group="harness")}
print(",".join(v for k, v in wanted.items() if have.get(k) != v))
PYCODE
    ) || fail "could not read pyproject.toml's entry points"
    if [[ -n $extra ]]; then
        say "the harness wheel predates pyproject.toml's entry points; loading $extra through HARNESS_PLUGINS (rebuild .whl to silence this)"
        export HARNESS_PLUGINS=$extra${HARNESS_PLUGINS:+,$HARNESS_PLUGINS}
    fi
}

setup() {
    if [[ -n $(wheel_files) ]]; then
        compgen -G "$WHEEL_DIR/harness-*.whl" >/dev/null || fail "$WHEEL_DIR has no harness wheel (scripts/build-device-wheels.sh builds it)"
        check_wheels || true
        install_from_wheels
        say "harness: from $WHEEL_DIR into $SITE, sources from this checkout"
    elif harness_installed; then
        say "harness: installed in $PY's environment"
    else
        fail "the harness is not installed for $PY and $WHEEL_DIR holds no wheel: run scripts/build-device-wheels.sh where PyPI is reachable and carry .whl"
    fi
    (cd "$RUNDIR" && "$PY" -) <<'PYCODE' || fail "imports failed (see above): add the missing wheels to $WHEEL_DIR (scripts/build-device-wheels.sh)"
import importlib, sys
missing = []
for name in ("torch", "transformers", "onnx", "onnxscript", "hydra", "omegaconf", "jsonschema", "pluggy",
             "pandas", "rich", "psutil", "tabulate", "harness.cli", "harness.backends.pytorch"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    print("missing: " + "; ".join(missing), file=sys.stderr)
    sys.exit(1)
import harness, torch, transformers
print(f"· python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, harness from {harness.__file__}")
PYCODE
}

# --- the plan -----------------------------------------------------------------------------

INFER="+scenario=bert_fp32 backend=pytorch_cuda scenario.warmup_iters=10 scenario.min_iters=50 scenario.min_duration_s=3 scenario.max_duration_s=20"
TRAIN="+scenario=bert_train backend=pytorch_cuda scenario.max_steps=150 scenario.eval_interval=50"
COMMON="results_dir=$RESULTS hardware.label=$LABEL"
# name|timeout seconds|required (1) or optional (0)|overrides, most important first.
PLAN=(
    "cuda-fp32|90|1|$INFER"
    "cuda-bf16|60|1|$INFER scenario.precision=bf16"
    "cuda-fp16|60|1|$INFER scenario.precision=fp16"
    "cuda-compile|150|1|$INFER backend.compile=true"
    "train-bf16|120|1|$TRAIN scenario.precision=bf16"
    "cuda-tf32|60|1|$INFER scenario.precision=tf32"
    "cuda-graphs|60|1|$INFER backend.cuda_graphs=true"
    "train-fp16|120|1|$TRAIN scenario.precision=fp16"
    "cpu-fp32|90|1|+scenario=bert_fp32 backend=pytorch scenario.min_duration_s=3 scenario.max_duration_s=20"
)
if "$PY" -c 'import tensorrt' >/dev/null 2>&1; then
    PLAN+=("trt-fp32|150|0|+scenario=bert_fp32 backend=tensorrt" "trt-fp16|150|0|+scenario=bert_fp32 backend=tensorrt scenario.precision=fp16")
else
    say "tensorrt: not importable by $PY, so no TensorRT runs"
fi
BASELINE="backend=pytorch,device=cpu,precision=fp32"
REPORT_ARGS=("$REPO/results/reference" --out "$REPORT_DIR/report" --baseline "$BASELINE" --format "md,csv")

if [[ $MODE == dry ]]; then
    check_wheels || true
    say "dry run: nothing installed, nothing run; budget ${BUDGET} s"
    for entry in "${PLAN[@]}"; do
        IFS='|' read -r name seconds required overrides <<<"$entry"
        printf 'PLAN %s %ss :: %s %s\n' "$name" "$seconds" "$overrides" "$COMMON"
    done
    printf 'REPORT :: %s -m harness.report.cli %s\n' "$PY" "${REPORT_ARGS[*]}"
    exit 0
fi

RUNDIR=$(mktemp -d)  # python runs start here, so no ./harness folder shadows the installed package
setup
if [[ $MODE == setup ]]; then
    (cd "$RUNDIR" && "$PY" -m harness.backends_cli) || fail "harness-backends failed"
    exit 0
fi
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || fail "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) sees no CUDA device" 3

# --- the runs -----------------------------------------------------------------------------

export HF_HUB_OFFLINE=1 HARNESS_CACHE=${HARNESS_CACHE:-/tmp/harness-cache} PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" "$REPORT_DIR/logs"
STARTED=$SECONDS
declare -a SUMMARY=()
WORST=0

status_of() {
    case $1 in
        0) echo ok ;; 3) echo unavailable ;; 4) echo unsupported ;; 5) echo mismatch ;;
        124 | 137) echo timeout ;; *) echo "failed (exit $1)" ;;
    esac
}

for entry in "${PLAN[@]}"; do
    IFS='|' read -r name seconds required overrides <<<"$entry"
    left=$((BUDGET - (SECONDS - STARTED)))
    if ((left < 20)); then
        SUMMARY+=("$name: skipped (time budget spent)")
        continue
    fi
    ((seconds > left)) && seconds=$left
    say "run $name (timeout ${seconds} s, ${left} s of budget left)"
    # shellcheck disable=SC2086  # overrides are space-separated key=value words
    (cd "$RUNDIR" && timeout --kill-after=10 "$seconds" "$PY" -m harness.cli $overrides $COMMON) >"$REPORT_DIR/logs/$name.log" 2>&1
    rc=$?
    result=$(status_of "$rc")
    SUMMARY+=("$name: $result")
    if ((rc != 0)); then
        tail -n 5 "$REPORT_DIR/logs/$name.log" | sed 's/^/    /'
        if [[ $required == 1 || $rc -ne 3 && $rc -ne 4 ]]; then WORST=1; fi
    fi
done
# TensorBoard event files are logs, not records: keep them out of the committed folder.
[[ -d $RESULTS/tensorboard ]] && rm -rf "$REPORT_DIR/logs/tensorboard" && mv "$RESULTS/tensorboard" "$REPORT_DIR/logs/"

say "report over results/reference (every machine's records)"
(cd "$RUNDIR" && "$PY" -m harness.report.cli "${REPORT_ARGS[@]}") >"$REPORT_DIR/logs/report.log" 2>&1 \
    || { tail -n 5 "$REPORT_DIR/logs/report.log"; WORST=1; }
cat "$REPORT_DIR/logs/report.log"

printf '\ndevice-check on %s (%s), %d s:\n' "$GPU" "$LABEL" $((SECONDS - STARTED))
printf '  %s\n' "${SUMMARY[@]}"
if [[ -n $ARCHIVE ]]; then
    tar -czf "$ARCHIVE" -C "$REPO" "results/reference/$LABEL" "reports/device-check-$LABEL" \
        && say "archive: $ARCHIVE (unpack in the repo root: tar xzf $(basename "$ARCHIVE"))"
fi
exit "$WORST"
