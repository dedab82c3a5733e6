# sparsevision: `make test` and `make demo` work on a fresh clone.
#   make venv   .venv with the pinned dependencies (idempotent)
#   make build  compile sparsevision._C (C++ always, CUDA when a toolkit is found)
#   make test   the whole test suite
#   make demo   the demos on their embedded data (outputs/demo/)
#   make bench  the benchmarks in --quick mode (outputs/bench/)
#   make package-check  sdist -> isolated wheel build -> fresh venv -> installed commands run outside the tree
#   make emulation  the CPU emulation of the CUDA kernels (tests/cuda_emulation.py), which the CUDA tests run on
#   make emulation-sanitize  the emulated CUDA tests again, built with AddressSanitizer and UBSan
#   make gpu-check  on a GPU machine: build for sm_90, CUDA tests, sanitizers, syncs, CUDA graph, timings
#                   (outputs/gpu_check/; GPU_CHECK_ARGS='--device cpu --quick --no-build' is the dry run)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
NATIVE_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)
EXTENSION := sparsevision/_C.so
PYTEST_ARGS ?=
GPU_CHECK_ARGS ?=
# the GPU machine has no .venv: its python3 holds torch
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: venv build test demo bench clean system-deps package-check emulation emulation-sanitize gpu-check

venv: $(VENV)/.installed

system-deps:
	@if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo 'installing libusb-1.0-0 (needed by open3d)'; \
	    (apt-get install -y -q libusb-1.0-0 || (apt-get update -q && apt-get install -y -q libusb-1.0-0)) >/dev/null; \
	  else echo 'warning: libusb-1.0-0 is missing and apt is not usable; open3d will not import'; fi; \
	fi

$(VENV)/.installed: setup.py requirements.txt | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	SV_WITH_OPS=0 $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

$(EXTENSION): $(VENV)/.installed $(NATIVE_SOURCES) setup.py
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import sparsevision.ops as ops; print(ops.extension_info())"

build: $(EXTENSION)

EMULATED_TESTS := tests/ops/test_cuda_sparse_kernels.py tests/ops/test_token_routing.py tests/ops/test_token_merge.py \
	tests/ops/test_token_select.py tests/ops/test_indexed_attention.py
# ASan must come first in the process, and its __cxa_throw interceptor needs libstdc++ loaded beside it.
SANITIZER_PRELOAD = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)

emulation: $(VENV)/.installed
	$(PY) tests/cuda_emulation.py

SANITIZER_ENV = SV_EMULATION_SANITIZE=1 ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 LD_PRELOAD="$(SANITIZER_PRELOAD)"

emulation-sanitize: build
	$(SANITIZER_ENV) $(PY) tests/cuda_emulation.py
	$(SANITIZER_ENV) $(PY) -m pytest -q -p no:cacheprovider $(EMULATED_TESTS) -k "emulated or refuse"

test: build emulation system-deps
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: build system-deps
	$(PY) demo/image_demo.py --out-dir outputs/demo
	$(PY) demo/pcd_demo.py --out-dir outputs/demo

package-check: $(VENV)/.installed
	PYTHON=$(PYTHON) bash .ci/package_check

bench: build
	mkdir -p outputs/bench
	$(PY) tools/benchmark/token_routing.py --quick --json outputs/bench/token_routing.json
	$(PY) tools/benchmark/sparse_conv.py --quick --json outputs/bench/sparse_conv.json
	$(PY) tools/benchmark/token_pruning.py --quick --json outputs/bench/token_pruning.json
	$(PY) tools/benchmark/token_pruning_zoo.py --quick --json outputs/bench/token_pruning_zoo.json
	$(PY) tools/benchmark/masked_pretrain.py --quick --json outputs/bench/masked_pretrain.json
	$(PY) tools/benchmark/spiking.py --quick --json outputs/bench/spiking.json
	$(PY) tools/benchmark/sparse_unet.py --quick --json outputs/bench/sparse_unet.json

gpu-check:
	mkdir -p outputs/gpu_check
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_CHECK_PYTHON) tools/gpu_check.py \
	  --json outputs/gpu_check/gpu_check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf build $(EXTENSION) sparsevision/.mim outputs
