#!/usr/bin/env bash
# Fill .whl/ with what scripts/device-check.sh installs on a borrowed NVIDIA machine.
#
# That machine has no network. Its python3 (3.12) already holds torch+CUDA, transformers,
# onnx, onnxscript, onnxruntime (CPU), pluggy, pandas, rich, psutil, tabulate and pyyaml,
# but not hydra-core, omegaconf, antlr4 or jsonschema (with its deps). So, here, with PyPI:
#
#   * this project as a wheel: it gives the installed layout (harness.backends -> backends/,
#     harness.scenarios, harness.conf) and the `harness` entry points that load the
#     built-in plugins; device-check.sh copies the current sources over it, so only a
#     change of pyproject.toml's packages or entry points needs a rebuild (it checks);
#   * the missing packages, pinned to constraints.txt, as py3.12 manylinux wheels;
#   * antlr4-python3-runtime, which PyPI ships as an sdist only: built here (pure Python).
#
# Usage: scripts/build-device-wheels.sh      (PY=<python with pip, wheel, setuptools>)
# .whl/ is git-ignored; pass it to the device run with carry=[".whl"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}
OUT=.whl
# Packages the device's python3 lacks (see the device tool's KINDS.md package list).
MISSING=(hydra-core omegaconf jsonschema jsonschema-specifications referencing rpds-py)

pin() {  # NAME -> NAME==VERSION from constraints.txt (case- and -/_-insensitive)
    local name=$1 line
    line=$(grep -i -E "^${name//-/[-_]}==" constraints.txt | head -1) || true
    [[ -n $line ]] || { echo "build-device-wheels: $name is not pinned in constraints.txt" >&2; exit 2; }
    echo "$line"
}

rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" .
"$PY" -m pip wheel -q --no-deps -w "$OUT" "$(pin antlr4-python3-runtime)"
specs=()
for name in "${MISSING[@]}"; do specs+=("$(pin "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${specs[@]}"
ls -1 "$OUT"
du -sh "$OUT"
