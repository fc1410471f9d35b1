// Persistent recurrent kernels for small batches: one cooperative launch runs a whole
// sequence. Block k owns the hidden units [k*UPB, (k+1)*UPB) (UPB = units_per_block) and keeps
// its share of the recurrent kernel in shared memory for all steps; the blocks meet at a
// grid-wide barrier once per step (twice for GRU reset-before, whose candidate needs every
// unit's reset gate), so the weights are read from memory once per sequence, not per step.
//
// Launch: grid ceil(H / UPB) blocks of PERSISTENT_THREADS threads, cooperatively (all blocks
// resident), dynamic shared memory as given by the formulas next to each kernel (mirrored by
// `persistent_smem_bytes` in src/cuda/launch.rs), p.barrier pointing at two zeroed words.
#include "cell_math.cuh"

#define PERSISTENT_THREADS 256
#define PERSISTENT_WARPS (PERSISTENT_THREADS / 32)

// `count` dot products of length `len`, out(o, sum_k term(o, k)), spread over the block's
// warps: a warp per product when there are at least as many products as warps, otherwise
// several warps per product whose partial sums meet in `partial` (PERSISTENT_WARPS values).
// Summation order depends only on (count, len), so results are deterministic.
template <typename T, typename Term, typename Out>
__device__ __forceinline__ void block_dots(int count, int len, T* partial, Term term, Out out) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (count >= PERSISTENT_WARPS) {
        for (int o = warp; o < count; o += PERSISTENT_WARPS) {
            T s = T(0);
            for (int k = lane; k < len; k += 32) s += term(o, k);
            s = warp_sum(s);
            if (lane == 0) out(o, s);
        }
        __syncthreads();
        return;
    }
    const int split = PERSISTENT_WARPS / count;  // warps per product, at least 1
    if (warp < count * split) {
        const int o = warp / split, part = warp % split;
        T s = T(0);
        for (int k = part * 32 + lane; k < len; k += split * 32) s += term(o, k);
        s = warp_sum(s);
        if (lane == 0) partial[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x < count) {
        T s = T(0);
        for (int q = 0; q < split; ++q) s += partial[threadIdx.x * split + q];
        out(threadIdx.x, s);
    }
    __syncthreads();
}

// Forward. Shared memory (elements of T):
//   weights  G*UPB*H   column (g, u) of the owned units, U[:, g*H + j0 + u], contiguous in k
//   h        B*H       the state before the step (GRU reset-before: then r * h_prev)
//   dots     B*G*UPB   recurrent products of the owned columns
//   partial  PERSISTENT_WARPS
template <typename T, int CELL> __device__ void persistent_forward(const RnnParams& p) {
    constexpr int G = CellGates<CELL>::value, S = CellGates<CELL>::states;
    const int H = p.hidden, B = p.batch, UPB = p.units_per_block, P = G * H;
    const int j0 = blockIdx.x * UPB;
    const long long bh = (long long)B * H;
    DYNAMIC_SHARED(double, smem_words);
    T* us = reinterpret_cast<T*>(smem_words);
    T* hs = us + G * UPB * H;
    T* dots = hs + bh;
    T* partial = dots + B * G * UPB;

    const T* U = ptr<const T>(p.recurrent_kernel);
    for (int e = threadIdx.x; e < G * UPB * H; e += blockDim.x) {
        int col = e / H, k = e % H, g = col / UPB, j = j0 + col % UPB;
        us[e] = j < H ? U[(long long)k * P + g * H + j] : T(0);
    }
    const bool two_phase = CELL == CELL_GRU && !p.reset_after;
    const int rec_gates = two_phase ? 2 : G;
    const int ra = p.recurrent_activation;
    unsigned int* bar = ptr<unsigned int>(p.barrier);
    T* aux = ptr<T>(p.aux);
    __syncthreads();

    for (int t = 0; t < p.time_steps; ++t) {
        const T* state = ptr<const T>(p.states) + (long long)(t % p.state_slots) * S * bh;
        T* next = ptr<T>(p.states) + (long long)((t + 1) % p.state_slots) * S * bh;
        for (long long e = threadIdx.x; e < bh; e += blockDim.x) hs[e] = load_cg(state + e);
        __syncthreads();
        const int cols = rec_gates * UPB;
        block_dots<T>(
            B * cols, H, partial,
            [&](int o, int k) { return us[(o % cols) * H + k] * hs[(o / cols) * H + k]; },
            [&](int o, T v) { dots[(o / cols) * G * UPB + o % cols] = v; });
        if (two_phase) {
            for (int e = threadIdx.x; e < B * UPB; e += blockDim.x) {
                int b = e / UPB, u = e % UPB, j = j0 + u;
                if (j >= H) continue;
                const T* proj = ptr<const T>(p.proj) + row_index(t, B, b, P, 0);
                T* d = dots + b * G * UPB;
                T z = activate<T>(ra, proj[GATE_GRU_Z * H + j] + d[GATE_GRU_Z * UPB + u] + rbias<T>(p, GATE_GRU_Z * H + j));
                T r = activate<T>(ra, proj[GATE_GRU_R * H + j] + d[GATE_GRU_R * UPB + u] + rbias<T>(p, GATE_GRU_R * H + j));
                d[GATE_GRU_Z * UPB + u] = z;
                d[GATE_GRU_R * UPB + u] = r;
                __stcg(aux + (long long)b * H + j, r * hs[(long long)b * H + j]);
            }
            grid_barrier(bar);
            for (long long e = threadIdx.x; e < bh; e += blockDim.x) hs[e] = load_cg(aux + e);
            __syncthreads();
            block_dots<T>(
                B * UPB, H, partial,
                [&](int o, int k) { return us[(GATE_GRU_H * UPB + o % UPB) * H + k] * hs[(o / UPB) * H + k]; },
                [&](int o, T v) { dots[(o / UPB) * G * UPB + GATE_GRU_H * UPB + o % UPB] = v; });
        }
        for (int e = threadIdx.x; e < B * UPB; e += blockDim.x) {
            int b = e / UPB, u = e % UPB, j = j0 + u;
            if (j >= H) continue;
            const T* proj = ptr<const T>(p.proj) + row_index(t, B, b, P, 0);
            const T* d = dots + b * G * UPB;
            T* tape = p.tape == 0 ? nullptr : ptr<T>(p.tape) + row_index(t, B, b, p.tape_width, 0);
            long long x = (long long)b * H + j;
            if (CELL == CELL_RNN) {
                next[x] = rnn_unit_forward<T>(p, proj[j] + d[u] + rbias<T>(p, j));
            } else if (CELL == CELL_LSTM) {
                T pre[4];
                for (int g = 0; g < 4; ++g) pre[g] = proj[g * H + j] + d[g * UPB + u] + rbias<T>(p, g * H + j);
                lstm_unit_forward<T>(p, pre, load_cg(state + bh + x), &next[x], &next[bh + x], tape, j);
            } else {
                T z, r;
                if (p.reset_after) {
                    z = activate<T>(ra, proj[GATE_GRU_Z * H + j] + d[GATE_GRU_Z * UPB + u] + rbias<T>(p, GATE_GRU_Z * H + j));
                    r = activate<T>(ra, proj[GATE_GRU_R * H + j] + d[GATE_GRU_R * UPB + u] + rbias<T>(p, GATE_GRU_R * H + j));
                } else {
                    z = d[GATE_GRU_Z * UPB + u];
                    r = d[GATE_GRU_R * UPB + u];
                }
                T rec_h = d[GATE_GRU_H * UPB + u] + rbias<T>(p, GATE_GRU_H * H + j);
                next[x] = gru_unit_forward<T>(p, z, r, proj[GATE_GRU_H * H + j], rec_h, load_cg(state + x), tape, j);
            }
        }
        grid_barrier(bar);
    }
}

// Backward through time over a training record (state_slots = T + 1). Block k owns the rows
// j0..j0+UPB of the recurrent kernel, which is what d h_prev[j] = sum_c d_rec[c] * U[j, c]
// needs. Per step: the owned units' gate gradients (phase A), a barrier, then d h_prev of the
// owned units from every unit's d_rec (phase B). Shared memory (elements of T):
//   weights  UPB*G*H   rows U[j0 + u, :]
//   dots     B*UPB
//   partial  PERSISTENT_WARPS
template <typename T, int CELL> __device__ void persistent_backward(const RnnParams& p) {
    constexpr int G = CellGates<CELL>::value, S = CellGates<CELL>::states;
    const int H = p.hidden, B = p.batch, UPB = p.units_per_block, P = G * H;
    const int j0 = blockIdx.x * UPB;
    const long long bh = (long long)B * H;
    DYNAMIC_SHARED(double, smem_words);
    T* us = reinterpret_cast<T*>(smem_words);
    T* dots = us + UPB * P;
    T* partial = dots + B * UPB;

    const T* U = ptr<const T>(p.recurrent_kernel);
    for (int e = threadIdx.x; e < UPB * P; e += blockDim.x) {
        int u = e / P, c = e % P, j = j0 + u;
        us[e] = j < H ? U[(long long)j * P + c] : T(0);
    }
    const bool two_phase = CELL == CELL_GRU && !p.reset_after;
    const int ncols = two_phase ? 2 * H : P;
    const int ra = p.recurrent_activation;
    unsigned int* bar = ptr<unsigned int>(p.barrier);
    T* d_state = ptr<T>(p.d_state);
    __syncthreads();

    for (int t = p.time_steps - 1; t >= 0; --t) {
        const T* state = ptr<const T>(p.states) + (long long)t * S * bh;
        const T* next = state + S * bh;
        T* d_proj_t = ptr<T>(p.d_proj) + row_index(t, B, 0, P, 0);
        T* d_rec_t = (CELL == CELL_GRU ? ptr<T>(p.d_rec) : ptr<T>(p.d_proj)) + row_index(t, B, 0, P, 0);
        for (int e = threadIdx.x; e < B * UPB; e += blockDim.x) {
            int b = e / UPB, u = e % UPB, j = j0 + u;
            if (j >= H) continue;
            long long x = (long long)b * H + j;
            T dh = d_state[x] + dy_at<T>(p, t, b, j);
            T* dp = d_proj_t + (long long)b * P;
            const T* tape = p.tape == 0 ? nullptr : ptr<const T>(p.tape) + row_index(t, B, b, p.tape_width, 0);
            if (CELL == CELL_RNN) {
                dp[j] = rnn_unit_backward<T>(p, dh, next[x]);
            } else if (CELL == CELL_LSTM) {
                T d_pre[4], dc_prev;
                lstm_unit_backward<T>(p, tape, j, state[bh + x], dh, d_state[bh + x], d_pre, &dc_prev);
                for (int g = 0; g < 4; ++g) dp[g * H + j] = d_pre[g];
                d_state[bh + x] = dc_prev;
            } else {
                T dz, dn, dh_prev;
                gru_unit_backward_zh<T>(p, tape, j, dh, state[x], &dz, &dn, &dh_prev);
                T* dr_row = d_rec_t + (long long)b * P;
                dp[GATE_GRU_Z * H + j] = dz;
                dp[GATE_GRU_H * H + j] = dn;
                d_state[x] = dh_prev;
                if (p.reset_after) {
                    T r = tape[GATE_GRU_R * H + j], rec_h = tape[3 * H + j];
                    T dr = dn * rec_h * activate_grad<T>(ra, r);
                    dp[GATE_GRU_R * H + j] = dr;
                    dr_row[GATE_GRU_Z * H + j] = dz;
                    dr_row[GATE_GRU_R * H + j] = dr;
                    dr_row[GATE_GRU_H * H + j] = dn * r;
                } else {
                    dr_row[GATE_GRU_H * H + j] = dn;
                }
            }
        }
        grid_barrier(bar);
        if (two_phase) {
            // d(r * h_prev)[j] = sum_c dn[c] * U[j, 2H + c]: every unit's dn, the owned rows.
            block_dots<T>(
                B * UPB, H, partial,
                [&](int o, int k) {
                    return load_cg(d_proj_t + (long long)(o / UPB) * P + GATE_GRU_H * H + k) *
                           us[(o % UPB) * P + GATE_GRU_H * H + k];
                },
                [&](int o, T v) { dots[o] = v; });
            for (int e = threadIdx.x; e < B * UPB; e += blockDim.x) {
                int b = e / UPB, u = e % UPB, j = j0 + u;
                if (j >= H) continue;
                long long x = (long long)b * H + j;
                const T* tape = ptr<const T>(p.tape) + row_index(t, B, b, p.tape_width, 0);
                T d_rh = dots[e], r = tape[GATE_GRU_R * H + j], h_prev = state[x];
                T dr = d_rh * h_prev * activate_grad<T>(ra, r);
                T* dp = d_proj_t + (long long)b * P;
                T* dr_row = d_rec_t + (long long)b * P;
                dp[GATE_GRU_R * H + j] = dr;
                dr_row[GATE_GRU_Z * H + j] = dp[GATE_GRU_Z * H + j];
                dr_row[GATE_GRU_R * H + j] = dr;
                d_state[x] += d_rh * r;
                ptr<T>(p.rh_all)[row_index(t, B, b, H, j)] = r * h_prev;
            }
            grid_barrier(bar);
        }
        block_dots<T>(
            B * UPB, ncols, partial,
            [&](int o, int c) { return load_cg(d_rec_t + (long long)(o / UPB) * P + c) * us[(o % UPB) * P + c]; },
            [&](int o, T v) { dots[o] = v; });
        for (int e = threadIdx.x; e < B * UPB; e += blockDim.x) {
            int b = e / UPB, u = e % UPB, j = j0 + u;
            if (j >= H) continue;
            long long x = (long long)b * H + j;
            d_state[x] = (CELL == CELL_GRU ? d_state[x] : T(0)) + dots[e];
        }
        __syncthreads();
    }
}

extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) rnn_fwd_persistent_f32(const RnnParams p) { persistent_forward<float, CELL_RNN>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) rnn_fwd_persistent_f64(const RnnParams p) { persistent_forward<double, CELL_RNN>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) lstm_fwd_persistent_f32(const RnnParams p) { persistent_forward<float, CELL_LSTM>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) lstm_fwd_persistent_f64(const RnnParams p) { persistent_forward<double, CELL_LSTM>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) gru_fwd_persistent_f32(const RnnParams p) { persistent_forward<float, CELL_GRU>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) gru_fwd_persistent_f64(const RnnParams p) { persistent_forward<double, CELL_GRU>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) rnn_bwd_persistent_f32(const RnnParams p) { persistent_backward<float, CELL_RNN>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) rnn_bwd_persistent_f64(const RnnParams p) { persistent_backward<double, CELL_RNN>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) lstm_bwd_persistent_f32(const RnnParams p) { persistent_backward<float, CELL_LSTM>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) lstm_bwd_persistent_f64(const RnnParams p) { persistent_backward<double, CELL_LSTM>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) gru_bwd_persistent_f32(const RnnParams p) { persistent_backward<float, CELL_GRU>(p); }
extern "C" __global__ void __launch_bounds__(PERSISTENT_THREADS, 1) gru_bwd_persistent_f64(const RnnParams p) { persistent_backward<double, CELL_GRU>(p); }
