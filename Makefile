# The two commands a newcomer types (README): `make demo` and `make test`.
# Each creates or reuses the virtual environment .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; GPU users install their CUDA torch into .venv first (README)
TORCH ?= torch==2.13.0
DEMO_DIR ?= data/demo
DEMO_ROWS ?= 250000

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,serve]"
	touch $@

demo: install
	$(VENV)/bin/alray demo --out $(DEMO_DIR) --rows $(DEMO_ROWS)

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
