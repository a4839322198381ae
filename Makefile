# Two commands for a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP_FLAGS = --disable-pip-version-check -q
STAMP   = $(VENV)/.installed

# torch_xla 2.9 is built against torch 2.9 exactly: its own venv, its own pins.
XLA_VENV  ?= .venv-xla
XLA_PY     = $(XLA_VENV)/bin/python
XLA_STAMP  = $(XLA_VENV)/.installed

.PHONY: demo test lint test-main test-xla venv venv-xla device-wheels clean

venv: $(STAMP)
venv-xla: $(XLA_STAMP)

# Re-install only when the pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt examples/harness-plugin-example/pyproject.toml
	@test -x $(PY) || (command -v $(PYTHON) >/dev/null && $(PYTHON) -m venv $(VENV)) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt --upgrade pip setuptools wheel
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[openvino,llm,tensorboard,parquet,test,lint,slurm,sweep,tune,serving,llamacpp]'
	# llama.cpp's server, llama-bench and GGUF converter from the same sources as the bindings (cached per machine).
	PY=$(PY) scripts/llm-server/build-llamacpp.sh
	# The example third-party plugin, installed the way a vendor's package would be.
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e examples/harness-plugin-example
	@touch $(STAMP)

$(XLA_STAMP): pyproject.toml constraints-xla.txt
	@test -x $(XLA_PY) || (command -v $(PYTHON) >/dev/null && $(PYTHON) -m venv $(XLA_VENV)) || python3 -m venv $(XLA_VENV)
	$(XLA_PY) -m pip install $(PIP_FLAGS) -c constraints-xla.txt --upgrade pip setuptools wheel
	$(XLA_PY) -m pip install $(PIP_FLAGS) -c constraints-xla.txt torch_xla -e '.[test]'
	@touch $(XLA_STAMP)

# The embedded default run, then the comparison report of everything in results/.
demo: $(STAMP)
	$(VENV)/bin/harness
	$(VENV)/bin/harness-report results --out reports

# Everything: lint and types, the main suite, then the torch_xla tests in their own venv on CPU PJRT.
test: lint test-main test-xla

# ruff (lint, and the formatting `ruff format` writes) and mypy, as configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-main: $(STAMP)
	$(PY) -m pytest -m "not xla"

test-xla: $(XLA_STAMP)
	PJRT_DEVICE=CPU $(XLA_PY) -m pytest -m xla tests/test_xla.py tests/test_conformance.py

# Wheels for a borrowed GPU machine (see docs/accelerators.md and scripts/device-check.sh).
device-wheels: $(STAMP)
	PY=$(PY) scripts/build-device-wheels.sh

clean:
	rm -rf $(VENV) $(XLA_VENV) .whl build *.egg-info
