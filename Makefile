# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing,
# install torch's pinned CPU wheel FIRST (an unpinned resolve pulls a multi-GB CUDA build), then
# the project with the extras its tests need under constraints.txt. `make test-gym029` runs the
# env tests again in a second, small venv with Gymnasium 0.29.1 (CleanRL's pin) and numpy<2.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,train,sb3,ray,lm,vision,tracking
GYM029_VENV ?= .venv-gym029
GYM029_PINS := gymnasium==0.29.1 numpy==1.26.4

.PHONY: install demo test test-gym029 bench clean
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# two worker processes, one per core of a 2-core laptop (the CLI's default is one: see README)
demo: $(STAMP)
	$(BIN)/oversight-gr demo --workers 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

# torch first from the local wheel; the env module with core dependencies under CleanRL's pins
$(GYM029_VENV)/.installed: pyproject.toml constraints.txt
	test -x $(GYM029_VENV)/bin/python || $(PY) -m venv $(GYM029_VENV)
	grep -E '^(torch|pytest|pytest-timeout|hypothesis)==' constraints.txt > $(GYM029_VENV)/constraints.txt
	$(GYM029_VENV)/bin/python -m pip install -q -c $(GYM029_VENV)/constraints.txt torch
	$(GYM029_VENV)/bin/python -m pip install -q -c $(GYM029_VENV)/constraints.txt -e . $(GYM029_PINS) pytest pytest-timeout hypothesis
	touch $@

# Gymnasium 0.29's experimental vector env leaves a half-built object when our error stops it;
# its __del__ then raises, which pytest reports as an unraisable-exception warning.
test-gym029: $(GYM029_VENV)/.installed
	$(GYM029_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		-W "ignore::pytest.PytestUnraisableExceptionWarning" tests/envs

bench: $(STAMP)
	$(BIN)/python benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) $(GYM029_VENV) runs .pytest_cache build dist
