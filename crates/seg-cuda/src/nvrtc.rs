//! CUDA kernels for what candle's tensor ops do in many passes: SGD's in-place update, one
//! kernel per parameter (candle's ops would take eight passes and two fresh buffers), and the
//! 2×2 max pool with its first-maximum gradient, one kernel each way (the reshape + max
//! composite takes about ten, and sends the gradient to every tied maximum, unlike the CPU
//! op). The bias and ReLU after a convolution in place, and ReLU's gradient with the bias
//! gradient, one pass each (cuDNN's calls took two). For bf16 mixed precision: the same pool on
//! bf16 (exact: a maximum and a routed gradient need no rounding), and the bias kernels on bf16
//! with f32 arithmetic. And the per-pixel argmax of a prediction. bf16 values are handled as their bits (`unsigned
//! short`) with explicit conversions, so no CUDA header is needed. The source is compiled with
//! NVRTC the first time it is needed, once per process.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Storage, Tensor};
use half::bf16;
use std::sync::OnceLock;

const MODULE: &str = "seg_nn_kernels";

/// The kernels' source (`kernels.cu`): the same arithmetic, in the same order, as the CPU
/// kernels in `seg_kernels::update` and `seg_kernels::pool`.
const SRC: &str = include_str!("kernels.cu");

/// Elements of one channel per block of `relu_grad_part_*` (`CHUNK` in the source).
const CHUNK: usize = 4096;

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

/// An element type of the pool, bias and ReLU kernels: f32, or bf16 (arithmetic in f32).
trait Elem: CudaDType + DeviceRepr {
    /// The kernels' name suffix.
    const SUFFIX: &'static str;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Elem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// 2×2 max pool, stride 2, of a contiguous `N×C×H×W` f32 or bf16 tensor.
pub fn max_pool2(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    match x.dtype() {
        DType::F32 => max_pool2_of::<f32>(x, l),
        DType::BF16 => max_pool2_of::<bf16>(x, l),
        other => candle_core::bail!("max_pool2x2 on CUDA: f32 or bf16 expected, got {other:?}"),
    }
}

fn max_pool2_of<T: Elem>(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    const WHAT: &str = "max_pool2x2";
    let (planes, h, w) = pool_dims(l, WHAT)?;
    let (x0, x1) = range(l, WHAT)?;
    let n = planes as usize * (h / 2) as usize * (w / 2) as usize;
    let (cfg, _) = config(n, WHAT)?;
    let dev = x.device().clone();
    let func = dev.get_or_load_custom_func(&format!("max_pool2_fwd_{}", T::SUFFIX), MODULE, ptx()?)?;
    let xv = x.as_cuda_slice::<T>()?.slice(x0..x1);
    // SAFETY: the kernel writes every one of the `n` outputs.
    let mut y = unsafe { dev.alloc::<T>(n) }?;
    let mut launch = func.builder();
    launch.arg(&xv).arg(&mut y).arg(&planes).arg(&h).arg(&w);
    // SAFETY: x holds planes·h·w elements of T, y planes·(h/2)·(w/2).
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// The pool's input gradient from its input `x` and output gradient `g` (both f32 or both
/// bf16).
pub fn max_pool2_bwd(x: &CudaStorage, lx: &Layout, g: &CudaStorage, lg: &Layout) -> Result<CudaStorage> {
    match (x.dtype(), g.dtype()) {
        (DType::F32, DType::F32) => max_pool2_bwd_of::<f32>((x, lx), (g, lg)),
        (DType::BF16, DType::BF16) => max_pool2_bwd_of::<bf16>((x, lx), (g, lg)),
        (a, b) => candle_core::bail!("max_pool2x2 backward on CUDA: input {a:?} and gradient {b:?}"),
    }
}

fn max_pool2_bwd_of<T: Elem>(
    (x, lx): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    const WHAT: &str = "max_pool2x2 backward";
    let (planes, h, w) = pool_dims(lx, WHAT)?;
    let ((x0, x1), (g0, g1)) = (range(lx, WHAT)?, range(lg, WHAT)?);
    let windows = planes as usize * (h / 2) as usize * (w / 2) as usize;
    if g1 - g0 != windows {
        candle_core::bail!("{WHAT}: {} gradients for {windows} windows", g1 - g0);
    }
    let (cfg, _) = config(windows, WHAT)?;
    let dev = x.device().clone();
    let func = dev.get_or_load_custom_func(&format!("max_pool2_bwd_{}", T::SUFFIX), MODULE, ptx()?)?;
    let (xv, gv) = (
        x.as_cuda_slice::<T>()?.slice(x0..x1),
        g.as_cuda_slice::<T>()?.slice(g0..g1),
    );
    // SAFETY: every window writes all four of its elements, and the windows tile the input.
    let mut dx = unsafe { dev.alloc::<T>(x1 - x0) }?;
    let mut launch = func.builder();
    launch.arg(&xv).arg(&gv).arg(&mut dx).arg(&planes).arg(&h).arg(&w);
    // SAFETY: sizes checked above.
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

/// The per-pixel argmax over the channels of a contiguous f32 `N×C×HW` tensor: `N·HW` u32 ids,
/// the first maximum winning (as `seg_kernels::argmax`).
pub fn argmax_channels(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    const WHAT: &str = "argmax over channels";
    let (n, c, h, w) = l.shape().dims4()?;
    let (x0, x1) = range(l, WHAT)?;
    if c == 0 {
        candle_core::bail!("{WHAT}: no channels");
    }
    let u = |v: usize| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{WHAT}: {v} exceeds u32")));
    let (c32, hw32) = (u(c)?, u(h * w)?);
    let (cfg, pixels) = config(n * h * w, WHAT)?;
    let dev = x.device().clone();
    let func = dev.get_or_load_custom_func("argmax_channels", MODULE, ptx()?)?;
    let xv = x.as_cuda_slice::<f32>()?.slice(x0..x1);
    // SAFETY: the kernel writes every one of the `pixels` ids.
    let mut ids = unsafe { dev.alloc::<u32>(n * h * w) }?;
    let mut launch = func.builder();
    launch.arg(&xv).arg(&mut ids).arg(&c32).arg(&hw32).arg(&pixels);
    // SAFETY: x holds N·C·HW values, ids N·HW.
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(CudaStorage::wrap_cuda_slice(ids, dev))
}

/// `y = relu(y + b)` in place, for a contiguous `N×C×HW` result `y` (as a convolution gives it,
/// offset 0) and a bias `b` of `C` values of the same type, f32 or bf16: one pass (cuDNN's bias
/// add and activation took two), and for bf16 one rounding, as PyTorch's bf16 bias add.
pub fn bias_relu(y: &mut CudaStorage, dims: (usize, usize, usize), b: &CudaStorage, lb: &Layout) -> Result<()> {
    match (y.dtype(), b.dtype()) {
        (DType::F32, DType::F32) => bias_relu_of::<f32>(y, dims, b, lb),
        (DType::BF16, DType::BF16) => bias_relu_of::<bf16>(y, dims, b, lb),
        (a, c) => candle_core::bail!("bias + relu on CUDA: output {a:?} and bias {c:?}"),
    }
}

fn bias_relu_of<T: Elem>(
    y: &mut CudaStorage,
    (n, c, hw): (usize, usize, usize),
    b: &CudaStorage,
    lb: &Layout,
) -> Result<()> {
    const WHAT: &str = "bias + relu";
    let (b0, b1) = range(lb, WHAT)?;
    if b1 - b0 != c {
        candle_core::bail!("{WHAT}: {} bias values for {c} channels", b1 - b0);
    }
    let total = n * c * hw;
    if y.as_cuda_slice::<T>()?.len() < total {
        candle_core::bail!("{WHAT}: the output holds fewer than {total} values");
    }
    let (cfg, total) = config(total, WHAT)?;
    let u = |v: usize| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{WHAT}: {v} exceeds u32")));
    let (c32, hw32) = (u(c)?, u(hw)?);
    let dev = y.device().clone();
    let func = dev.get_or_load_custom_func(&format!("bias_relu_{}", T::SUFFIX), MODULE, ptx()?)?;
    let bv = b.as_cuda_slice::<T>()?.slice(b0..b1);
    let yv = y.as_cuda_slice_mut::<T>()?;
    let mut launch = func.builder();
    launch.arg(yv).arg(&bv).arg(&c32).arg(&hw32).arg(&total);
    // SAFETY: y holds at least `total` = N·C·HW values (checked), b holds C.
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// ReLU's gradient `g = dr · [r > 0]` and the bias gradient `Σ g` per channel, from the ReLU
/// output `r` (`N×C×H×W`, CUDA, both f32 or both bf16): one pass over the tensors (cuDNN's
/// activation backward and bias gradient took two), the sums accumulated in f32 in a fixed
/// order (per chunk, then the chunks in order: the same bits every run), then given in `dr`'s
/// type.
pub fn relu_grad_and_bias_sum(dr: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
    match (dr.dtype(), r.dtype()) {
        (DType::F32, DType::F32) => relu_grad_of::<f32>(dr, r),
        (DType::BF16, DType::BF16) => relu_grad_of::<bf16>(dr, r),
        (a, b) => candle_core::bail!("relu-grad on CUDA: gradient {a:?} and output {b:?}"),
    }
}

fn relu_grad_of<T: Elem>(dr: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
    const WHAT: &str = "relu-grad";
    let (n, c, h, w) = dr.dims4()?;
    if r.dims4()? != (n, c, h, w) {
        candle_core::bail!("{WHAT}: gradient {:?} and output {:?} differ", dr.dims(), r.dims());
    }
    let (ds, dl) = dr.storage_and_layout();
    let (rs, rl) = r.storage_and_layout();
    let (Storage::Cuda(ds), Storage::Cuda(rs)) = (&*ds, &*rs) else {
        candle_core::bail!("{WHAT}: CUDA tensors expected")
    };
    let ((d0, d1), (r0, r1)) = (range(dl, WHAT)?, range(rl, WHAT)?);
    let total = n * c * h * w;
    let u = |v: usize| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{WHAT}: {v} exceeds u32")));
    let (n32, c32, hw32) = (u(n)?, u(c)?, u(h * w)?);
    u(total)?;
    let chunks = u((n * h * w).div_ceil(CHUNK).max(1))?;
    let cfg = LaunchConfig {
        grid_dim: (chunks, c32.max(1), 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let dev = ds.device().clone();
    let func = dev.get_or_load_custom_func(&format!("relu_grad_part_{}", T::SUFFIX), MODULE, ptx()?)?;
    let (dv, rv) = (
        ds.as_cuda_slice::<T>()?.slice(d0..d1),
        rs.as_cuda_slice::<T>()?.slice(r0..r1),
    );
    // SAFETY: the kernel writes every element of g (each (image, channel, pixel) once) and
    // every partial sum (each (channel, chunk) block once).
    let mut g = unsafe { dev.alloc::<T>(total) }?;
    // SAFETY: as above.
    let mut part = unsafe { dev.alloc::<f32>(c * chunks as usize) }?;
    let mut launch = func.builder();
    launch
        .arg(&dv)
        .arg(&rv)
        .arg(&mut g)
        .arg(&mut part)
        .arg(&n32)
        .arg(&c32)
        .arg(&hw32);
    // SAFETY: dr, r and g hold N·C·H·W values, part C·chunks; the grid is (chunks, C).
    unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    let (sum_cfg, _) = config(c, WHAT)?;
    let sum = dev.get_or_load_custom_func("sum_parts", MODULE, ptx()?)?;
    // SAFETY: one thread per channel writes its sum.
    let mut db = unsafe { dev.alloc::<f32>(c) }?;
    let mut launch = sum.builder();
    launch.arg(&part).arg(&mut db).arg(&chunks).arg(&c32);
    // SAFETY: part holds C·chunks values, db C.
    unsafe { launch.launch(sum_cfg) }.map_err(candle_core::Error::wrap)?;
    let wrap = |s: CudaStorage, shape: candle_core::Shape| {
        Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
    };
    Ok((
        wrap(CudaStorage::wrap_cuda_slice(g, dev.clone()), (n, c, h, w).into()),
        wrap(CudaStorage::wrap_cuda_slice(db, dev), c.into()).to_dtype(dr.dtype())?,
    ))
}

#[cfg(test)]
mod tests {
    /// NVRTC runs on the host: the source compiles on a machine without a GPU too.
    #[test]
    fn kernels_compile() {
        let ptx = super::ptx().unwrap();
        for k in [
            "sgd_step",
            "argmax_channels",
            "max_pool2_fwd_f32",
            "max_pool2_bwd_f32",
            "max_pool2_fwd_bf16",
            "max_pool2_bwd_bf16",
            "bias_relu_f32",
            "bias_relu_bf16",
            "relu_grad_part_f32",
            "relu_grad_part_bf16",
            "sum_parts",
        ] {
            assert!(ptx.contains(&format!(".entry {k}")), "{k} missing from the PTX");
        }
    }
}
