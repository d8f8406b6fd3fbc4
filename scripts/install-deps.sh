#!/usr/bin/env bash
# Installs the Debian packages qkv builds and tests with, if any is missing.
# As root: apt-get installs them. Otherwise: prints the one line to run, exits 1.
set -euo pipefail

# --arm64: what `make test-arm` needs instead: a cross compiler for 64-bit Arm,
# the arm64 builds of the libraries (Debian multiarch: adds the architecture),
# and qemu-user to run the tests.
# --clang: what `make test-clang` adds: Clang and its OpenMP runtime.
arm64=false
clang=false
[ "${1:-}" = "--arm64" ] && arm64=true
[ "${1:-}" = "--clang" ] && clang=true

if $clang; then
  packages=(cmake make pkg-config clang libomp-dev libhwy-dev libgtest-dev libcli11-dev
            libopenblas-dev libbenchmark-dev)
elif $arm64; then
  packages=(
    cmake make pkg-config
    g++-aarch64-linux-gnu qemu-user
    libhwy-dev:arm64 libgtest-dev:arm64 libgmock-dev:arm64 libgomp1:arm64
  )
else
  packages=(
    cmake make g++ pkg-config          # toolchain (OpenMP comes with g++)
    libhwy-dev                         # Google Highway: SIMD with runtime dispatch
    libcli11-dev                       # command-line parsing
    libgtest-dev                       # tests
    libopenblas-dev                    # the materializing baseline in demo/bench
    libbenchmark-dev                   # micro-benchmarks of the kernels
    python3 python3-dev python3-venv   # the Python package (make python): headers, venv
    python3-pip                        #   and pip, which brings nanobind and numpy from PyPI
  )
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "qkv: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if $arm64 && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "qkv: missing packages; run this once, then try again:" >&2
  if $arm64; then
    echo "  sudo dpkg --add-architecture arm64 && sudo apt-get update" >&2
  fi
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
