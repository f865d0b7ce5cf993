# `make test` is what CI runs (.ci/run): a fresh venv, graphopt installed with its test extra,
# then the whole suite. pytest exits non-zero when no test ran (exit 5), so that fails too.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: install test example
install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

example: $(VENV)/.installed
	$(VENV)/bin/graphopt compile --example --target x86 -o out
