#!/usr/bin/env bash
# Builds the CPU emulation of the NVIDIA driver (target/cuda-emulator/libcuda.so.1): a
# stand-in for libcuda that runs kernels/*.cu compiled as host C++. With
# LD_LIBRARY_PATH=target/cuda-emulator the library's GPU path, cudarc included, runs on the
# CPU, which checks the kernels' index arithmetic, shared-memory sizes, grid barrier and the
# engine's orchestration without a GPU. It is not a GPU: it says nothing about the PTX, the
# driver, the hardware memory model or speed.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/cuda-emulator
mkdir -p "$out"
${CXX:-g++} -std=c++17 -O1 -g -fPIC -shared -pthread -Wall -Wno-unused-function -Wno-sign-compare \
    -include tests/emulator/cuda_shim.h -I kernels \
    tests/emulator/fake_libcuda.cpp -o "$out/libcuda.so.1"
ln -sf libcuda.so.1 "$out/libcuda.so"
echo "built $out/libcuda.so.1"
