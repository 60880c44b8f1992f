# The README's commands. Every target is idempotent: `setup` re-runs only when its inputs change.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-install
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: setup demo test pytest ctest bench clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py pyproject.toml CMakeLists.txt $(SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[model,test]'
	touch $@

demo: setup
	$(BIN)/uca demo

test: setup ctest pytest

pytest: setup
	$(BIN)/python -m pytest -q tests

ctest: setup
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(abspath $(BIN)/python) > /dev/null
	cmake --build build/cmake -j2 > /dev/null
	ctest --test-dir build/cmake --output-on-failure

clean:
	rm -rf build dist *.egg-info uca_kernels/_C*.so
