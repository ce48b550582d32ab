# Set-up and everyday commands. Every target creates .venv/ when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check install clean

install: $(STAMP)

# torch is pinned and installed first. Which build that is depends on the index: a CPU wheel where one is at hand
# (this project's machines keep one on disk); from the public PyPI on Linux x86_64, the CUDA build. For the CPU
# build from the public index: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check swarm tests tools
	$(BIN)/ruff format --check swarm tests tools

typecheck: $(STAMP)
	$(BIN)/mypy swarm

check: lint typecheck test

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
