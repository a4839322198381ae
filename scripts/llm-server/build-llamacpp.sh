#!/usr/bin/env bash
# Unpack llama.cpp as vendored in the llama-cpp-python source package (the same version the
# Python bindings are built from) and build its OpenAI-compatible `llama-server` and
# `llama-bench` from it, plus the GGUF converter (convert_hf_to_gguf.py, conversion/, gguf-py/).
# Everything lands in $HARNESS_LLAMACPP_HOME (default ~/.cache/harness-llamacpp/<version>);
# a complete home is reused, so only the first run on a machine compiles (minutes on 2 cores).
#   PY=.venv/bin/python scripts/llm-server/build-llamacpp.sh
set -euo pipefail
PY="${PY:-.venv/bin/python}"
VERSION="$("$PY" -c 'from harness.serving.gguf import LLAMACPP_VERSION as v; print(v)')"
HOME_DIR="$("$PY" -c 'from harness.serving.gguf import llamacpp_home; print(llamacpp_home())')"

if [ -x "$HOME_DIR/bin/llama-server" ] && [ -x "$HOME_DIR/bin/llama-bench" ] && [ -f "$HOME_DIR/src/convert_hf_to_gguf.py" ]; then
  echo "llama.cpp $VERSION tools: already built in $HOME_DIR" >&2
  exit 0
fi
command -v cmake >/dev/null && command -v g++ >/dev/null || {
  echo "build-llamacpp: cmake and g++ are needed (apt-get install cmake g++)" >&2; exit 2; }

start=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The source package, by the ordinary client (pip's HTTP cache keeps it for the next time).
"$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"

# Static binaries (no shared-library paths to set at run time); -march=native like the wheel.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF >"$work/cmake.log" 2>&1 \
  || { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server llama-bench -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }

staging="$HOME_DIR.tmp.$$"
mkdir -p "$staging/bin" "$staging/src/models"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-bench" "$staging/bin/"
cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$staging/src/"   # the converter writes with its own gguf-py
cp -r "$src/models/templates" "$staging/src/models/"
rm -rf "$HOME_DIR"
mkdir -p "$(dirname "$HOME_DIR")"
mv "$staging" "$HOME_DIR"
echo "llama.cpp $VERSION tools built in $(( $(date +%s) - start )) s into $HOME_DIR" >&2
