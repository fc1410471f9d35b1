// A CPU emulation of the part of the NVIDIA driver API that cudarc and fused-rnn use, with
// the kernels of kernels/*.cu compiled in as host C++ (see cuda_shim.h and build.sh). Test
// infrastructure only: it lets tests/cuda.rs exercise the GPU code path on a machine without
// a GPU. Device memory is host memory with a guard page after every allocation (an access
// past the end faults) and is filled with NaN bytes when allocated; dynamic shared memory is
// allocated per block with the exact size the launch asks for, also guarded and NaN-filled.
// Work runs synchronously at enqueue time. Device properties come from the environment:
// EMU_SM_COUNT (default 8) and EMU_SMEM_OPTIN (bytes, default 232448).
#include "step.cu"
#include "persistent.cu"
#include "gemm.cu"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum : int {
    OK = 0,
    ERR_INVALID_VALUE = 1,
    ERR_NOT_FOUND = 500,
    ERR_LAUNCH_FAILED = 719,
    ERR_COOPERATIVE_TOO_LARGE = 720,
};

// ---- device properties --------------------------------------------------------------------

static int env_int(const char* name, int fallback) {
    const char* v = getenv(name);
    return v ? atoi(v) : fallback;
}
static int sm_count() { return env_int("EMU_SM_COUNT", 8); }
static int smem_optin() { return env_int("EMU_SMEM_OPTIN", 232448); }
static const int DEFAULT_DYNAMIC_SMEM = 48 * 1024;

// ---- guarded memory -----------------------------------------------------------------------

static std::mutex mem_lock;
static std::map<uintptr_t, std::pair<void*, size_t>> mappings;  // user pointer -> (base, length)

static void* guarded_alloc(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (bytes + page - 1) / page * page;
    if (body == 0) body = page;
    size_t total = body + page;
    char* base = (char*)mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect(base + body, page, PROT_NONE);
    char* user = base + (body - bytes);  // the buffer ends at the guard page
    memset(user, 0xFF, bytes);           // NaN in every float type: uninitialised reads show
    std::lock_guard<std::mutex> g(mem_lock);
    mappings[(uintptr_t)user] = {base, total};
    return user;
}

static void guarded_free(void* p) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = mappings.find((uintptr_t)p);
    if (it == mappings.end()) return;
    munmap(it->second.first, it->second.second);
    mappings.erase(it);
}

// ---- fibers: the threads of one block -----------------------------------------------------

namespace emu {
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

struct Block {
    std::vector<ucontext_t> ctx;
    std::vector<bool> done;
    ucontext_t scheduler;
    int current = 0;
    int live = 0;
    // Block barrier and per-warp barriers: arrivals and generation.
    int arrived = 0;
    unsigned long generation = 0;
    std::vector<int> warp_arrived;
    std::vector<unsigned long> warp_generation;
    std::vector<double> warp_slots;
    void* smem = nullptr;
    void (*thunk)(void**) = nullptr;
    void** args = nullptr;
};
thread_local Block* block = nullptr;
thread_local std::vector<char*> stacks;
static const size_t STACK_BYTES = 256 * 1024;

static void yield() { swapcontext(&block->ctx[block->current], &block->scheduler); }

void sync_block() {
    Block& b = *block;
    unsigned long gen = b.generation;
    if (++b.arrived == b.live) {
        b.arrived = 0;
        ++b.generation;
        return;
    }
    while (b.generation == gen) yield();
}

void sync_warp() {
    Block& b = *block;
    int w = (int)thread_idx.x / 32;
    unsigned long gen = b.warp_generation[w];
    int lanes = std::min(32, (int)b.done.size() - w * 32);
    if (++b.warp_arrived[w] == lanes) {
        b.warp_arrived[w] = 0;
        ++b.warp_generation[w];
        return;
    }
    while (b.warp_generation[w] == gen) yield();
}

double* warp_slot() { return &block->warp_slots[(thread_idx.x / 32) * 32]; }
void* dynamic_smem() { return block->smem; }

static void fiber_main() {
    block->thunk(block->args);
    block->done[block->current] = true;
    block->live -= 1;
    // A barrier may now be complete without this thread.
    if (block->live > 0 && block->arrived == block->live) {
        block->arrived = 0;
        ++block->generation;
    }
}

// Runs block `bx` of a launch on the calling OS thread; `sync` kernels get fibers.
static void run_block(void (*thunk)(void**), void** args, bool sync, dim3 grid, dim3 blk, dim3 index,
                      size_t smem_bytes) {
    Block b;
    b.thunk = thunk;
    b.args = args;
    b.smem = smem_bytes ? guarded_alloc(smem_bytes) : nullptr;
    block = &b;
    grid_dim = grid;
    block_dim = blk;
    block_idx = index;
    const int n = (int)blk.x;
    if (!sync) {
        for (int t = 0; t < n; ++t) {
            thread_idx = dim3{(unsigned)t, 0, 0};
            thunk(args);
        }
    } else {
        b.ctx.resize(n);
        b.done.assign(n, false);
        b.live = n;
        b.warp_arrived.assign((n + 31) / 32, 0);
        b.warp_generation.assign((n + 31) / 32, 0);
        b.warp_slots.assign(((n + 31) / 32) * 32, 0.0);
        while ((int)stacks.size() < n) stacks.push_back((char*)malloc(STACK_BYTES));
        for (int t = 0; t < n; ++t) {
            getcontext(&b.ctx[t]);
            b.ctx[t].uc_stack.ss_sp = stacks[t];
            b.ctx[t].uc_stack.ss_size = STACK_BYTES;
            b.ctx[t].uc_link = &b.scheduler;
            makecontext(&b.ctx[t], fiber_main, 0);
        }
        while (b.live > 0) {
            for (int t = 0; t < n; ++t) {
                if (b.done[t]) continue;
                b.current = t;
                thread_idx = dim3{(unsigned)t, 0, 0};
                swapcontext(&b.scheduler, &b.ctx[t]);
            }
        }
    }
    if (b.smem) guarded_free(b.smem);
    block = nullptr;
}
}  // namespace emu

// ---- kernel registry ----------------------------------------------------------------------

struct Kernel {
    const char* name;
    void (*thunk)(void**);
    bool sync;  // uses __syncthreads / shuffles: needs fibers
    int max_dynamic_smem = DEFAULT_DYNAMIC_SMEM;
};

#define RNN(name, sync) {#name, [](void** a) { name(*static_cast<const RnnParams*>(a[0])); }, sync}
#define ARG(type, k) (*static_cast<type*>(a[k]))
static Kernel KERNELS[] = {
    RNN(rnn_fwd_step_f32, false), RNN(rnn_fwd_step_f64, false),
    RNN(lstm_fwd_step_f32, false), RNN(lstm_fwd_step_f64, false),
    RNN(gru_fwd_gates_f32, false), RNN(gru_fwd_gates_f64, false),
    RNN(gru_fwd_step_f32, false), RNN(gru_fwd_step_f64, false),
    RNN(rnn_bwd_step_f32, false), RNN(rnn_bwd_step_f64, false),
    RNN(lstm_bwd_step_f32, false), RNN(lstm_bwd_step_f64, false),
    RNN(gru_bwd_step_f32, false), RNN(gru_bwd_step_f64, false),
    RNN(gru_bwd_gates_f32, false), RNN(gru_bwd_gates_f64, false),
    RNN(rnn_fwd_persistent_f32, true), RNN(rnn_fwd_persistent_f64, true),
    RNN(lstm_fwd_persistent_f32, true), RNN(lstm_fwd_persistent_f64, true),
    RNN(gru_fwd_persistent_f32, true), RNN(gru_fwd_persistent_f64, true),
    RNN(rnn_bwd_persistent_f32, true), RNN(rnn_bwd_persistent_f64, true),
    RNN(lstm_bwd_persistent_f32, true), RNN(lstm_bwd_persistent_f64, true),
    RNN(gru_bwd_persistent_f32, true), RNN(gru_bwd_persistent_f64, true),
    {"gemm_f32", [](void** a) { gemm_f32(ARG(const GemmParams, 0)); }, true},
    {"gemm_f64", [](void** a) { gemm_f64(ARG(const GemmParams, 0)); }, true},
    {"sum_rows_f32", [](void** a) { sum_rows_f32(ARG(int, 0), ARG(int, 1), ARG(int, 2), ARG(unsigned long long, 3), ARG(unsigned long long, 4)); }, false},
    {"sum_rows_f64", [](void** a) { sum_rows_f64(ARG(int, 0), ARG(int, 1), ARG(int, 2), ARG(unsigned long long, 3), ARG(unsigned long long, 4)); }, false},
    {"permute_rows_f32", [](void** a) { permute_rows_f32(ARG(int, 0), ARG(int, 1), ARG(int, 2), ARG(int, 3), ARG(int, 4), ARG(int, 5), ARG(unsigned long long, 6), ARG(unsigned long long, 7)); }, false},
    {"permute_rows_f64", [](void** a) { permute_rows_f64(ARG(int, 0), ARG(int, 1), ARG(int, 2), ARG(int, 3), ARG(int, 4), ARG(int, 5), ARG(unsigned long long, 6), ARG(unsigned long long, 7)); }, false},
    {"gather_blocks_f32", [](void** a) { gather_blocks_f32(ARG(int, 0), ARG(long long, 1), ARG(long long, 2), ARG(unsigned long long, 3), ARG(unsigned long long, 4)); }, false},
    {"gather_blocks_f64", [](void** a) { gather_blocks_f64(ARG(int, 0), ARG(long long, 1), ARG(long long, 2), ARG(unsigned long long, 3), ARG(unsigned long long, 4)); }, false},
};

// Launch counts per kernel, printed at exit when EMU_STATS=1 (shows which kernels ran).
static std::mutex stats_lock;
static std::map<std::string, long> launches;
static struct StatsAtExit {
    ~StatsAtExit() {
        if (!getenv("EMU_STATS")) return;
        for (auto& [name, n] : launches) fprintf(stderr, "emulator: %8ld x %s\n", n, name.c_str());
    }
} stats_at_exit;

static CUresult launch(Kernel* k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                       unsigned smem, void** params, bool cooperative) {
    const bool two_d = k && std::string(k->name).rfind("gemm", 0) == 0;
    if (!k || (gy != 1 && !two_d) || gz != 1 || by != 1 || bz != 1 || bx == 0 || bx > 1024 || gx == 0) {
        fprintf(stderr, "emulator: unsupported launch shape for %s\n", k ? k->name : "?");
        return ERR_INVALID_VALUE;
    }
    if ((int)smem > k->max_dynamic_smem) {
        fprintf(stderr, "emulator: %s asks for %u bytes of dynamic shared memory, limit %d\n", k->name, smem,
                k->max_dynamic_smem);
        return ERR_INVALID_VALUE;
    }
    {
        std::lock_guard<std::mutex> g(stats_lock);
        launches[k->name] += 1;
    }
    dim3 grid{gx, gy, 1}, blk{bx, 1, 1};
    if (cooperative) {
        if (gy != 1 || (int)gx > sm_count()) return ERR_COOPERATIVE_TOO_LARGE;
        std::vector<std::thread> threads;
        for (unsigned b = 0; b < gx; ++b)
            threads.emplace_back([=] { emu::run_block(k->thunk, params, k->sync, grid, blk, dim3{b, 0, 1}, smem); });
        for (auto& t : threads) t.join();
        return OK;
    }
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned b = 0; b < gx; ++b) emu::run_block(k->thunk, params, k->sync, grid, blk, dim3{b, y, 1}, smem);
    return OK;
}

// ---- the driver API -----------------------------------------------------------------------

extern "C" {
typedef void* Handle;

CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { *v = 12080; return OK; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return OK; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return ERR_INVALID_VALUE; *d = 0; return OK; }
CUresult cuDeviceGetName(char* name, int len, int) {
    snprintf(name, len, "fused-rnn CPU emulation (not a GPU)");
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
    case 16: *v = sm_count(); return OK;       // multiprocessors
    case 75: *v = 9; return OK;                // compute capability 9.0
    case 76: *v = 0; return OK;
    case 95: *v = 1; return OK;                // cooperative launch
    case 97: *v = smem_optin(); return OK;     // opt-in shared memory per block
    case 115: *v = 0; return OK;               // memory pools: no (synchronous allocation)
    default: *v = 0; return OK;
    }
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) { *b = (size_t)1 << 34; return OK; }
static int the_context;
CUresult cuDevicePrimaryCtxRetain(Handle* ctx, int) { *ctx = &the_context; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxSetCurrent(Handle) { return OK; }
CUresult cuCtxGetCurrent(Handle* ctx) { *ctx = &the_context; return OK; }
CUresult cuCtxSynchronize() { return OK; }
CUresult cuStreamCreate(Handle* s, unsigned) { *s = new int(0); return OK; }
CUresult cuStreamDestroy_v2(Handle s) { delete (int*)s; return OK; }
CUresult cuStreamSynchronize(Handle) { return OK; }
CUresult cuStreamWaitEvent(Handle, Handle, unsigned) { return OK; }
CUresult cuEventCreate(Handle* e, unsigned) { *e = new int(0); return OK; }
CUresult cuEventDestroy_v2(Handle e) { delete (int*)e; return OK; }
CUresult cuEventRecord(Handle, Handle) { return OK; }
CUresult cuEventSynchronize(Handle) { return OK; }
CUresult cuEventQuery(Handle) { return OK; }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    void* m = guarded_alloc(bytes);
    if (!m) return 2;
    *p = (CUdeviceptr)m;
    return OK;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, Handle) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { guarded_free((void*)p); return OK; }
CUresult cuMemFreeAsync(CUdeviceptr p, Handle) { return cuMemFree_v2(p); }
CUresult cuMemGetInfo_v2(size_t* f, size_t* t) { *f = *t = (size_t)1 << 34; return OK; }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, Handle) { memset((void*)p, v, n); return OK; }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { memset((void*)p, v, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, Handle) { memcpy((void*)d, s, n); return OK; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { memcpy((void*)d, s, n); return OK; }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, Handle) { memcpy(d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { memcpy(d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, Handle) { memmove((void*)d, (void*)s, n); return OK; }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { memmove((void*)d, (void*)s, n); return OK; }

// A module is the PTX text; functions are found by name in the registry, and must also be
// declared as entries in the PTX that was loaded.
CUresult cuModuleLoadData(Handle* m, const void* image) { *m = new std::string((const char*)image); return OK; }
CUresult cuModuleUnload(Handle m) { delete (std::string*)m; return OK; }
CUresult cuModuleGetFunction(Handle* f, Handle m, const char* name) {
    const std::string& ptx = *(std::string*)m;
    if (ptx.find(std::string(".entry ") + name + "(") == std::string::npos) return ERR_NOT_FOUND;
    for (Kernel& k : KERNELS)
        if (strcmp(k.name, name) == 0) { *f = &k; return OK; }
    return ERR_NOT_FOUND;
}
CUresult cuFuncSetAttribute(Handle f, int attr, int value) {
    if (attr == 8) {  // max dynamic shared memory
        if (value > smem_optin()) return ERR_INVALID_VALUE;
        ((Kernel*)f)->max_dynamic_smem = value;
    }
    return OK;
}
CUresult cuFuncGetAttribute(int* v, int attr, Handle f) {
    *v = attr == 8 ? ((Kernel*)f)->max_dynamic_smem : 0;
    return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, Handle, int block, size_t smem, unsigned) {
    *n = (block <= 1024 && (int)smem <= smem_optin()) ? 1 : 0;
    return OK;
}
CUresult cuLaunchKernel(Handle f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, Handle, void** params, void** extra) {
    if (extra) return ERR_INVALID_VALUE;
    return launch((Kernel*)f, gx, gy, gz, bx, by, bz, smem, params, false);
}
CUresult cuLaunchCooperativeKernel(Handle f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned smem, Handle, void** params) {
    return launch((Kernel*)f, gx, gy, gz, bx, by, bz, smem, params, true);
}
CUresult cuGetErrorString(CUresult, const char** s) { *s = "emulated driver error"; return OK; }
CUresult cuGetErrorName(CUresult, const char** s) { *s = "CUDA_ERROR_EMULATED"; return OK; }
}
