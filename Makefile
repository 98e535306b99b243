# Two commands matter (see README): `make demo` and `make test`. Everything else bootstraps itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: demo test test-fast lint typecheck bench bench-quick soak sysdeps clean dist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests use as outside witnesses (mosquitto, openssl) and PostgreSQL.
sysdeps:
	@bash .ci/sysdeps

demo: $(STAMP)
	$(BIN)/edgegate demo $(ARGS)

test: $(STAMP) sysdeps
	bash .ci/with-postgres $(BIN)/pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not integration and not chaos and not hostile" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP) sysdeps
	$(BIN)/python -m bench $(ARGS)

bench-quick: $(STAMP) sysdeps
	$(BIN)/python -m bench --quick $(ARGS)

soak: $(STAMP) sysdeps
	EDGEGATE_SOAK_MINUTES=$${MINUTES:-30} $(BIN)/pytest -m chaos -k soak tests/chaos $(ARGS)

# A wheel and an sdist in dist/ (`pipx install dist/edgegate_mqtt-*.whl` installs the three commands).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf dist $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
