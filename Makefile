# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.worldloop/torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: install chromium demo test bench bench-gpu lint clean

install: $(STAMP)

# torch first (the CPU wheel on disk; any other build pulls GBs of CUDA), then the project
# with its dev extra, then DeepSpeed without prebuilt ops, whose one JIT op a run needs (shared-memory
# communication) is built here, under the guard of model/train/ds_ops.py. Re-runs only when pyproject
# changes.
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation 'deepspeed>=0.14'
	$(PY) -c "from worldloop.model.train.ds_ops import load_shm_op; load_shm_op()"
	touch $(STAMP)

# The play page's end-to-end test drives Debian's Chromium through Playwright (no browser download).
# Without root or apt the test skips and says why.
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null)); } || \
		echo "make: /usr/bin/chromium missing and not installable here; the browser test will skip"

demo: install
	$(VENV)/bin/worldloop demo

test: install chromium
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks

# GPU numbers (FP8, SageAttention, 480p rollout, training MFU); on a CUDA machine with `worldloop[gpu]`.
bench-gpu: install
	$(PY) -m benchmarks.bench_gpu --out bench-gpu.json

# mypy cannot follow setuptools' editable finder for the folder -> import-root mapping, so lint
# type-checks a link tree that lays the folders out as the installed ``worldloop`` package.
TYPECHECK := .worldloop/typecheck
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/worldloop
	for f in worldloop/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/worldloop/; done
	for d in model components pipelines serving; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/worldloop/$$d; done
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy -p worldloop

clean:
	rm -rf $(VENV) .worldloop build *.egg-info
