// The per-unit maths of every cell, shared by the step kernels (step.cu) and the persistent
// kernels (persistent.cu) so that both paths compute exactly the same thing. Each function
// handles one (batch row b, hidden unit j) pair; `pre_*` are full pre-activations
// (input projection + recurrent product + recurrent bias). Formulas and training records
// follow src/cpu/step.rs: gate order LSTM i, f, c~, o; GRU z, r, h~.
#pragma once
#include "rnn.cuh"

#define GATE_LSTM_I 0
#define GATE_LSTM_F 1
#define GATE_LSTM_C 2
#define GATE_LSTM_O 3
#define GATE_GRU_Z 0
#define GATE_GRU_R 1
#define GATE_GRU_H 2

#define CELL_RNN 0
#define CELL_LSTM 1
#define CELL_GRU 2

template <int CELL> struct CellGates;
template <> struct CellGates<CELL_RNN> { static constexpr int value = 1; static constexpr int states = 1; };
template <> struct CellGates<CELL_LSTM> { static constexpr int value = 4; static constexpr int states = 2; };
template <> struct CellGates<CELL_GRU> { static constexpr int value = 3; static constexpr int states = 1; };

// Index of (step t, row b, column c) of a [T, B, width] tensor.
__device__ __forceinline__ long long row_index(int t, int batch, int b, int width, int c) {
    return ((long long)t * batch + b) * width + c;
}

// The upstream gradient on h of row b, unit j at step t (0 without one).
template <typename T> __device__ __forceinline__ T dy_at(const RnnParams& p, int t, int b, int j) {
    if (p.dy == 0) return T(0);
    const T* dy = ptr<const T>(p.dy);
    if (p.dy_every_step) return dy[row_index(t, p.batch, b, p.hidden, j)];
    return t == p.time_steps - 1 ? dy[(long long)b * p.hidden + j] : T(0);
}

// Recurrent bias of column c, 0 without biases.
template <typename T> __device__ __forceinline__ T rbias(const RnnParams& p, int c) {
    return p.recurrent_bias == 0 ? T(0) : ptr<const T>(p.recurrent_bias)[c];
}

// ---- SimpleRNN ----------------------------------------------------------------------------

// h = act(pre); returns h.
template <typename T> __device__ __forceinline__ T rnn_unit_forward(const RnnParams& p, T pre) {
    return activate<T>(p.activation, pre);
}

// d_pre = dh * act'(h).
template <typename T> __device__ __forceinline__ T rnn_unit_backward(const RnnParams& p, T dh, T h) {
    return dh * activate_grad<T>(p.activation, h);
}

// ---- LSTM ---------------------------------------------------------------------------------

// Gates from the four pre-activations; writes h, c and (tape != null) the record
// i, f, c~, o, act(c) at tape[k*H + j].
template <typename T>
__device__ __forceinline__ void lstm_unit_forward(const RnnParams& p, const T pre[4], T c_prev,
                                                  T* h_out, T* c_out, T* tape, int j) {
    const int ra = p.recurrent_activation, a = p.activation, H = p.hidden;
    T i = activate<T>(ra, pre[GATE_LSTM_I]);
    T f = activate<T>(ra, pre[GATE_LSTM_F]);
    T g = activate<T>(a, pre[GATE_LSTM_C]);
    T o = activate<T>(ra, pre[GATE_LSTM_O]);
    T c = f * c_prev + i * g;
    T act_c = activate<T>(a, c);
    *c_out = c;
    *h_out = o * act_c;
    if (tape) {
        tape[GATE_LSTM_I * H + j] = i;
        tape[GATE_LSTM_F * H + j] = f;
        tape[GATE_LSTM_C * H + j] = g;
        tape[GATE_LSTM_O * H + j] = o;
        tape[4 * H + j] = act_c;
    }
}

// From the record and the gradients on h and c after the step: the four pre-activation
// gradients (d_pre) and the gradient on c before the step.
template <typename T>
__device__ __forceinline__ void lstm_unit_backward(const RnnParams& p, const T* tape, int j, T c_prev,
                                                   T dh, T dc_next, T d_pre[4], T* dc_prev) {
    const int ra = p.recurrent_activation, a = p.activation, H = p.hidden;
    T i = tape[GATE_LSTM_I * H + j], f = tape[GATE_LSTM_F * H + j];
    T g = tape[GATE_LSTM_C * H + j], o = tape[GATE_LSTM_O * H + j];
    T act_c = tape[4 * H + j];
    T dc = dc_next + dh * o * activate_grad<T>(a, act_c);
    d_pre[GATE_LSTM_I] = dc * g * activate_grad<T>(ra, i);
    d_pre[GATE_LSTM_F] = dc * c_prev * activate_grad<T>(ra, f);
    d_pre[GATE_LSTM_C] = dc * i * activate_grad<T>(a, g);
    d_pre[GATE_LSTM_O] = dh * act_c * activate_grad<T>(ra, o);
    *dc_prev = dc * f;
}

// ---- GRU ----------------------------------------------------------------------------------

// The candidate and new state once z, r and the candidate's recurrent term are known:
// reset-after  h~ = act(px_h + r * rec_h), rec_h = h_prev*U_h + u_h;
// reset-before h~ = act(px_h + rec_h),     rec_h = (r*h_prev)*U_h + u_h.
// Writes the record z, r, h~ (and rec_h for reset-after) when tape != null; returns h.
template <typename T>
__device__ __forceinline__ T gru_unit_forward(const RnnParams& p, T z, T r, T px_h, T rec_h,
                                              T h_prev, T* tape, int j) {
    const int H = p.hidden;
    T gated = p.reset_after ? r * rec_h : rec_h;
    T cand = activate<T>(p.activation, px_h + gated);
    if (tape) {
        tape[GATE_GRU_Z * H + j] = z;
        tape[GATE_GRU_R * H + j] = r;
        tape[GATE_GRU_H * H + j] = cand;
        if (p.reset_after) tape[3 * H + j] = rec_h;
    }
    return z * h_prev + (T(1) - z) * cand;
}

// First part of the GRU backward: gradients of the update gate and candidate pre-activations
// and the direct path to h_prev (dh * z).
template <typename T>
__device__ __forceinline__ void gru_unit_backward_zh(const RnnParams& p, const T* tape, int j, T dh,
                                                     T h_prev, T* dz, T* dn, T* dh_prev) {
    const int H = p.hidden;
    T z = tape[GATE_GRU_Z * H + j], cand = tape[GATE_GRU_H * H + j];
    *dz = dh * (h_prev - cand) * activate_grad<T>(p.recurrent_activation, z);
    *dn = dh * (T(1) - z) * activate_grad<T>(p.activation, cand);
    *dh_prev = dh * z;
}
