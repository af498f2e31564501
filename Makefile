# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use. Without CUDA the CPU build of torch is installed first,
# so pip never pulls the multi-GB CUDA wheel; with CUDA, torch comes from the normal dependency.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_CPU := torch==2.13.0
OUT ?= runs/demo

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "$(TORCH_CPU)" || \
	  $(PY) -m pip install -q "$(TORCH_CPU)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -q -e ".[hf,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/olmo-flex demo --out $(OUT)

LINTED := olmo_flex_ext tests bench train_configs launch

test: lint
	$(PY) -m pytest -q -x tests

lint: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs
