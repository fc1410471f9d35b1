// Shared definitions of the fused-rnn CUDA kernels: the parameter block every cell kernel
// takes, the activations, warp reductions and the grid-wide barrier of the persistent kernels.
//
// Compiled by NVRTC (kernels/build_ptx.py) with no CUDA headers: only built-in functions.
#pragma once

// Activation codes, in the order of the Rust enum `fused_rnn::Activation`.
#define ACT_TANH 0
#define ACT_RELU 1
#define ACT_SIGMOID 2
#define ACT_LINEAR 3
#define ACT_HARD_SIGMOID 4

// The parameter block of every cell kernel (step, persistent, forward and backward), passed
// by value. Mirrored by `RnnParams` in src/cuda/params.rs: the same fields in the same order,
// 8-byte pointers, size 152 bytes (checked against the PTX parameter size by a Rust test).
//
// Shapes (row-major, processing order, G gates, S state tensors, P = G*H):
//   proj            [T, B, P]  input projection x*kernel + bias of every step
//   recurrent_kernel[H, P]     recurrent_bias [P] or null
//   states          [slots, S, B, H]; slot t is the state before step t (slot t % slots)
//   tape            [T, B, tape_width] or null (inference)
//   rec             [B, P]     recurrent products of the current step (step kernels)
//   aux             [B, H]     GRU reset-before: r*h_prev (forward), d(r*h_prev) (backward)
//   dy              [T, B, H] (every step) or [B, H] (last step only), or null
//   d_state         [S, B, H]  gradient on the state, updated in place step by step
//   d_proj, d_rec   [T, B, P]  gradients of the projection and of the recurrent products
//   rh_all          [T, B, H]  GRU reset-before: r*h_prev of every step (backward)
//   barrier         two zeroed 32-bit words (persistent kernels)
struct RnnParams {
    int batch;
    int hidden;
    int time_steps;
    int step;  // the step a step kernel works on (processing order)
    int activation;
    int recurrent_activation;
    int reset_after;
    int state_slots;
    int tape_width;
    int dy_every_step;  // 1: dy holds every step, 0: only the last
    int units_per_block;  // persistent kernels: hidden units owned by one block
    int pad0;
    unsigned long long proj;
    unsigned long long recurrent_kernel;
    unsigned long long recurrent_bias;
    unsigned long long states;
    unsigned long long tape;
    unsigned long long rec;
    unsigned long long aux;
    unsigned long long dy;
    unsigned long long d_state;
    unsigned long long d_proj;
    unsigned long long d_rec;
    unsigned long long rh_all;
    unsigned long long barrier;
};

// The dynamic shared memory of a launch (a macro so that the CPU emulation used by the tests,
// tests/emulator/, can give each block its own exactly-sized buffer).
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

template <typename T> __device__ __forceinline__ T* ptr(unsigned long long p) {
    return reinterpret_cast<T*>(p);
}

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// f(a), as `Activation::apply`: comparisons written so that NaN propagates.
template <typename T> __device__ __forceinline__ T activate(int code, T a) {
    switch (code) {
    case ACT_TANH:
        return tanh_(a);
    case ACT_RELU:
        return a < T(0) ? T(0) : a;
    case ACT_SIGMOID:
        return T(1) / (T(1) + exp_(-a));
    case ACT_HARD_SIGMOID: {
        T t = a + T(3);
        T c = t < T(0) ? T(0) : (t > T(6) ? T(6) : t);
        return c / T(6);
    }
    default:
        return a;
    }
}

// f'(a) from the output y = f(a), as `Activation::derivative_from_output` (0 at kinks).
template <typename T> __device__ __forceinline__ T activate_grad(int code, T y) {
    switch (code) {
    case ACT_TANH:
        return T(1) - y * y;
    case ACT_RELU:
        return y > T(0) ? T(1) : T(0);
    case ACT_SIGMOID:
        return y * (T(1) - y);
    case ACT_HARD_SIGMOID:
        return (y > T(0) && y < T(1)) ? T(1) / T(6) : T(0);
    default:
        return T(1);
    }
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Loads bypassing L1: data written by other blocks of a running persistent kernel.
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double load_cg(const double* p) { return __ldcg(p); }

// Grid-wide barrier for a kernel launched cooperatively (cuLaunchCooperativeKernel), which
// guarantees that every block is resident, so spinning cannot deadlock. bar[0] counts arrivals,
// bar[1] is the generation; both start at 0. Writes before the barrier by any thread of any
// block are visible to every thread after it (bar.sync orders the block, the fences publish).
__device__ __forceinline__ void grid_barrier(unsigned int* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* generation = bar + 1;
        unsigned int gen = *generation;
        __threadfence();
        unsigned int arrived = atomicAdd(bar, 1u);
        if (arrived == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (*generation == gen) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}
