# Plexus: `make run` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
UV_VERSION := 0.13.9
SDK_VENVS := .venv-sdk/dify-client .venv-sdk/dify-client-python

.PHONY: install run test test-unit test-integration test-e2e bench lint lock chart clean topology

install: $(VENV)/.installed $(SDK_VENVS:%=%/.installed)

$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || (echo "Python >= 3.11 required" && exit 1)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install -q --python $(PY) -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@touch $@

# The two Dify SDKs install the same module name, so each gets its own virtualenv (used by tests/e2e).
.venv-sdk/%/.installed: tests/sdk/%.lock $(VENV)/.installed
	$(PYTHON) -m venv .venv-sdk/$*
	$(UV) pip install -q --python .venv-sdk/$*/bin/python -r tests/sdk/$*.lock
	@touch $@

run: $(VENV)/.installed
	$(VENV)/bin/plexus run

# One pytest-xdist worker per core, handed whole modules (a module's shared stack starts once); each
# worker has its own nats-server, temp dirs and Postgres database (tests/conftest.py).
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadscope

test-unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q tests/unit

test-integration: $(VENV)/.installed
	$(VENV)/bin/pytest -q tests/integration

test-e2e: install
	$(VENV)/bin/pytest -q tests/e2e

bench: $(VENV)/.installed
	$(PY) -m bench.run_all

# Split mode on one machine: every service its own process (needs Postgres and Redis; see docs/topology.md).
topology: $(VENV)/.installed
	$(PY) -m tests.topology

# Render the Helm chart in both modes, lint it and validate every manifest offline (tests/deploy).
chart: $(VENV)/.installed
	$(VENV)/bin/pytest -q tests/deploy

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check shared services tests bench

# Re-resolve exact pins (litellm stays exactly as the offline notes say: see pyproject.toml).
lock: $(VENV)/.installed
	$(UV) pip compile pyproject.toml --extra dev --python 3.11 -q -o requirements.lock
	$(UV) pip compile tests/sdk/dify-client.in --python 3.11 -q -o tests/sdk/dify-client.lock
	$(UV) pip compile tests/sdk/dify-client-python.in --python 3.11 -q -o tests/sdk/dify-client-python.lock

clean:
	rm -rf $(VENV) .venv-sdk .pytest_cache
