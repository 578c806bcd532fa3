# Every target creates the virtualenv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install test lint bench serve generate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The built-in models `make test` leaves out: one HTTP request each through Ray Serve, and the
# engine checks of the family variants (about 5 minutes on 2 cores). CI runs it after `make test`.
.PHONY: test-zoo
test-zoo: $(STAMP)
	RAY_DIT_ZOO=rest $(BIN)/python -m pytest -q tests/test_serve_zoo.py tests/test_zoo.py

LINT_PATHS := ray_dit tests benchmarks k8s $(wildcard scripts)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/python k8s/render.py --check

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "# $$f"; $(BIN)/python $$f || exit 1; done

serve: $(STAMP)
	$(BIN)/serve run serve_config.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: bench-serve
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_overhead.py

# Train the demo:shapes weights shipped in ray_dit/demo/weights/shapes (< 60 min on 2 CPU cores).
.PHONY: demo-model
demo-model: $(STAMP)
	$(BIN)/python scripts/train_shapes.py --out ray_dit/demo/weights/shapes
