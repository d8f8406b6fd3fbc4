# The two commands a newcomer needs:
#   make demo   install what is missing, build Release, run `qkv demo`
#   make test   install what is missing, build, run every test (Release and ASan+UBSan, Python)
# The CLI is at build/qkv afterwards.

JOBS ?= $(shell nproc)
BUILD ?= build
SAN_BUILD ?= build-asan

.PHONY: demo test deps build build-asan clean

demo: build
	./$(BUILD)/qkv demo

test: build build-asan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS)
	$(MAKE) --no-print-directory test-python

deps:
	@./scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQKV_SANITIZE=ON
	cmake --build $(SAN_BUILD) -j $(JOBS)

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(PY_BUILD) $(ARM_BUILD) $(CLANG_BUILD)

# make test-clang  the Release build and its tests with Clang (and its OpenMP runtime) instead
#                  of GCC: the code stays portable between the two compilers. 2-4 minutes.
CLANG_BUILD ?= build-clang

.PHONY: test-clang

test-clang:
	@./scripts/install-deps.sh --clang
	CC=clang CXX=clang++ cmake -S . -B $(CLANG_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CLANG_BUILD) -j $(JOBS)
	cd $(CLANG_BUILD) && ctest --output-on-failure -j $(JOBS)

# make test-arm  the library and its tests cross-compiled for 64-bit Arm (the NEON
#                target; cmake/aarch64-linux-gnu.cmake) and run under qemu-user, so the Arm
#                build is compiled and its kernels checked on an x86 machine. Installs the
#                cross compiler, the arm64 libraries (adds the architecture to dpkg) and qemu.
#                5-6 minutes on 2 cores, most of it emulating the tests.
ARM_BUILD ?= build-arm

.PHONY: test-arm deps-arm

deps-arm:
	@./scripts/install-deps.sh --arm64

test-arm: deps-arm
	cmake -S . -B $(ARM_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
	  -DQKV_BUILD_TOOLS=OFF -DQKV_BUILD_BENCH=OFF
	cmake --build $(ARM_BUILD) -j $(JOBS)
	cd $(ARM_BUILD) && ctest --output-on-failure -j $(JOBS)

# Python: the package qkv (pyproject.toml, python/) in a virtual environment at $(VENV).
#   make python       pip install it, with its test extras, into $(VENV) (then `. $(VENV)/bin/activate`)
#   make test-python  ...and run tests/python (the torch tests skip unless torch is there)
#   make test-peers   ...also pip install torch (PyPI: ~3 GB download with its CUDA libraries,
#                     ~5 GB installed) and run the parity tests against PyTorch
# The CMake build of the package is kept in $(PY_BUILD), so a rebuild is incremental.
PYTHON ?= python3
VENV ?= .venv
PY_BUILD ?= build-py

.PHONY: python python-venv test-python test-peers

python-venv: deps
	@command -v $(PYTHON) >/dev/null || \
	  { echo "qkv: $(PYTHON) not found (Debian: apt-get install python3 python3-venv python3-dev)" >&2; exit 1; }
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip --version >/dev/null || \
	  { echo "qkv: no pip in $(VENV) (Debian: apt-get install python3-venv python3-pip)" >&2; exit 1; }

python: python-venv
	$(VENV)/bin/python -m pip install -q -C build-dir="$(PY_BUILD)/{wheel_tag}" ".[test]"

test-python: python
	$(VENV)/bin/python -m pytest -q tests/python

test-peers: python
	$(VENV)/bin/python -m pip install -q torch
	$(VENV)/bin/python -m pytest -q -rs tests/python/test_torch.py

# make bench   qkv against PyTorch, ONNX Runtime and a materializing OpenBLAS baseline, as a
#              fraction of this machine's measured peak (docs/bench.md): installs the Python
#              peers into $(BENCH_VENV) (each one optional; the same venv as `make python`, so
#              torch is downloaded once), builds Release, writes docs/bench.json and
#              docs/bench.png. The full sweep takes 25-60 minutes on 2 cores;
#              make bench BENCH_ARGS=--quick about a minute.
BENCH_VENV ?= $(or $(VENV),.venv)
BENCH_PYTHON ?= $(or $(PYTHON),python3)
BENCH_ARGS ?=

.PHONY: bench bench-deps

bench: bench-deps build
	./$(BUILD)/qkv bench --python "$$([ -x $(BENCH_VENV)/bin/python ] && echo $(BENCH_VENV)/bin/python || echo $(BENCH_PYTHON))" \
	  --json docs/bench.json --plot docs/bench.png $(BENCH_ARGS)

bench-deps:
	@[ -x $(BENCH_VENV)/bin/pip ] || $(BENCH_PYTHON) -m venv $(BENCH_VENV) || \
	  echo "qkv: cannot create $(BENCH_VENV) (python3-venv missing?); the bench runs without peers" >&2
	@if [ -x $(BENCH_VENV)/bin/pip ]; then \
	  grep -Ev '^[[:space:]]*(#|$$)' bench/requirements.txt | while read -r req; do \
	    echo "qkv: pip install $$req" >&2; \
	    $(BENCH_VENV)/bin/pip install -q --disable-pip-version-check "$$req" || \
	      echo "qkv: could not install $$req; the bench goes on without it" >&2; \
	  done; \
	fi

# make bench-decode  one decode step (32 query / 8 KV heads, head_dim 128) against KV caches of 4K
#                    to 1M tokens in float32, float16, bfloat16 and int8, as a fraction of this
#                    machine's measured read bandwidth and against a baseline that re-reads K/V per
#                    query head (docs/bench.md, section Decode): builds Release, writes
#                    docs/bench-decode.json. About 10 minutes on 2 cores and 9 GiB of free memory
#                    (the 1M-token float32 cache is 8 GiB); BENCH_DECODE_ARGS=--quick for 4K and 32K.
BENCH_DECODE_ARGS ?=

.PHONY: bench-decode

bench-decode: build
	./$(BUILD)/qkv bench decode --json docs/bench-decode.json $(BENCH_DECODE_ARGS)
