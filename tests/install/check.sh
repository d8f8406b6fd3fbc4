#!/usr/bin/env bash
# Installs the build tree $1 into a fresh prefix, then builds and runs a consumer through
# find_package(qkv) and through pkg-config. Usage: check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 here=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The consumer takes the build's compiler: a static libqkv calls the OpenMP runtime of the
# compiler that built it (GCC's libgomp, Clang's libomp).
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
cxx=${cxx:-g++}
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$here" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build "$work/cmake" >/dev/null
"$work/cmake/consumer" | grep -q "o\[0..3\] = 0 1 2 3"
pc_dir=$(dirname "$(find "$work/prefix" -name qkv.pc)")
"$cxx" -std=c++20 "$here/main.cpp" -o "$work/pc" $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs --static qkv)
"$work/pc" | grep -q "o\[0..3\] = 0 1 2 3"
echo "install, find_package and pkg-config: ok"
