# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11 (see README):
#   make demo   install llmgen and run it
#   make test   install llmgen with its test dependencies and run the whole suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check

.PHONY: install install-test assets demo test bench

# torch first, pinned: a looser spec with no torch installed pulls several GB of CUDA wheels.
install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e .
	$(PYTHON) -m llmgen.assets fetch

install-test: install
	$(PIP) install --quiet -e '.[test]'

demo: install
	llmgen tokenize "hello world! 武 😀"

test: install-test
	$(PYTHON) -m pytest -q

bench: install-test
	$(PYTHON) benchmarks/startup.py
	$(PYTHON) benchmarks/generate_gpt2.py
