# Developer entry points. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt requirements-lock.txt | sha1sum | cut -c1-12)
# The other OpenCV major (requirements-opencv-other.txt) for test/test_verification_opencv_majors.py.
CV_OTHER := .venv-opencv-other
CV_OTHER_STAMP := $(CV_OTHER)/.installed-$(shell cat requirements-opencv-other.txt requirements-lock.txt | sha1sum | cut -c1-12)
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup opencv-other ros2-launch lint test test-fast demo bench fuzz reliability clean

setup: $(STAMP)

# pip first, at its pinned version; then the exact pins, the lock holding every transitive version.
$(STAMP): requirements-dev.txt requirements-lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$$(grep -E '^pip==' requirements-dev.txt)"
	$(PY) -m pip install --quiet -r requirements-dev.txt -c requirements-lock.txt
	rm -f $(VENV)/.installed-*
	touch $@

# A small second venv (numpy, scipy, OpenCV, pytest; ~1 min on a fresh machine, then cached).
opencv-other: $(CV_OTHER_STAMP)

$(CV_OTHER_STAMP): requirements-opencv-other.txt requirements-lock.txt
	$(PYTHON) -m venv $(CV_OTHER)
	$(CV_OTHER)/bin/python -m pip install --quiet "$$(grep -E '^pip==' requirements-dev.txt)"
	grep -v '^opencv-python-headless==' requirements-lock.txt > $(CV_OTHER)/constraints.txt
	$(CV_OTHER)/bin/python -m pip install --quiet -r requirements-opencv-other.txt -c $(CV_OTHER)/constraints.txt
	rm -f $(CV_OTHER)/.installed-*
	touch $@

# ROS 2's own launch/CLI tooling for the real-launch tests: a sourced ROS 2 installation, else
# ../shared/ros2-launch installed once into .ros2-launch/ (the tests skip, saying why, without either).
ros2-launch: setup
	$(PY) test/ros2_tooling.py

# ruff, then the layers (.importlinter, docs/ARCHITECTURE.md): every import runs downward, no cycles.
lint: setup
	$(VENV)/bin/ruff check qaa_vpr_ros training test scripts launch bench
	$(VENV)/bin/lint-imports --no-cache

test: setup lint ros2-launch opencv-other
	$(PY) -m pytest -q -rs test

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow" test

demo: setup
	$(PY) -m scripts.demo --out demo_out

# Every benchmark in one run (<= 20 min on 2 CPU cores): bench/report.md + bench/*.png.
# GPU: bench/gpu.sh [OUT] on a GPU machine (no .venv needed; --smoke checks it on a CPU).
bench: setup
	$(PY) -m bench.run --out bench

# Longer fuzzing of every parser of outside input (make test runs 25 cases per target).
fuzz: setup
	QAA_FUZZ_EXAMPLES=$${QAA_FUZZ_EXAMPLES:-1000} QAA_FUZZ_RANDOM=1 $(PY) -m pytest -q -p no:cacheprovider test/test_fuzz.py

# Fuzz + faults + soak, then one table (<= 10 min on 2 CPU cores): scripts/reliability.py.
reliability: setup
	$(PY) -m scripts.reliability

clean:
	rm -rf build install log demo_out .pytest_cache $(CV_OTHER)
