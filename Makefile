# The two commands of the README. Both create ./.venv and install the project on first use.
#   make train   - the main job: REINFORCE on the embedded model, VADER reward (textenv train --agent reinforce)
#   make test    - the test suite (CI runs this through .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: train test bench install clean

# torch first, pinned to the CPU build that lies on this machine's disk, so that pip never pulls a
# multi-GB CUDA build to satisfy the `torch` dependency of the project.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,lora,plot,serve]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/textenv train --agent reinforce $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/rollout.py
	$(BIN)/python benchmarks/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
