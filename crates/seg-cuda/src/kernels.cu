// CUDA C for `nvrtc.rs`, compiled with NVRTC at run time. The same arithmetic, in the same
// order, as the CPU kernels in `seg_kernels`. `tests/kernels_on_host.rs` also compiles this file
// as host C++ (tests/host/shim.h stands in for CUDA's built-ins) and checks every kernel
// against a plain loop, so the kernels' logic is tested on machines without a GPU.

// SGD with momentum and weight decay in one pass: buf = m*buf + (g + wd*p); p -= lr*buf.
extern "C" __global__ void sgd_step(float* p, float* buf, const float* g, float m, float wd, float lr, unsigned int n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i];
    float gi = wd != 0.0f ? __fadd_rn(g[i], __fmul_rn(pi, wd)) : g[i];
    float b = m != 0.0f ? __fadd_rn(__fmul_rn(buf[i], m), gi) : gi;
    buf[i] = b;
    p[i] = __fsub_rn(pi, __fmul_rn(b, lr));
}

// bf16 as its bits: widening is exact; narrowing rounds to nearest even (NaN stays NaN).
__device__ __forceinline__ float bf_f(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short f_bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// The same element access for f32 and bf16 (widened to f32, narrowed with one rounding).
__device__ __forceinline__ float ld(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, unsigned long long i) { return bf_f(p[i]); }
__device__ __forceinline__ void st(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, unsigned long long i, float v) { p[i] = f_bf(v); }

// One thread per output: x is planes x h x w, y planes x (h/2) x (w/2).
template <typename T>
__device__ void max_pool2_fwd(const T* x, T* y, unsigned int planes, unsigned int h, unsigned int w) {
    unsigned int ho = h / 2, wo = w / 2;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)planes * ho * wo) return;
    unsigned int ox = i % wo, oy = (i / wo) % ho;
    unsigned long long p = i / ((unsigned long long)wo * ho);
    const T* b = x + p * h * w + 2ull * oy * w + 2ull * ox;
    st(y, i, fmaxf(fmaxf(fmaxf(ld(b, 0), ld(b, 1)), ld(b, w)), ld(b, w + 1)));
}
extern "C" __global__ void max_pool2_fwd_f32(const float* x, float* y, unsigned int planes, unsigned int h, unsigned int w) { max_pool2_fwd(x, y, planes, h, w); }
extern "C" __global__ void max_pool2_fwd_bf16(const unsigned short* x, unsigned short* y, unsigned int planes, unsigned int h, unsigned int w) { max_pool2_fwd(x, y, planes, h, w); }

// One thread per window: the window's gradient goes to its first maximum (row-major order,
// later ties lose), the other three get zero.
template <typename T>
__device__ void max_pool2_bwd(const T* x, const T* g, T* dx, unsigned int planes, unsigned int h, unsigned int w) {
    unsigned int ho = h / 2, wo = w / 2;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)planes * ho * wo) return;
    unsigned int ox = i % wo, oy = (i / wo) % ho;
    unsigned long long p = i / ((unsigned long long)wo * ho);
    unsigned long long o[4];
    o[0] = p * h * w + 2ull * oy * w + 2ull * ox;
    o[1] = o[0] + 1;
    o[2] = o[0] + w;
    o[3] = o[2] + 1;
    int best = 0;
    for (int k = 1; k < 4; k++) {
        if (ld(x, o[k]) > ld(x, o[best])) best = k;
    }
    for (int k = 0; k < 4; k++) {
        dx[o[k]] = k == best ? g[i] : (T)0;
    }
}
extern "C" __global__ void max_pool2_bwd_f32(const float* x, const float* g, float* dx, unsigned int planes, unsigned int h, unsigned int w) { max_pool2_bwd(x, g, dx, planes, h, w); }
extern "C" __global__ void max_pool2_bwd_bf16(const unsigned short* x, const unsigned short* g, unsigned short* dx, unsigned int planes, unsigned int h, unsigned int w) { max_pool2_bwd(x, g, dx, planes, h, w); }

// The class id of every pixel: the first maximum over the c channels of an n x c x hw tensor,
// one thread per pixel (neighbouring threads read neighbouring pixels of one channel).
extern "C" __global__ void argmax_channels(const float* x, unsigned int* ids, unsigned int c, unsigned int hw, unsigned int pixels) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels) return;
    const float* p = x + (unsigned long long)(i / hw) * c * hw + (i % hw);
    float best = p[0];
    unsigned int id = 0;
    for (unsigned int k = 1; k < c; k++) {
        float v = p[(unsigned long long)k * hw];
        if (v > best) { best = v; id = k; }
    }
    ids[i] = id;
}

// y = relu(y + b[channel]) in place on an N x C x HW tensor (for bf16: one rounding).
template <typename T>
__device__ void bias_relu(T* y, const T* b, unsigned int c, unsigned int hw, unsigned int n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ld(y, i) + ld(b, (i / hw) % c);
    st(y, i, v > 0.0f ? v : 0.0f);
}
extern "C" __global__ void bias_relu_f32(float* y, const float* b, unsigned int c, unsigned int hw, unsigned int n) { bias_relu(y, b, c, hw, n); }
extern "C" __global__ void bias_relu_bf16(unsigned short* y, const unsigned short* b, unsigned int c, unsigned int hw, unsigned int n) { bias_relu(y, b, c, hw, n); }

// g = dr * [r > 0] (exact) over N x C x HW, and part[channel * chunks + chunk] = the f32 sum of
// g over that chunk of CHUNK elements of the channel. Grid: (chunks, C), 256 threads.
#define CHUNK 4096
template <typename T>
__device__ void relu_grad_part(const T* dr, const T* r, T* g, float* part, unsigned int n, unsigned int c, unsigned int hw) {
    __shared__ float sums[256];
    unsigned int ch = blockIdx.y;
    unsigned long long per = (unsigned long long)n * hw;
    unsigned long long k0 = (unsigned long long)blockIdx.x * CHUNK;
    float acc = 0.0f;
    for (unsigned long long k = k0 + threadIdx.x; k < k0 + CHUNK && k < per; k += blockDim.x) {
        unsigned long long img = k / hw, j = k % hw;
        unsigned long long at = (img * c + ch) * hw + j;
        float v = ld(r, at) > 0.0f ? ld(dr, at) : 0.0f;
        st(g, at, v);
        acc += v;
    }
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sums[threadIdx.x] += sums[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[(unsigned long long)ch * gridDim.x + blockIdx.x] = sums[0];
}
extern "C" __global__ void relu_grad_part_f32(const float* dr, const float* r, float* g, float* part, unsigned int n, unsigned int c, unsigned int hw) { relu_grad_part(dr, r, g, part, n, c, hw); }
extern "C" __global__ void relu_grad_part_bf16(const unsigned short* dr, const unsigned short* r, unsigned short* g, float* part, unsigned int n, unsigned int c, unsigned int hw) { relu_grad_part(dr, r, g, part, n, c, hw); }

// db[channel] = the sum of its chunks' partial sums, in chunk order (deterministic).
extern "C" __global__ void sum_parts(const float* part, float* db, unsigned int chunks, unsigned int c) {
    unsigned int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    float acc = 0.0f;
    for (unsigned int k = 0; k < chunks; k++) acc += part[(unsigned long long)ch * chunks + k];
    db[ch] = acc;
}
