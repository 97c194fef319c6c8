# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reuse it afterwards (the stamp files track installs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo

.PHONY: demo test e2e notebook accelerator lint clean-venv

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/osteo-jax demo --out $(DEMO_OUT)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

# SIGKILL-and-resume of the real CLI and other slower end-to-end tests (a few minutes); CI runs it.
e2e: $(VENV)/.installed-test
	$(PY) -m pytest -q -m e2e

# Executes colab/demo.ipynb top to bottom on CPU (a small pipeline, a few minutes); CI runs it.
notebook: $(VENV)/.installed-test
	$(PY) -m pytest -q -m notebook tests/test_notebook.py

# vmap == scan, bf16 vs float32, 1 device vs all, on whatever devices exist (CPU in CI, about
# 2 CPU-minutes); experiments/device_check.sh runs it on a GPU after installing the [cuda12] extra.
accelerator: $(VENV)/.installed-test
	$(PY) -m pytest -q -m accelerator tests/test_accelerator.py

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check osteo_jax tests experiments
	$(VENV)/bin/ruff format --check osteo_jax tests experiments

clean-venv:
	rm -rf $(VENV)
