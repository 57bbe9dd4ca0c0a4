# pwattr: two commands. `make demo` runs the main job on the bundled data; `make test` is what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3
NBWORKERS ?= 2
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test sync nbtest pytest readme export clean browser

$(VENV)/.installed: setup.py settings.ini
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pwattr audit --out runs/demo --methods tracin,trak,trak-block,logra,ekfac

export: install
	env -u IN_TEST $(BIN)/nbdev_export
	$(PY) tools/render_readme.py

readme: install
	$(PY) tools/render_readme.py

sync: install
	$(PY) tools/check_sync.py

nbtest: install
	env -u IN_TEST $(BIN)/nbdev_test --n_workers $(NBWORKERS) --timing

pytest: install
	$(PY) -m pytest -q tests

test: sync nbtest pytest

browser: install
	tools/install_browser.sh

clean:
	rm -rf $(VENV) build dist *.egg-info runs
