# Two commands do everything on a fresh machine: `make run` (the main job) and
# `make test`. Both first build .venv with the pinned CPU torch (no CUDA wheels).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup run test test-slow
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml setup.py requirements/cpu.txt requirements/embedded.txt
	python3 -m venv $(VENV)
	$(PIP) -r requirements/cpu.txt
	$(PIP) -c requirements/cpu.txt -e '.[dev]'
	$(PIP) --no-deps -r requirements/embedded.txt
	touch $@

run: setup
	$(VENV)/bin/repbend run $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)
