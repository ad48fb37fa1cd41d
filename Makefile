# The two commands a newcomer needs: `make run` (the pipeline) and `make test` (the tests).
# Both create the virtual environment from requirements.lock first if it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Default: the fast tests (unit tests on tiny data, a few minutes). CI passes
# MARKERS="not gpu and not jax" to run the integration, slow and e2e tests too.
MARKERS ?= not integration and not slow and not e2e and not gpu and not jax
PYTEST_ARGS ?=

.PHONY: run test test-jax venv lint clean-venv ui retrain

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(PYTHON) is older than 3.11; install Python 3.11+ or run make PYTHON=python3.11 ..." >&2; exit 2; }
	@# A venv made without ensurepip (Debian's python3-venv missing) has no pip: start over.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

# The MLflow UI on 127.0.0.1 against the project's store (mlflow.tracking_uri in params.yaml).
UI_PORT ?= 5000
ui: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipeline ui --port $(UI_PORT)

# What the scheduled workflow runs: dvc pull (if a remote is set), dvc repro, the
# promotion gate, dvc push. Runs the same way on a laptop.
retrain: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/retrain.sh

test: $(STAMP)
	$(BIN)/python -m pytest -m "$(MARKERS)" $(PYTEST_ARGS)

# The families and the HyperModel under KERAS_BACKEND=jax (the lent GPU machines' backend),
# in a second environment that has JAX and no TensorFlow.
JAX_VENV ?= .venv-jax
$(JAX_VENV)/.installed: requirements-jax.lock
	@$(JAX_VENV)/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf $(JAX_VENV) && $(PYTHON) -m venv $(JAX_VENV); }
	$(JAX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(JAX_VENV)/bin/python -m pip install --quiet -r requirements-jax.lock
	@touch $@

# Only the jax-marked file: the others import Keras with TensorFlow, which this env lacks.
test-jax: $(JAX_VENV)/.installed
	KERAS_BACKEND=jax $(JAX_VENV)/bin/python -m pytest -m jax tests/test_jax_backend.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

clean-venv:
	rm -rf $(VENV)
