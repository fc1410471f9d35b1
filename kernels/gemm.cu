// Matrix products and data movement for the standard path: the input projection of a whole
// sequence, the per-step recurrent products, and the weight and input gradients over all
// T*B rows, plus the small reshuffles between the caller's layout and processing order.
#include "rnn.cuh"

// C[m, n] = alpha * sum_k A(m, k) * B(k, n) + beta * C[m, n], all row-major, where
// A(m, k) = trans_a ? a[k * lda + m] : a[m * lda + k] and
// B(k, n) = trans_b ? b[n * ldb + k] : b[k * ldb + n]. beta == 0 never reads C.
// Mirrored by `GemmParams` in src/cuda/params.rs (72 bytes).
struct GemmParams {
    int m;
    int n;
    int k;
    int lda;
    int ldb;
    int ldc;
    int trans_a;
    int trans_b;
    double alpha;
    double beta;
    unsigned long long a;
    unsigned long long b;
    unsigned long long c;
};

// Tiles of GEMM_TILE x GEMM_TILE outputs per block of GEMM_THREADS threads, each thread a
// 4 x 4 register tile; GEMM_DEPTH values of k per shared-memory stage. Grid: x over
// ceil(m / 64) row tiles, y over ceil(n / 64) column tiles.
#define GEMM_TILE 64
#define GEMM_DEPTH 16
#define GEMM_THREADS 256

template <typename T, bool TA, bool TB> __device__ void gemm_tile(const GemmParams& p) {
    __shared__ T as[GEMM_DEPTH][GEMM_TILE + 1];
    __shared__ T bs[GEMM_DEPTH][GEMM_TILE + 1];
    const T* a = ptr<const T>(p.a);
    const T* b = ptr<const T>(p.b);
    T* c = ptr<T>(p.c);
    const int row0 = blockIdx.x * GEMM_TILE, col0 = blockIdx.y * GEMM_TILE;
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    T acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int q = 0; q < 4; ++q) acc[i][q] = T(0);
    for (int k0 = 0; k0 < p.k; k0 += GEMM_DEPTH) {
        // 64 x 16 values of each operand, 4 per thread, the faster index along memory.
        for (int e = tid; e < GEMM_TILE * GEMM_DEPTH; e += GEMM_THREADS) {
            int mm, kk;
            if (TA) { kk = e / GEMM_TILE; mm = e % GEMM_TILE; } else { mm = e / GEMM_DEPTH; kk = e % GEMM_DEPTH; }
            int gm = row0 + mm, gk = k0 + kk;
            T v = T(0);
            if (gm < p.m && gk < p.k) v = TA ? a[(long long)gk * p.lda + gm] : a[(long long)gm * p.lda + gk];
            as[kk][mm] = v;
            int nn;
            if (TB) { nn = e / GEMM_DEPTH; kk = e % GEMM_DEPTH; } else { kk = e / GEMM_TILE; nn = e % GEMM_TILE; }
            int gn = col0 + nn;
            gk = k0 + kk;
            T w = T(0);
            if (gn < p.n && gk < p.k) w = TB ? b[(long long)gn * p.ldb + gk] : b[(long long)gk * p.ldb + gn];
            bs[kk][nn] = w;
        }
        __syncthreads();
        for (int kk = 0; kk < GEMM_DEPTH; ++kk) {
            T av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = as[kk][tr + 16 * i];
            for (int q = 0; q < 4; ++q) bv[q] = bs[kk][tc + 16 * q];
            for (int i = 0; i < 4; ++i)
                for (int q = 0; q < 4; ++q) acc[i][q] += av[i] * bv[q];
        }
        __syncthreads();
    }
    const T alpha = T(p.alpha), beta = T(p.beta);
    for (int i = 0; i < 4; ++i) {
        int gm = row0 + tr + 16 * i;
        if (gm >= p.m) continue;
        for (int q = 0; q < 4; ++q) {
            int gn = col0 + tc + 16 * q;
            if (gn >= p.n) continue;
            T* out = c + (long long)gm * p.ldc + gn;
            *out = beta == T(0) ? alpha * acc[i][q] : alpha * acc[i][q] + beta * *out;
        }
    }
}

template <typename T> __device__ void gemm(const GemmParams& p) {
    if (p.trans_a) {
        if (p.trans_b) gemm_tile<T, true, true>(p); else gemm_tile<T, true, false>(p);
    } else {
        if (p.trans_b) gemm_tile<T, false, true>(p); else gemm_tile<T, false, false>(p);
    }
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_f32(const GemmParams p) { gemm<float>(p); }
extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_f64(const GemmParams p) { gemm<double>(p); }

// dst[c] += sum_r src[r * ld + c] for c < cols, r < rows: bias gradients. One thread per
// column, rows summed in order (deterministic).
template <typename T>
__device__ void sum_rows(int rows, int cols, int ld, unsigned long long src, unsigned long long dst) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const T* s = ptr<const T>(src);
    T acc = T(0);
    for (int r = 0; r < rows; ++r) acc += s[(long long)r * ld + c];
    ptr<T>(dst)[c] += acc;
}
extern "C" __global__ void sum_rows_f32(int rows, int cols, int ld, unsigned long long src, unsigned long long dst) { sum_rows<float>(rows, cols, ld, src, dst); }
extern "C" __global__ void sum_rows_f64(int rows, int cols, int ld, unsigned long long src, unsigned long long dst) { sum_rows<double>(rows, cols, ld, src, dst); }

// Moves rows between the caller's layout and processing order. Processing row (t, b) of
// width `width` is caller step s = go_backwards ? T-1-t : t, at (s*B + b)*width (time-major)
// or (b*T + s)*width (batch-major). to_caller: dst[caller] = src[processing]; otherwise the
// reverse. Any grid; a grid-stride loop covers all T*B*width values.
template <typename T>
__device__ void permute_rows(int time_steps, int batch, int width, int batch_major, int go_backwards,
                             int to_caller, unsigned long long src, unsigned long long dst) {
    const long long total = (long long)time_steps * batch * width;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long row = e / width;
        int k = (int)(e % width), t = (int)(row / batch), b = (int)(row % batch);
        int s = go_backwards ? time_steps - 1 - t : t;
        long long caller = (batch_major ? (long long)b * time_steps + s : (long long)s * batch + b) * width + k;
        if (to_caller) ptr<T>(dst)[caller] = ptr<const T>(src)[e];
        else ptr<T>(dst)[e] = ptr<const T>(src)[caller];
    }
}
extern "C" __global__ void permute_rows_f32(int time_steps, int batch, int width, int batch_major, int go_backwards, int to_caller, unsigned long long src, unsigned long long dst) { permute_rows<float>(time_steps, batch, width, batch_major, go_backwards, to_caller, src, dst); }
extern "C" __global__ void permute_rows_f64(int time_steps, int batch, int width, int batch_major, int go_backwards, int to_caller, unsigned long long src, unsigned long long dst) { permute_rows<double>(time_steps, batch, width, batch_major, go_backwards, to_caller, src, dst); }

// dst[n*len + e] = src[n*stride + e] for n < count, e < len: e.g. state 0 (h) of every
// snapshot of a training record, stacked. Grid-stride loop.
template <typename T>
__device__ void gather_blocks(int count, long long len, long long stride, unsigned long long src, unsigned long long dst) {
    const long long total = (long long)count * len;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long n = e / len, i = e % len;
        ptr<T>(dst)[e] = ptr<const T>(src)[n * stride + i];
    }
}
extern "C" __global__ void gather_blocks_f32(int count, long long len, long long stride, unsigned long long src, unsigned long long dst) { gather_blocks<float>(count, len, stride, src, dst); }
extern "C" __global__ void gather_blocks_f64(int count, long long len, long long stride, unsigned long long src, unsigned long long dst) { gather_blocks<double>(count, len, stride, src, dst); }
