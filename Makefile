# Everything a fresh machine needs: Debian's Fashion-MNIST, a C++ compiler (the depthwise-gradient kernel,
# src/convnext/models/dwconv.py), a virtualenv with torch from PyPI, the package.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CXX := /usr/bin/g++

.PHONY: setup train test lint bench models

setup: $(VENV)/.installed $(FMNIST) $(CXX)

$(CXX):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq g++

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

train: setup  ## the main job: the built-in default recipe
	$(VENV)/bin/convnext train

models: setup
	$(VENV)/bin/convnext models

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/run_all.py
