# The two commands of the README: `make run` serves, `make test` proves.  Each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
WORKERS ?= 2

.PHONY: run test test-quick test-fast lint lock bench clean

# tests/test_admin.py renders the admin page in Debian's headless chromium (CI fails, not skips, without it).
# Installed once when missing (we run as root on Debian); quiet, and a no-op when it is already there.
CHROMIUM := /usr/bin/chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies or their lock change.
$(VENV)/.installed: pyproject.toml requirements/dev.lock | $(BIN)/python
	$(BIN)/pip install --quiet --constraint requirements/dev.lock -e ".[dev]"
	touch $@

# Record the versions installed now as the lock (after changing the dependencies in pyproject.toml).
lock: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	{ head -n 2 requirements/dev.lock; $(BIN)/pip freeze --exclude-editable; } > requirements/dev.lock.new
	mv requirements/dev.lock.new requirements/dev.lock

run: $(VENV)/.installed
	$(BIN)/syncnotify up --port $(PORT) --workers $(WORKERS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two processes (pytest-xdist); the minutes-long Graph lifetimes test is handed out first and runs beside the rest.
test: lint | $(CHROMIUM)
	$(BIN)/python -m pytest -n 2 --dist load

$(CHROMIUM):
	@echo "installing chromium (apt-get) for tests/test_admin.py"
	@log=$$(mktemp) && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends chromium fonts-liberation; } >$$log 2>&1 || { cat $$log; rm -f $$log; exit 1; }; rm -f $$log

# While iterating: skip the long soak and fault runs (CI runs them).
test-quick: lint
	$(BIN)/python -m pytest -m "not slow"

# The module tests alone (no real processes): about a minute.
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not system"

# Performance figures next to their baselines (bench/RESULTS.md); BENCH_ARGS=--quick for a smaller run.
bench: $(VENV)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
