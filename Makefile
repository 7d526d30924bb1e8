# gradscope: set-up, demo and tests on a fresh machine.
#   make demo   set up .venv (torch, gradscope with its compiled op), run `gradscope demo`, write gradscope-demo/
#   make test   set up .venv with the test extras and run the test suite
# The CUDA kernel is compiled whenever nvcc is on PATH (no GPU needed to build it).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CUDA_HOME ?= $(shell tools/cuda_home.sh)
BUILD_ENV := $(if $(CUDA_HOME),CUDA_HOME=$(CUDA_HOME) FORCE_CUDA=1,)
SOURCES := setup.py pyproject.toml $(wildcard csrc/*)

.PHONY: setup setup-test demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch>=2.4" ninja setuptools wheel numpy

$(VENV)/.installed: $(PY) $(SOURCES)
	$(BUILD_ENV) $(PY) -m pip install -q --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(PY) $(SOURCES)
	$(BUILD_ENV) $(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(VENV)/bin/gradscope info
	$(VENV)/bin/gradscope demo --out gradscope-demo --force

test: setup-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info gradscope/*.so gradscope/_build_info.json
