// Step kernels of the standard path: per time step the recurrent product runs as a matrix
// product (gemm.cu) into `rec`, then one of these fused element-wise kernels applies the gate
// maths. One thread per (batch row, hidden unit); launch with at least B*H threads in x.
#include "cell_math.cuh"

// Slot of the state before step t.
template <typename T> __device__ __forceinline__ T* state_slot(const RnnParams& p, int t, int states) {
    long long len = (long long)states * p.batch * p.hidden;
    return ptr<T>(p.states) + (long long)(t % p.state_slots) * len;
}

template <typename T> __device__ __forceinline__ T* tape_row(const RnnParams& p, int t, int b) {
    return p.tape == 0 ? nullptr : ptr<T>(p.tape) + row_index(t, p.batch, b, p.tape_width, 0);
}

// ---- forward ------------------------------------------------------------------------------

template <typename T> __device__ void rnn_fwd_step(const RnnParams p) {
    const int H = p.hidden, t = p.step;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)p.batch * H) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    T pre = ptr<const T>(p.proj)[row_index(t, p.batch, b, H, j)] + ptr<const T>(p.rec)[idx] +
            rbias<T>(p, j);
    state_slot<T>(p, t + 1, 1)[idx] = rnn_unit_forward<T>(p, pre);
}

template <typename T> __device__ void lstm_fwd_step(const RnnParams p) {
    const int H = p.hidden, t = p.step, P = 4 * H;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long bh = (long long)p.batch * H;
    if (idx >= bh) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    const T* proj = ptr<const T>(p.proj) + row_index(t, p.batch, b, P, 0);
    const T* rec = ptr<const T>(p.rec) + (long long)b * P;
    T pre[4];
    for (int g = 0; g < 4; ++g) pre[g] = proj[g * H + j] + rec[g * H + j] + rbias<T>(p, g * H + j);
    const T* state = state_slot<T>(p, t, 2);
    T* next = state_slot<T>(p, t + 1, 2);
    lstm_unit_forward<T>(p, pre, state[bh + idx], &next[idx], &next[bh + idx], tape_row<T>(p, t, b), j);
}

// GRU reset-before, first half: z and r into `rec` (in place of their recurrent products) and
// r * h_prev into `aux`, the input of the candidate's recurrent product.
template <typename T> __device__ void gru_fwd_gates(const RnnParams p) {
    const int H = p.hidden, t = p.step, P = 3 * H;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)p.batch * H) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    const T* proj = ptr<const T>(p.proj) + row_index(t, p.batch, b, P, 0);
    T* rec = ptr<T>(p.rec) + (long long)b * P;
    const int ra = p.recurrent_activation;
    T z = activate<T>(ra, proj[GATE_GRU_Z * H + j] + rec[GATE_GRU_Z * H + j] + rbias<T>(p, GATE_GRU_Z * H + j));
    T r = activate<T>(ra, proj[GATE_GRU_R * H + j] + rec[GATE_GRU_R * H + j] + rbias<T>(p, GATE_GRU_R * H + j));
    rec[GATE_GRU_Z * H + j] = z;
    rec[GATE_GRU_R * H + j] = r;
    ptr<T>(p.aux)[idx] = r * state_slot<T>(p, t, 1)[idx];
}

// GRU, both variants: the new state. Reset-after reads the three recurrent products from
// `rec`; reset-before reads z and r (already activated by gru_fwd_gates) and the candidate's
// product of r * h_prev.
template <typename T> __device__ void gru_fwd_step(const RnnParams p) {
    const int H = p.hidden, t = p.step, P = 3 * H;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)p.batch * H) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    const T* proj = ptr<const T>(p.proj) + row_index(t, p.batch, b, P, 0);
    const T* rec = ptr<const T>(p.rec) + (long long)b * P;
    T z, r;
    if (p.reset_after) {
        const int ra = p.recurrent_activation;
        z = activate<T>(ra, proj[GATE_GRU_Z * H + j] + rec[GATE_GRU_Z * H + j] + rbias<T>(p, GATE_GRU_Z * H + j));
        r = activate<T>(ra, proj[GATE_GRU_R * H + j] + rec[GATE_GRU_R * H + j] + rbias<T>(p, GATE_GRU_R * H + j));
    } else {
        z = rec[GATE_GRU_Z * H + j];
        r = rec[GATE_GRU_R * H + j];
    }
    T rec_h = rec[GATE_GRU_H * H + j] + rbias<T>(p, GATE_GRU_H * H + j);
    T h_prev = state_slot<T>(p, t, 1)[idx];
    state_slot<T>(p, t + 1, 1)[idx] =
        gru_unit_forward<T>(p, z, r, proj[GATE_GRU_H * H + j], rec_h, h_prev, tape_row<T>(p, t, b), j);
}

// ---- backward -----------------------------------------------------------------------------
// `d_state` holds the gradient on the state after step t on entry; these kernels consume it
// and leave the parts that do not go through the recurrent product (LSTM's c, GRU's dh * z);
// the matrix product with the recurrent kernel then completes d h_prev.

template <typename T> __device__ void rnn_bwd_step(const RnnParams p) {
    const int H = p.hidden, t = p.step;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)p.batch * H) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    T dh = ptr<const T>(p.d_state)[idx] + dy_at<T>(p, t, b, j);
    T h = state_slot<T>(p, t + 1, 1)[idx];
    ptr<T>(p.d_proj)[row_index(t, p.batch, b, H, j)] = rnn_unit_backward<T>(p, dh, h);
}

template <typename T> __device__ void lstm_bwd_step(const RnnParams p) {
    const int H = p.hidden, t = p.step, P = 4 * H;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long bh = (long long)p.batch * H;
    if (idx >= bh) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    T* d_state = ptr<T>(p.d_state);
    T dh = d_state[idx] + dy_at<T>(p, t, b, j);
    T c_prev = state_slot<T>(p, t, 2)[bh + idx];
    T d_pre[4], dc_prev;
    lstm_unit_backward<T>(p, tape_row<T>(p, t, b), j, c_prev, dh, d_state[bh + idx], d_pre, &dc_prev);
    T* d_proj = ptr<T>(p.d_proj) + row_index(t, p.batch, b, P, 0);
    for (int g = 0; g < 4; ++g) d_proj[g * H + j] = d_pre[g];
    d_state[bh + idx] = dc_prev;
}

// GRU, both variants. Reset-after: every gradient of the step but the recurrent product's
// (d_proj, d_rec and d h_prev = dh * z). Reset-before: z and candidate gradients and
// d_rec's candidate block; gru_bwd_gates completes the reset gate.
template <typename T> __device__ void gru_bwd_step(const RnnParams p) {
    const int H = p.hidden, t = p.step, P = 3 * H;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)p.batch * H) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    T* d_state = ptr<T>(p.d_state);
    T dh = d_state[idx] + dy_at<T>(p, t, b, j);
    T h_prev = state_slot<T>(p, t, 1)[idx];
    const T* tape = tape_row<T>(p, t, b);
    T dz, dn, dh_prev;
    gru_unit_backward_zh<T>(p, tape, j, dh, h_prev, &dz, &dn, &dh_prev);
    T* d_proj = ptr<T>(p.d_proj) + row_index(t, p.batch, b, P, 0);
    T* d_rec = ptr<T>(p.d_rec) + row_index(t, p.batch, b, P, 0);
    d_proj[GATE_GRU_Z * H + j] = dz;
    d_proj[GATE_GRU_H * H + j] = dn;
    d_state[idx] = dh_prev;
    if (p.reset_after) {
        T r = tape[GATE_GRU_R * H + j], rec_h = tape[3 * H + j];
        T dr = dn * rec_h * activate_grad<T>(p.recurrent_activation, r);
        d_proj[GATE_GRU_R * H + j] = dr;
        d_rec[GATE_GRU_Z * H + j] = dz;
        d_rec[GATE_GRU_R * H + j] = dr;
        d_rec[GATE_GRU_H * H + j] = dn * r;
    } else {
        d_rec[GATE_GRU_H * H + j] = dn;
    }
}

// GRU reset-before, second half: with aux = d(r * h_prev) = dn * U_h^T, the reset gate's
// gradient, its share of d h_prev, and r * h_prev for the candidate kernel's gradient.
template <typename T> __device__ void gru_bwd_gates(const RnnParams p) {
    const int H = p.hidden, t = p.step, P = 3 * H;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)p.batch * H) return;
    int b = (int)(idx / H), j = (int)(idx % H);
    T d_rh = ptr<const T>(p.aux)[idx];
    T h_prev = state_slot<T>(p, t, 1)[idx];
    T r = tape_row<T>(p, t, b)[GATE_GRU_R * H + j];
    T dr = d_rh * h_prev * activate_grad<T>(p.recurrent_activation, r);
    T* d_proj = ptr<T>(p.d_proj) + row_index(t, p.batch, b, P, 0);
    T* d_rec = ptr<T>(p.d_rec) + row_index(t, p.batch, b, P, 0);
    d_proj[GATE_GRU_R * H + j] = dr;
    d_rec[GATE_GRU_Z * H + j] = d_proj[GATE_GRU_Z * H + j];
    d_rec[GATE_GRU_R * H + j] = dr;
    ptr<T>(p.d_state)[idx] += d_rh * r;
    ptr<T>(p.rh_all)[row_index(t, p.batch, b, H, j)] = r * h_prev;
}

// ---- entries: one per (cell, pass, type) ---------------------------------------------------
extern "C" __global__ void rnn_fwd_step_f32(const RnnParams p) { rnn_fwd_step<float>(p); }
extern "C" __global__ void rnn_fwd_step_f64(const RnnParams p) { rnn_fwd_step<double>(p); }
extern "C" __global__ void lstm_fwd_step_f32(const RnnParams p) { lstm_fwd_step<float>(p); }
extern "C" __global__ void lstm_fwd_step_f64(const RnnParams p) { lstm_fwd_step<double>(p); }
extern "C" __global__ void gru_fwd_gates_f32(const RnnParams p) { gru_fwd_gates<float>(p); }
extern "C" __global__ void gru_fwd_gates_f64(const RnnParams p) { gru_fwd_gates<double>(p); }
extern "C" __global__ void gru_fwd_step_f32(const RnnParams p) { gru_fwd_step<float>(p); }
extern "C" __global__ void gru_fwd_step_f64(const RnnParams p) { gru_fwd_step<double>(p); }
extern "C" __global__ void rnn_bwd_step_f32(const RnnParams p) { rnn_bwd_step<float>(p); }
extern "C" __global__ void rnn_bwd_step_f64(const RnnParams p) { rnn_bwd_step<double>(p); }
extern "C" __global__ void lstm_bwd_step_f32(const RnnParams p) { lstm_bwd_step<float>(p); }
extern "C" __global__ void lstm_bwd_step_f64(const RnnParams p) { lstm_bwd_step<double>(p); }
extern "C" __global__ void gru_bwd_step_f32(const RnnParams p) { gru_bwd_step<float>(p); }
extern "C" __global__ void gru_bwd_step_f64(const RnnParams p) { gru_bwd_step<double>(p); }
extern "C" __global__ void gru_bwd_gates_f32(const RnnParams p) { gru_bwd_gates<float>(p); }
extern "C" __global__ void gru_bwd_gates_f64(const RnnParams p) { gru_bwd_gates<double>(p); }
