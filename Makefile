# The two commands a new user needs: `make demo` and `make test`. Both create the virtual
# environment and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo demo-shop demo-data test lint screenshots bench bench-quick bench-abuse bench-grpc clean

$(BIN)/.installed: pyproject.toml setup.py src/laneway/router/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# The demo: request routing through the shop, then data and message isolation (the ledger).
demo: demo-shop demo-data

demo-shop: venv
	$(BIN)/python examples/demo.py

demo-data: venv
	$(BIN)/python examples/demo_data.py

lint: venv
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Four workers, each test going to whichever is free (worksteal): most e2e tests wait on
# processes and sockets, so the suite takes about 6 minutes here instead of 13 serially.
test: lint
	$(BIN)/pytest -n 4 --dist worksteal

# The UI's screenshots under docs/ (the README shows them), taken by its browser test.
screenshots: venv
	LANEWAY_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/e2e/test_ui.py -k previews

bench: venv
	$(BIN)/python bench/run.py

# Under a minute: the router against HAProxy (1k keyed and unkeyed), ratios in the same run.
# Run it before committing a change to the router.
bench-quick: venv
	$(BIN)/python bench/quick.py

# Group 7 alone: the router under abuse (memory and limits), next to HAProxy.
bench-abuse: venv
	BENCH_GROUPS=7 $(BIN)/python bench/run.py

# Group 8 alone: gRPC (unary, server streaming, bidi) through the router, direct and HAProxy h2c.
bench-grpc: venv
	BENCH_GROUPS=8 $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/*/.laneway examples/*/.data
