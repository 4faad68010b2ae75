# Two commands, set-up included:
#   make quickstart   creates .venv when missing, installs torch==2.13.0 FIRST (the local CPU
#                     wheel; an unpinned torch pulls GBs of CUDA), then the project, then runs
#                     the quick-start screening
#   make test         the same set-up (with the test and dashboard extras), then the tests
# Override the interpreter with `make PYTHON=python3.12 ...`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

export RAY_AUTH_MODE ?= disabled

.PHONY: quickstart test install clean-venv

quickstart: $(STAMP)
	$(BIN)/alrao-tune screen quickstart --output out/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

install: $(STAMP)

# Reinstalled when pyproject.toml changes; `make clean-venv` starts over.
$(STAMP): pyproject.toml
	@# a venv left half-made (no pip: an interrupted creation) is made again
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,dashboard]"
	@touch $@

clean-venv:
	rm -rf $(VENV)
