# Everything a fresh machine needs: Debian's Fashion-MNIST, a C++ compiler (the depthwise-gradient kernel,
# src/convnext/fast/dwconv.py), a virtualenv with torch from PyPI, the package.
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

# The kernels, the training loop and export again on an emulated AVX2-only CPU (no AVX-512, no bf16 in hardware:
# most laptops, AMD Zen 2/3, older Xeons), where oneDNN lacks kernels the default run uses.
AVX2 := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
PORTABLE_TESTS := tests/test_fast.py tests/test_dwconv.py tests/test_mlp.py tests/test_train_engine.py \
	tests/test_export.py tests/test_benchmark.py

test: setup
	$(PY) -m pytest -q
	$(AVX2) $(PY) -m pytest -q $(PORTABLE_TESTS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup  ## OpenVINO (the bench extra) is a peer there
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py
