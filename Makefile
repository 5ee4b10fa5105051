# Developer entry points. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt | sha1sum | cut -c1-12)
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup lint test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

lint: setup
	$(VENV)/bin/ruff check qaa_vpr_ros training test scripts launch

test: setup lint
	$(PY) -m pytest -q -rs test

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow" test

demo: setup
	$(PY) -m scripts.demo --out demo_out

clean:
	rm -rf build install log demo_out .pytest_cache
