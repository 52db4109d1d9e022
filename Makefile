# Two commands on a fresh Debian machine:
#   make demo   installs what is missing, starts the local stack and runs a live failover
#   make test   installs what is missing, then lint, types and every test (also `make docker`)
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps system-deps venv lint types unit integration docker test demo bench clean

system-deps:
	@./scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

deps: system-deps venv

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

types: venv
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -m "not integration and not docker" -q $(PYTEST_ARGS)

integration: deps
	$(PY) -m pytest -m integration -q $(PYTEST_ARGS)

# The compose stack and the sidecar image on a private dockerd (root; skipped, saying why, where
# no engine can run). Stand-in images are cached in /var/cache/sentinel-haproxy-tests.
docker: deps
	$(PY) -m pytest -m docker -q $(PYTEST_ARGS)

# pytest exits 5 when it collects nothing: treated as a failure (make stops on it).
test: deps lint types
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: deps
	$(PY) -m controller demo

bench: deps
	$(PY) bench/reconcile_scale.py
	$(PY) bench/daemon_rss.py
	$(PY) bench/event_to_applied.py
	$(PY) bench/hot_path.py
	$(PY) bench/failover_latency.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
