# The two front doors: `make run` serves the API on embedded defaults, `make test` runs every test.
# Both create .venv from the lock file on first use (uv is fetched from PyPI when not installed).

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced-$(shell cat uv.lock pyproject.toml | cksum | cut -d' ' -f1)

export HOKUSAI_DATA_DIR ?= $(CURDIR)/.hokusai
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format migrate bench clean

run: $(STAMP)
	$(VENV)/bin/hokusai-registry serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app cli.py hokusai_client tests benchmarks
	$(VENV)/bin/hadolint Dockerfile

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The benchmark suite (minutes): prints every figure and rewrites docs/performance.md.
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run_all.py $(BENCH_ARGS)

migrate: $(STAMP)
	$(VENV)/bin/hokusai-registry migrate

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	rm -f $(VENV)/.synced-*
	touch $@

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)
