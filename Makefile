# roomchat: `make run` starts the server, `make test` runs everything CI runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run test test-unit lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

## run: start the server on its defaults (settings: ROOMCHAT_* variables or ARGS="--port 9000").
## Ctrl-C stops roomchat (status 0) and make with it (make's status: 130, interrupted).
run: $(RUN_STAMP)
	@$(BIN)/python roomchat.py $(ARGS)

## test: the whole suite, as CI runs it
test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-unit: $(DEV_STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

## bench: roomchat against the asyncio reference, Socket.IO, Flask-SocketIO and Bun (installed on
## demand into bench/.peers/; left out, saying why, without node/npm), same run, one table with ratios.
## The C load generator is built with gcc into bench/.build/. ARGS="--scenarios S1,S2 --profile" etc.
bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
