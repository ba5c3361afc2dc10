# The two commands of the README. Both create ./.venv and install the project on first use.
#   make train   - the main job: REINFORCE on the embedded model, VADER reward (textenv train --agent reinforce)
#   make test    - the test suite (CI runs this through .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: train test bench install clean browser

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

# The real-browser test of `textenv serve` (tests/test_browser.py) drives the system's Chromium; Playwright never
# downloads a browser. Installed once with apt when we may (root), else the test says how.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: tests/test_browser.py needs Chromium (e.g. sudo apt-get install chromium)"; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/rollout.py
	$(BIN)/python benchmarks/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
