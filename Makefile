# Two entry points do all the set-up on a fresh machine:
#   make sentiment   # the sentiment recipe on the embedded defaults (MODE=probe|finetune|scratch|lora|contrastive)
#   make test        # the test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
MODE ?= finetune
ARGS ?=
# Explicit single-process launch keeps `accelerate launch` from warning about missing config;
# pass LAUNCH="--config_file recipes/accelerate_configs/ddp.yaml" (or your own) for more.
# `accelerate launch` gives each process one thread (OMP_NUM_THREADS=1) unless told: on a CPU the recipe trained on
# one core of two, 1.6x slower. Its one process gets OMP_NUM_THREADS when that is set, else the threads torch
# takes outside a launch (one per core).
THREADS ?= $(or $(OMP_NUM_THREADS),$(shell $(PY) -c "import torch; print(torch.get_num_threads())"))
LAUNCH ?= --num_processes 1 --num_machines 1 --num_cpu_threads_per_process $(THREADS) --mixed_precision no \
	--dynamo_backend no
# Tests run in this many pytest-xdist workers, one OpenMP thread each (tests/conftest.py): one per core, at most 4
# (each can hold a real encoder's run in memory). TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= $(shell python3 -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(min(4, n or 1))")

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Keep a torch that is already there (a GPU user installs theirs first); otherwise take the
	# CPU build that lies on disk, so pip never resolves a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# transformers 4 beside the venv's 5, for the tests only: every export is loaded with it too, as on a machine that
# has not moved to 5 (tests/test_families.py puts it first on PYTHONPATH in the loading process).
TRANSFORMERS4 := $(VENV)/transformers4
$(TRANSFORMERS4)/.installed: | $(VENV)/.installed
	rm -rf $(TRANSFORMERS4)
	$(PY) -m pip install -q --no-deps --target $(TRANSFORMERS4) transformers==4.57.6 tokenizers==0.22.2 \
		huggingface-hub==0.36.2
	touch $@

install: $(VENV)/.installed

sentiment: $(VENV)/.installed
	$(VENV)/bin/accelerate launch $(LAUNCH) recipes/sentiment.py --mode $(MODE) $(ARGS)

test: $(VENV)/.installed $(TRANSFORMERS4)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(ARGS)

.PHONY: install sentiment test
