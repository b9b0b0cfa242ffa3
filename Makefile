# One command sets up and runs: `make run` (the default experiment), `make test` (the whole suite, as CI runs it)
# or `make test-fast` (all but the tests marked slow, for the edit-test loop).
# torch==2.13.0 is installed first and on its own: on these machines it is a CPU build already on disk,
# and once it is there, the package's torch>=2.2 pulls nothing more (never a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install run test test-fast lint bench clean

$(STAMP): pyproject.toml setup.py initprobe/_fused.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# tests also need pytest, ruff, ray (the sweep's Ray backend is tested against a real local Ray), transformers
# (--model hf:TYPE is tested on small real models; it depends on torch only, so the torch above stays) and the
# train extra (scikit-learn, whose bundled digits `initprobe train` learns)
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,ray,models,train]"
	touch $(DEV_STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/initprobe run --init glorot_uniform --act tanh --depth 50

test: $(DEV_STAMP)
	$(PY) -m pytest

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check initprobe tests

bench: install
	$(VENV)/bin/initprobe bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
