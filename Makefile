# daq-search: `make demo` installs and runs the main job on the bundled `scenes` data (embedded Ray); `make test` installs and
# runs the test suite; `make bench` runs the benchmark (writes bench/results/), `make bench-shipped` the shipped search (the default, finalists) on one regime; `make gpu-check` checks one GPU.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUNS ?= runs
GPU_CHECK_OUT ?= $(RUNS)/gpu-check

.PHONY: install lint demo test test-fast bench bench-quick bench-shipped gpu-check clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/daq-search search jobs/demo.yaml --storage $(RUNS)
	$(VENV)/bin/daq-search train $(RUNS)/demo/winner.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

SHIPPED_REGIME ?= scenes32-10pc-ladder-320ep
bench-shipped: $(STAMP)
	$(PY) -m bench.shipped --regime $(SHIPPED_REGIME) --finalists 2

gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(RUNS) build *.egg-info .pytest_cache
