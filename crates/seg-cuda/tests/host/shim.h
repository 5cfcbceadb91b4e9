// CUDA's built-ins for host C++, so that `src/kernels.cu` compiles with the system's C++
// compiler: the thread and block indices are thread-local, a launch runs its blocks one after
// another, and a kernel that synchronises (`__syncthreads`) gets one host thread per CUDA thread
// of its block, held together by a barrier; `__shared__` arrays are then shared by those threads.
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x, y, z;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() {
    if (block_barrier) block_barrier->arrive_and_wait();
}
// Round-to-nearest operations: plain IEEE operations with contraction off (-ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Runs `kernel` (a callable that calls one `extern "C"` kernel) on a grid of `grid` blocks of
// `block.x` threads; `sync`: the kernel calls `__syncthreads`.
template <class K>
void launch(Dim3 grid, Dim3 block, bool sync, K kernel) {
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; by++) {
        for (unsigned bx = 0; bx < grid.x; bx++) {
            if (!sync) {
                for (unsigned t = 0; t < block.x; t++) {
                    blockIdx = {bx, by, 0};
                    threadIdx = {t, 0, 0};
                    kernel();
                }
                continue;
            }
            std::barrier<> barrier(block.x);
            block_barrier = &barrier;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < block.x; t++) {
                threads.emplace_back([&, t] {
                    blockIdx = {bx, by, 0};
                    threadIdx = {t, 0, 0};
                    kernel();
                });
            }
            for (auto& t : threads) t.join();
            block_barrier = nullptr;
        }
    }
}
