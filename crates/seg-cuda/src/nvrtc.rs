//! CUDA kernels for what candle's tensor ops do in many passes: SGD's in-place update, one
//! kernel per parameter (candle's ops would take eight passes and two fresh buffers), and the
//! 2×2 max pool with its first-maximum gradient, one kernel each way (the reshape + max
//! composite takes about ten, and sends the gradient to every tied maximum, unlike the CPU
//! op). The source is compiled with NVRTC the first time it is needed, once per process.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::{CudaStorage, Layout, Result};
use std::sync::OnceLock;

const MODULE: &str = "seg_nn_kernels";

/// The same arithmetic, in the same order, as the CPU kernels in `seg_kernels::update` and
/// `seg_kernels::pool`.
const SRC: &str = r#"
// SGD with momentum and weight decay in one pass: buf = m*buf + (g + wd*p); p -= lr*buf.
extern "C" __global__ void sgd_step(float* p, float* buf, const float* g, float m, float wd, float lr, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i];
    float gi = wd != 0.0f ? __fadd_rn(g[i], __fmul_rn(pi, wd)) : g[i];
    float b = m != 0.0f ? __fadd_rn(__fmul_rn(buf[i], m), gi) : gi;
    buf[i] = b;
    p[i] = __fsub_rn(pi, __fmul_rn(b, lr));
}

// One thread per output: x is planes x h x w, y planes x (h/2) x (w/2).
extern "C" __global__ void max_pool2_fwd(const float* x, float* y, unsigned int planes, unsigned int h, unsigned int w) {
    unsigned int ho = h / 2, wo = w / 2;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)planes * ho * wo) return;
    unsigned int ox = i % wo, oy = (i / wo) % ho;
    unsigned long long p = i / ((unsigned long long)wo * ho);
    const float* b = x + p * h * w + 2ull * oy * w + 2ull * ox;
    y[i] = fmaxf(fmaxf(fmaxf(b[0], b[1]), b[w]), b[w + 1]);
}

// One thread per window: the window's gradient goes to its first maximum (row-major order,
// later ties lose), the other three get zero.
extern "C" __global__ void max_pool2_bwd(const float* x, const float* g, float* dx, unsigned int planes, unsigned int h, unsigned int w) {
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
        if (x[o[k]] > x[o[best]]) best = k;
    }
    for (int k = 0; k < 4; k++) {
        dx[o[k]] = k == best ? g[i] : 0.0f;
    }
}
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| nvrtc::compile_ptx(SRC).map(|p| p.to_src()).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("NVRTC could not compile the SGD and max-pool kernels: {e}")))
}

fn range(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: contiguous operands expected")))
}

/// Launch configuration for `n` threads; `n` as the kernels take it.
fn config(n: usize, what: &str) -> Result<(LaunchConfig, u32)> {
    let n32 = u32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what}: {n} elements exceed u32")))?;
    Ok((
        LaunchConfig {
            grid_dim: (n32.div_ceil(256).max(1), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        },
        n32,
    ))
}

/// One SGD step in place: `buf = m·buf + (g + wd·p)`, then `p = p − lr·buf`. `p` is the op's
/// in-place operand; `buf` is written too (through its device pointer: candle has no in-place
/// op with two outputs), so it must be a buffer only the optimiser holds.
pub fn sgd_step(
    p: &mut CudaStorage,
    lp: &Layout,
    buf: &CudaStorage,
    lb: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    (m, wd, lr): (f32, f32, f32),
) -> Result<()> {
    const WHAT: &str = "sgd-step";
    let ((p0, p1), (b0, b1), (g0, g1)) = (range(lp, WHAT)?, range(lb, WHAT)?, range(lg, WHAT)?);
    if p1 - p0 != b1 - b0 || p1 - p0 != g1 - g0 {
        candle_core::bail!("{WHAT}: operands of different sizes");
    }
    let (cfg, n) = config(p1 - p0, WHAT)?;
    let dev = p.device().clone();
    let func = dev.get_or_load_custom_func("sgd_step", MODULE, ptx()?)?;
    let (bv, gv) = (
        buf.as_cuda_slice::<f32>()?.slice(b0..b1),
        g.as_cuda_slice::<f32>()?.slice(g0..g1),
    );
    let mut pv = p.as_cuda_slice_mut::<f32>()?.slice_mut(p0..p1);
    let mut launch = func.builder();
    launch.arg(&mut pv).arg(&bv).arg(&gv).arg(&m).arg(&wd).arg(&lr).arg(&n);
    // SAFETY: the kernel reads and writes `n` elements of each view, which all hold `n`.
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// `(planes, h, w)` of a contiguous `N×C×H×W` operand with even `H` and `W`.
fn pool_dims(l: &Layout, what: &str) -> Result<(u32, u32, u32)> {
    let (n, c, h, w) = l.shape().dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("{what}: even height and width expected, got {h}x{w}");
    }
    let u = |v: usize| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} exceeds u32")));
    Ok((u(n * c)?, u(h)?, u(w)?))
}

/// 2×2 max pool, stride 2, of a contiguous `N×C×H×W` f32 tensor.
pub fn max_pool2(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    const WHAT: &str = "max_pool2x2";
    let (planes, h, w) = pool_dims(l, WHAT)?;
    let (x0, x1) = range(l, WHAT)?;
    let n = planes as usize * (h / 2) as usize * (w / 2) as usize;
    let (cfg, _) = config(n, WHAT)?;
    let dev = x.device().clone();
    let func = dev.get_or_load_custom_func("max_pool2_fwd", MODULE, ptx()?)?;
    let xv = x.as_cuda_slice::<f32>()?.slice(x0..x1);
    // SAFETY: the kernel writes every one of the `n` outputs.
    let mut y = unsafe { dev.alloc::<f32>(n) }?;
    let mut launch = func.builder();
    launch.arg(&xv).arg(&mut y).arg(&planes).arg(&h).arg(&w);
    // SAFETY: x holds planes·h·w elements, y planes·(h/2)·(w/2).
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// The pool's input gradient from its input `x` and output gradient `g`.
pub fn max_pool2_bwd(x: &CudaStorage, lx: &Layout, g: &CudaStorage, lg: &Layout) -> Result<CudaStorage> {
    const WHAT: &str = "max_pool2x2 backward";
    let (planes, h, w) = pool_dims(lx, WHAT)?;
    let ((x0, x1), (g0, g1)) = (range(lx, WHAT)?, range(lg, WHAT)?);
    let windows = planes as usize * (h / 2) as usize * (w / 2) as usize;
    if g1 - g0 != windows {
        candle_core::bail!("{WHAT}: {} gradients for {windows} windows", g1 - g0);
    }
    let (cfg, _) = config(windows, WHAT)?;
    let dev = x.device().clone();
    let func = dev.get_or_load_custom_func("max_pool2_bwd", MODULE, ptx()?)?;
    let (xv, gv) = (
        x.as_cuda_slice::<f32>()?.slice(x0..x1),
        g.as_cuda_slice::<f32>()?.slice(g0..g1),
    );
    // SAFETY: every window writes all four of its elements, and the windows tile the input.
    let mut dx = unsafe { dev.alloc::<f32>(x1 - x0) }?;
    let mut launch = func.builder();
    launch.arg(&xv).arg(&gv).arg(&mut dx).arg(&planes).arg(&h).arg(&w);
    // SAFETY: sizes checked above.
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

#[cfg(test)]
mod tests {
    /// NVRTC runs on the host: the source compiles on a machine without a GPU too.
    #[test]
    fn kernels_compile() {
        let ptx = super::ptx().unwrap();
        for k in ["sgd_step", "max_pool2_fwd", "max_pool2_bwd"] {
            assert!(ptx.contains(&format!(".entry {k}")), "{k} missing from the PTX");
        }
    }
}
