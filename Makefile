# Two commands for a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
PIP_FLAGS = --disable-pip-version-check -q -c constraints.txt
STAMP   = $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# Re-install only when the pins or the project metadata change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || (command -v $(PYTHON) >/dev/null && $(PYTHON) -m venv $(VENV)) || python3 -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(PIP) install $(PIP_FLAGS) -e '.[openvino,tensorboard,parquet,test]'
	@touch $(STAMP)

# The embedded default run, then the comparison report of everything in results/.
demo: $(STAMP)
	$(VENV)/bin/harness
	$(VENV)/bin/harness-report results --out reports

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
