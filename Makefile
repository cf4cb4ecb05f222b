# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-api docs servers test test-patroni test-sqlalchemy20 \
	test-sqlalchemy-suite soak bench lint typecheck unit clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("routing_db needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-sqlite
	$(PY) examples/quickstart.py

# The FastAPI example on http://127.0.0.1:8000 (needs ROUTING_DB_WRITER_URL).
demo-api: $(VENV)/.installed-dev
	$(PY) examples/fastapi_app.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check routing_db tests examples benchmarks
	$(VENV)/bin/ruff format --check routing_db tests examples benchmarks

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

# The full suite starts its own throwaway servers; tools/install-servers
# installs the missing ones as root (else their tests are skipped, saying why).
test: servers lint typecheck
	$(PY) -m pytest -m "not patroni" --durations=15

# The Patroni suite (etcd + three members; switchover, killed postmaster, hung
# leader and node under load): minutes of failovers, so a step of its own.
test-patroni: servers $(VENV)/.installed-dev
	$(PY) -m pytest -m patroni -p no:cacheprovider

servers:
	@tools/install-servers

# An extra virtualenv: $(1) its folder, $(2) what pip installs into it.
define extra_venv
$(1)/.installed: pyproject.toml
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet $(2)
	touch $$@
endef

# The suite again on SQLAlchemy 2.0 (routing_db supports >= 2.0.30; `make test`
# gets the newest). CI runs both.
SA20 := .venv-sqlalchemy20
SA20_PACKAGES := -e ".[dev]" "sqlalchemy>=2.0.30,<2.1"
$(eval $(call extra_venv,$(SA20),$(SA20_PACKAGES)))

test-sqlalchemy20: servers $(SA20)/.installed
	$(SA20)/bin/python -m pytest -m "not patroni" -p no:cacheprovider

# The seeded chaos soak for longer: make soak SECONDS=600 SEED=1234 (make test
# runs it for 40 s per driver; the seed is printed either way).
SECONDS ?= 600
SEED ?=
soak: $(VENV)/.installed-dev
	ROUTING_DB_SOAK_SECONDS=$(SECONDS) ROUTING_DB_SOAK_SEED=$(SEED) \
		$(PY) -m pytest tests/test_soak_pg.py -s -p no:cacheprovider

# SQLAlchemy's own test/ext/asyncio suite (from its sdist, on a throwaway
# PostgreSQL), plain and with AsyncSession swapped for RoutingSession: only
# the tests that assert the exact class may differ (tests/sqlalchemy_suite).
test-sqlalchemy-suite: $(VENV)/.installed-dev
	$(PY) -m tests.sqlalchemy_suite

# Benchmarks on a throwaway cluster, written to benchmarks/RESULTS.md (+ PNG).
# SQLAlchemy 2.0 here: the peer compared with (advanced-alchemy) needs it.
BENCH := .venv-bench
BENCH_PACKAGES := -e ".[dev,bench]" "sqlalchemy>=2.0.41,<2.1"
$(eval $(call extra_venv,$(BENCH),$(BENCH_PACKAGES)))

bench: $(BENCH)/.installed
	$(BENCH)/bin/python -m pytest benchmarks -p no:cacheprovider \
		--benchmark-json=benchmarks/results.json --benchmark-columns=min,median,rounds
	$(BENCH)/bin/python -m benchmarks.report benchmarks/results.json

# The documentation site (mkdocs-material, API reference from docstrings)
# into site/; --strict: a broken link or reference fails the build.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d site

# Every test that needs no database server (by rule: see tests/conftest.py).
unit: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not servers and not patroni" -p no:cacheprovider

clean:
	rm -rf $(VENV) $(SA20) $(BENCH) .pytest_cache .mypy_cache .ruff_cache \
		.sqlalchemy-suite
