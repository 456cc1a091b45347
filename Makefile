# Kairos: `make run` (demo backends + gateway on config.json) and `make test` (everything).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: test run lint format system-deps bench-deps venv bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the suite uses: a real redis-server and Chromium for the dashboard tests.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) system-deps lint
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

run: $(STAMP)
	@echo "demo backends on 9001-9003, gateway on http://127.0.0.1:5900, admin on http://127.0.0.1:5901,"
	@echo "dashboard on http://127.0.0.1:5902 (Ctrl-C stops all)"
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' INT TERM EXIT; \
	$(BIN)/python examples/demo_backends.py & \
	sleep 1; \
	$(BIN)/kairos-gateway config.json & \
	sleep 1; \
	$(BIN)/kairos-ui --gateway http://127.0.0.1:5901 --port 5902 & \
	wait

# Debian packages the benchmarks use: wrk, and nginx (the backend and the reference proxy).
bench-deps:
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The comparison (about 5 minutes on 2 cores); see BENCHMARKS.md. Options: BENCH_ARGS=...
BENCH_ARGS ?= --idle-connections 10000 --swaps 20
bench: $(STAMP) bench-deps
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Ten minutes of mixed traffic through one gateway, a line per minute. Options: SOAK_ARGS=...
SOAK_ARGS ?= --minutes 10
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
