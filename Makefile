# The two commands: `make run` (the app on embedded defaults) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run worker test install lint format clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

# Web server on :8000 and a real Celery worker (with embedded beat), SQLite + filesystem broker.
run: $(STAMP)
	scripts/run_dev.sh

# Only the worker (with beat), for running the web server elsewhere.
worker: $(STAMP)
	$(VENV)/bin/celery -A mskdetect worker -B -Q inference,celery --concurrency 1 --loglevel INFO

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .

clean:
	rm -rf var .pytest_cache
