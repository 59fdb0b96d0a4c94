# Two set-up commands for a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU machines: constraints pin the local CPU torch wheel (the package itself never pins torch).
CONSTRAINTS ?= constraints-cpu.txt
PYTEST_ARGS ?=
# e.g. make bench-full BENCH_ARGS="--skip train --extra query='--lance-max-n 100000'" (benchmarks/run.py --help)
BENCH_ARGS ?=

.PHONY: demo test test-all bench bench-full clean venv

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/ctglip demo --out demo-output

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,bench]"
	$(PY) benchmarks/run.py --quick $(BENCH_ARGS)

bench-full: $(VENV)/.installed
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,bench]"
	$(PY) benchmarks/run.py --full $(BENCH_ARGS)
	$(PY) benchmarks/plots.py --results bench-output --out docs/img

clean:
	rm -rf $(VENV) build dist *.egg-info demo-output

# GPU machines: swap faiss-cpu for faiss-gpu (both own the same `faiss/` folder, so never install both).
.PHONY: faiss-gpu faiss-cpu
faiss-gpu: $(VENV)/.installed
	$(PY) -m pip uninstall --quiet -y faiss-cpu faiss-gpu
	$(PY) -m pip install --quiet "faiss-gpu>=1.8"
	$(PY) -c "import faiss; print('faiss', faiss.__version__, 'gpus:', faiss.get_num_gpus())"

faiss-cpu: $(VENV)/.installed
	$(PY) -m pip uninstall --quiet -y faiss-cpu faiss-gpu
	$(PY) -m pip install --quiet "faiss-cpu>=1.8"
