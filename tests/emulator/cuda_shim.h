// CUDA C++ built-ins for compiling kernels/*.cu as host C++ in the CPU emulation of the GPU
// (fake_libcuda.cpp). Each CUDA thread of a block is a fiber (ucontext) on one OS thread;
// __syncthreads and warp shuffles switch fibers; blocks of a cooperative launch run on
// concurrent OS threads, so the kernels' grid barrier meets real concurrency and atomics.
#pragma once
#include <cmath>
#include <cstdint>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace emu {
extern thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
void sync_block();
void sync_warp();
double* warp_slot();  // this warp's exchange buffer, 32 entries
void* dynamic_smem();
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(emu::dynamic_smem())

inline void __syncthreads() { emu::sync_block(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T> inline T __shfl_down_sync(unsigned int, T v, int offset) {
    T* slot = reinterpret_cast<T*>(emu::warp_slot());
    const int lane = threadIdx.x & 31;
    slot[lane] = v;
    emu::sync_warp();
    T r = lane + offset < 32 ? slot[lane + offset] : v;
    emu::sync_warp();
    return r;
}

template <typename T> inline T __ldcg(const T* p) {
    T r;
    __atomic_load(const_cast<T*>(p), &r, __ATOMIC_RELAXED);
    return r;
}
template <typename T> inline void __stcg(T* p, T v) { __atomic_store(p, &v, __ATOMIC_RELAXED); }

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned int atomicExch(unsigned int* p, unsigned int v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}

using std::exp;
using std::tanh;
inline float expf(float x) { return std::exp(x); }
inline float tanhf(float x) { return std::tanh(x); }
