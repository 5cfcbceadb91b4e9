//! Convolutions as candle custom ops: forward, input gradient and weight gradient, and the
//! fused `relu(conv + bias)`, each one op whose CPU side is a kernel of
//! [`seg_kernels::conv`] on the tensors' slices and whose CUDA side is a cuDNN call
//! ([`seg_cuda::cudnn`]); where cuDNN is missing, candle's own tensor ops compute it
//! ([`composite`]: im2col + cuBLAS, the input gradient of a stride-1 conv as a forward conv with
//! the flipped, transposed kernel). Transposed convolutions (FCN's learned upsampling) are the
//! same pieces with their roles swapped. Weight gradients go to [`crate::grad`]'s sink where
//! one is installed.
//!
//! Mixed precision: a piece takes f32 or bf16 operands, and where one is bf16 it computes in
//! bf16 (the other cast; on the CPU rounded to bf16 values, then the f32 kernels, the result
//! rounded back), with products accumulated in f32. Under autocast the activations are bf16 and
//! the weights and biases come as the f32 variables themselves: the op is built with a bf16 copy
//! of the weight, computes its forward with it and keeps it for the input gradient of its
//! backward pass (one cast per step, as PyTorch's autocast cache), and the bias is cast inside
//! the op. Their gradients come back in f32 (a bf16 product, widened) and reach
//! [`crate::grad`]'s sink as any variable's do. bf16 goes to cuDNN as bf16.

use super::{applies_low, f32_values, rounded_values, storage_of, to_bf16};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use seg_kernels::conv as kernel;
use seg_kernels::{Geom, Piece};
use std::ops::Deref;

/// The geometry of `conv2d(x, w)`, or candle's error naming the mismatch.
fn geom(
    x: (usize, usize, usize, usize),
    k: (usize, usize, usize, usize),
    stride: usize,
    pad: usize,
    dil: usize,
) -> Result<Geom> {
    Geom::conv(x, k, stride, pad, dil).map_err(|e| candle_core::Error::Msg(e.0))
}

#[derive(Debug, Clone)]
struct ConvOp {
    g: Geom,
    piece: Piece,
    /// The result's type where it is not the first operand's (a weight gradient: its
    /// weight's).
    out: Option<DType>,
    /// The bf16 copy of the weight under mixed precision (the forward pieces of a layer).
    w: Kept,
}

/// Under mixed precision (bf16 activations, an f32 weight variable), the weight's bf16 copy,
/// made once when the op is built and kept by the op until its backward pass, which reuses it
/// for the input gradient instead of casting the weight a second time (PyTorch's autocast keeps
/// its cast weights the same way). The forward pass computes with it in place of its second
/// operand, which stays the variable so its gradient reaches it.
#[derive(Debug, Clone, Default)]
struct Kept(Option<Tensor>);

impl Kept {
    /// The bf16 copy of `w` when `x` is bf16 and `w` f32; otherwise none.
    fn of(x: &Tensor, w: &Tensor) -> Result<Self> {
        Ok(Self(if x.dtype() == DType::BF16 && w.dtype() == DType::F32 {
            Some(w.detach().to_dtype(DType::BF16)?)
        } else {
            None
        }))
    }

    /// The weight operand of a backward piece: the kept copy, else the weight itself.
    fn or<'a>(&'a self, w: &'a Tensor) -> &'a Tensor {
        self.0.as_ref().unwrap_or(w)
    }

    /// The kept copy's storage (read-locked) and layout.
    fn storage(&self) -> Option<(impl Deref<Target = Storage> + '_, &Layout)> {
        self.0.as_ref().map(|t| t.storage_and_layout())
    }
}

/// An op's weight operand: the kept copy where there is one (its storage of the op's device,
/// `of` picks it), else `(s, l)`.
fn weight_operand<'a, S, G: Deref<Target = Storage>>(
    kept: &'a Option<(G, &Layout)>,
    (s, l): (&'a S, &'a Layout),
    of: fn(&Storage) -> Option<&S>,
) -> Result<(&'a S, &'a Layout)> {
    match kept {
        Some((st, kl)) => match of(st) {
            Some(c) => Ok((c, kl)),
            None => candle_core::bail!("conv2d: the kept bf16 weight is on another device"),
        },
        None => Ok((s, l)),
    }
}

fn cpu_storage(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Some(c),
        _ => None,
    }
}

/// Whether two operand types make a convolution: equal, or bf16 activations with f32
/// parameters (mixed precision).
fn compatible(x: DType, p: DType) -> bool {
    x == p || (x == DType::BF16 && p == DType::F32)
}

/// Whether any of the types is bf16: then the product is computed in bf16.
fn low(types: &[DType]) -> bool {
    types.contains(&DType::BF16)
}

impl ConvOp {
    fn out_shape(&self) -> Shape {
        Shape::from(self.piece.out_dims(&self.g).to_vec())
    }

    /// `piece` of this convolution on `(a, b)`, its result of type `out` (default: `a`'s).
    fn run(&self, a: &Tensor, b: &Tensor, piece: Piece, out: Option<DType>) -> Result<Tensor> {
        let op = ConvOp {
            g: self.g,
            piece,
            out,
            w: Kept::default(),
        };
        a.apply_op2_no_bwd(b, &op)
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.piece {
            Piece::Forward => "conv2d",
            Piece::InputGrad => "conv2d-input-grad",
            Piece::WeightGrad => "conv2d-weight-grad",
        }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let kept = self.w.storage();
        let (s2, l2) = weight_operand(&kept, (s2, l2), cpu_storage)?;
        let low = low(&[s1.dtype(), s2.dtype()]);
        let (a, b) = (
            rounded_values(s1, l1, self.name(), low)?,
            rounded_values(s2, l2, self.name(), low)?,
        );
        let g = &self.g;
        let out = match self.piece {
            Piece::Forward => kernel::forward(g, &a, &b),
            Piece::InputGrad => kernel::input_grad(g, &a, &b),
            Piece::WeightGrad => kernel::weight_grad(g, &a, &b),
        };
        Ok((storage_of(out, low, self.out.unwrap_or(s1.dtype())), self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let kept = self.w.storage();
        let (s2, l2) = cuda::weight(&kept, s2, l2)?;
        let dtype = if low(&[s1.dtype(), s2.dtype()]) {
            DType::BF16
        } else {
            s1.dtype()
        };
        let (c1, c2) = (cuda::cast(s1, l1, dtype)?, cuda::cast(s2, l2, dtype)?);
        let ((s1, l1), (s2, l2)) = (cuda::operand(&c1, s1, l1), cuda::operand(&c2, s2, l2));
        let (l1, l2) = (&*l1, &*l2);
        let out_dtype = self.out.unwrap_or(dtype);
        if seg_cuda::cudnn::takes(dtype) {
            if let Some(out) = seg_cuda::cudnn::conv(&self.g, self.piece, (s1, l1), (s2, l2))? {
                let shape = self.out_shape();
                let out = cuda::cast(&out, &Layout::contiguous(&shape), out_dtype)?.unwrap_or(out);
                return Ok((out, shape));
            }
        }
        let (a, b) = (cuda::tensor(s1, l1)?, cuda::tensor(s2, l2)?);
        let out = match self.piece {
            Piece::Forward => composite::forward(&self.g, &a, &b)?,
            Piece::InputGrad => composite::input_grad(&self.g, &a, &b)?,
            Piece::WeightGrad => composite::weight_grad(&self.g, &a, &b)?,
        };
        cuda::storage(&out.to_dtype(out_dtype)?)
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(res.dtype())?.contiguous()?;
        let w = self.w.or(b);
        match self.piece {
            // y = conv(x, w): dx = convᵀ(dy, w), dw = Σ dy · im2col(x)ᵀ.
            Piece::Forward => Ok((
                needed(a, || self.run(&grad, w, Piece::InputGrad, None))?,
                weight_grad(b, || self.run(a, &grad, Piece::WeightGrad, Some(b.dtype())))?,
            )),
            // A transposed conv t = convᵀ(u, w): du = conv(dt, w), dw = Σ u · im2col(dt)ᵀ.
            Piece::InputGrad => Ok((
                needed(a, || self.run(&grad, w, Piece::Forward, None))?,
                weight_grad(b, || self.run(&grad, a, Piece::WeightGrad, Some(b.dtype())))?,
            )),
            Piece::WeightGrad => candle_core::bail!("conv2d-weight-grad has no gradient"),
        }
    }
}

/// The same three pieces from candle's tensor ops (the CUDA path without cuDNN, and a reference
/// in tests).
pub mod composite {
    use super::Geom;
    use candle_core::{Result, Tensor};

    pub fn forward(g: &Geom, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.conv2d(w, g.pad, g.stride, g.dil, 1)
    }

    /// For stride 1: a forward conv of `dy` with the flipped, transposed kernel and padding
    /// `d·(k−1) − p` (a negative padding crops `dy` instead). Otherwise candle's transposed conv.
    pub fn input_grad(g: &Geom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        if g.stride > 1 && g.dil == 1 && g.kh.is_multiple_of(g.stride) && g.kw.is_multiple_of(g.stride) {
            return strided_input_grad(g, dy, w);
        }
        if g.stride != 1 || g.kh != g.kw {
            // The full transposed conv (no padding), then the input's window `p .. p + H`; rows
            // and columns past its end are ones no output reaches (zero gradient). This also
            // covers remainders that differ between height and width.
            let dx = dy.conv_transpose2d(w, 0, 0, g.stride, g.dil)?;
            let (_, _, h0, w0) = dx.dims4()?;
            return dx
                .pad_with_zeros(2, 0, (g.pad + g.h).saturating_sub(h0))?
                .pad_with_zeros(3, 0, (g.pad + g.w).saturating_sub(w0))?
                .narrow(2, g.pad, g.h)?
                .narrow(3, g.pad, g.w)?
                .contiguous();
        }
        let dev = w.device();
        let rev = |k: usize| Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, dev);
        let wf = w
            .transpose(0, 1)?
            .contiguous()?
            .index_select(&rev(g.kh)?, 2)?
            .index_select(&rev(g.kw)?, 3)?
            .contiguous()?;
        let full = g.dil * (g.kh - 1);
        if full >= g.pad {
            dy.conv2d(&wf, full - g.pad, 1, g.dil, 1)
        } else {
            let crop = g.pad - full;
            let dy = dy.narrow(2, crop, g.ho - 2 * crop)?.narrow(3, crop, g.wo - 2 * crop)?;
            dy.contiguous()?.conv2d(&wf, 0, 1, g.dil, 1)
        }
    }

    /// A strided conv's input gradient (a transposed conv, FCN's upsampling) when the kernel is
    /// a multiple of the stride: one matmul spreads every `dy` pixel over its `kh × kw` window,
    /// and the `(kh/s)·(kw/s)` window blocks are overlap-added as shifted, zero-padded copies.
    /// All of it runs on cuBLAS and copy kernels (candle's CUDA transposed conv is a naive loop).
    fn strided_input_grad(g: &Geom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let s = g.stride;
        let (mh, mw) = (g.kh / s, g.kw / s);
        let (n, co, ho, wo) = (g.n, g.co, g.ho, g.wo);
        let k = g.c * g.kh * g.kw;
        // cols[n, (c, by, ry, bx, rx), (oy, ox)] = Σ_co w[co, c, ky, kx] · dy[n, co, oy, ox].
        let wt = w.reshape((co, k))?.t()?.contiguous()?;
        let cols = wt
            .broadcast_left(n)?
            .matmul(&dy.reshape((n, co, ho * wo))?)?
            .reshape(vec![n, g.c, mh, s, mw, s, ho, wo])?;
        // acc[n, c, Y, ry, X, rx] with Y = oy + by: input row Y·s + ry − p.
        let mut acc: Option<Tensor> = None;
        for by in 0..mh {
            for bx in 0..mw {
                let part = cols
                    .narrow(2, by, 1)?
                    .narrow(4, bx, 1)?
                    .squeeze(4)?
                    .squeeze(2)? // n, c, ry, rx, oy, ox
                    .pad_with_zeros(4, by, mh - 1 - by)?
                    .pad_with_zeros(5, bx, mw - 1 - bx)?;
                acc = Some(match acc {
                    Some(a) => (a + part)?,
                    None => part,
                });
            }
        }
        let acc = acc.ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))?;
        let (yh, yw) = (ho + mh - 1, wo + mw - 1);
        let full = acc.permute((0, 1, 4, 2, 5, 3))?.reshape((n, g.c, yh * s, yw * s))?;
        // Rows p .. p + H (zero-padded where the windows stop short).
        let (need_h, need_w) = (g.pad + g.h, g.pad + g.w);
        let full = full
            .pad_with_zeros(2, 0, need_h.saturating_sub(yh * s))?
            .pad_with_zeros(3, 0, need_w.saturating_sub(yw * s))?;
        full.narrow(2, g.pad, g.h)?.narrow(3, g.pad, g.w)?.contiguous()
    }

    /// candle's own kernel gradient: a conv of the transposed input by the transposed `dy`.
    pub fn weight_grad(g: &Geom, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let dw = x
            .transpose(0, 1)?
            .contiguous()?
            .conv2d(&dy.transpose(0, 1)?.contiguous()?, g.pad, g.dil, g.stride, 1)?
            .transpose(0, 1)?;
        dw.narrow(2, 0, g.kh)?.narrow(3, 0, g.kw)?.contiguous()
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor};

    /// A tensor (no gradient) holding a device copy of `s`.
    pub(super) fn tensor(s: &CudaStorage, l: &Layout) -> Result<Tensor> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("conv2d on CUDA: contiguous input at offset 0 expected");
        }
        Ok(Tensor::from_storage(
            Storage::Cuda(s.try_clone(l)?),
            l.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }

    /// `s` converted to `dtype` (one cast kernel, contiguous), or `None` where it has that type.
    pub(super) fn cast(s: &CudaStorage, l: &Layout, dtype: candle_core::DType) -> Result<Option<CudaStorage>> {
        if s.dtype() == dtype {
            return Ok(None);
        }
        s.to_dtype(l, dtype).map(Some)
    }

    /// A CUDA op's weight operand: the kept copy where there is one, else `(s, l)`.
    pub(super) fn weight<'a, G: std::ops::Deref<Target = Storage>>(
        kept: &'a Option<(G, &Layout)>,
        s: &'a CudaStorage,
        l: &'a Layout,
    ) -> Result<(&'a CudaStorage, &'a Layout)> {
        super::weight_operand(kept, (s, l), |st| match st {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    /// An operand as the op uses it: its cast (contiguous) where one was made, else itself.
    pub(super) fn operand<'a>(
        cast: &'a Option<CudaStorage>,
        s: &'a CudaStorage,
        l: &'a Layout,
    ) -> (&'a CudaStorage, std::borrow::Cow<'a, Layout>) {
        match cast {
            Some(c) => (c, std::borrow::Cow::Owned(Layout::contiguous(l.shape()))),
            None => (s, std::borrow::Cow::Borrowed(l)),
        }
    }

    pub(super) fn storage(t: &Tensor) -> Result<(CudaStorage, Shape)> {
        let t = t.contiguous()?;
        let (st, l) = t.storage_and_layout();
        match &*st {
            Storage::Cuda(c) if l.start_offset() == 0 => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("conv2d on CUDA: result is not a CUDA tensor at offset 0"),
        }
    }
}

/// Whether the custom op runs on this tensor: f32 or bf16 on the CPU, or any CUDA tensor.
fn supported(x: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => applies_low(x),
        candle_core::Device::Cuda(_) => true,
        _ => false,
    }
}

/// Contiguous, at offset 0 (what the CUDA bridge needs; free when already so).
fn packed(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        Ok(t.clone())
    } else {
        t.copy()?.contiguous()
    }
}

/// `conv2d(x, w)` with `w: Co×C×kh×kw`, one group, no bias. `x` bf16 with `w` f32 computes
/// in bf16 (mixed precision, see the module documentation).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize, dilation: usize) -> Result<Tensor> {
    let g = geom(x.dims4()?, w.dims4()?, stride, padding, dilation)?;
    if !supported(x) || !compatible(x.dtype(), w.dtype()) {
        return x.conv2d(w, padding, stride, dilation, 1);
    }
    let w = packed(w)?;
    let kept = Kept::of(x, &w)?;
    packed(x)?.apply_op2(
        &w,
        ConvOp {
            g,
            piece: Piece::Forward,
            out: None,
            w: kept,
        },
    )
}

/// A transposed convolution `x: N×Ci×H×W`, `w: Ci×Co×kh×kw` (PyTorch's layout), no output
/// padding: output `(H−1)·s − 2p + d·(kh−1) + 1` high.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize, dilation: usize) -> Result<Tensor> {
    let (n, ci, h, wd) = x.dims4()?;
    let (wci, co, kh, kw) = w.dims4()?;
    if wci != ci {
        candle_core::bail!("conv_transpose2d: input has {ci} channels, the kernel expects {wci}");
    }
    if kh == 0 || kw == 0 || stride == 0 || dilation == 0 || h == 0 || wd == 0 {
        candle_core::bail!("conv_transpose2d: empty input {h}x{wd}, kernel {kh}x{kw} or zero stride/dilation");
    }
    let size = |i: usize, k: usize| ((i.max(1) - 1) * stride + dilation * (k - 1) + 1).checked_sub(2 * padding);
    let (Some(ho), Some(wo)) = (size(h, kh), size(wd, kw)) else {
        candle_core::bail!("conv_transpose2d: padding {padding} is larger than the output")
    };
    // The equivalent conv maps the output (Co channels) back to the input (Ci channels).
    let g = geom((n, co, ho, wo), (ci, co, kh, kw), stride, padding, dilation)?;
    if (g.ho, g.wo) != (h, wd) {
        candle_core::bail!("conv_transpose2d: geometry mismatch ({h}x{wd} in, {ho}x{wo} out)");
    }
    if !supported(x) || !compatible(x.dtype(), w.dtype()) {
        return x.conv_transpose2d(w, padding, 0, stride, dilation);
    }
    let w = packed(w)?;
    let kept = Kept::of(x, &w)?;
    packed(x)?.apply_op2(
        &w,
        ConvOp {
            g,
            piece: Piece::InputGrad,
            out: None,
            w: kept,
        },
    )
}

/// `relu(conv2d(x, w) + b)` as one op: the output is the only activation kept for the backward
/// pass (its sign is the ReLU mask), where the unfused layer keeps three (the conv output, the
/// biased sum and the ReLU output) and makes four more passes over them.
#[derive(Debug, Clone)]
struct ConvBiasRelu {
    g: Geom,
    /// The bf16 copy of the weight under mixed precision.
    w: Kept,
}

/// ReLU's gradient `g = dr · [r > 0]` and the bias gradient `Σ g` per channel, in one pass
/// (CPU, f32 or bf16, contiguous `N×C×H×W`; [`kernel::relu_grad_and_bias_sum`], in f32, the
/// results in `dr`'s type).
fn relu_grad_and_bias_sum(dr: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = dr.dims4()?;
    if r.dims4()? != (n, c, h, w) {
        candle_core::bail!("relu-grad: gradient {:?} and output {:?} differ", dr.dims(), r.dims());
    }
    let (ds, dl) = dr.storage_and_layout();
    let (rs, rl) = r.storage_and_layout();
    let (candle_core::Storage::Cpu(ds), candle_core::Storage::Cpu(rs)) = (&*ds, &*rs) else {
        candle_core::bail!("relu-grad: CPU tensors expected")
    };
    let (d, rv) = (f32_values(ds, dl, "relu-grad")?, f32_values(rs, rl, "relu-grad")?);
    let (g, db) = kernel::relu_grad_and_bias_sum(n, c, h * w, &d, &rv);
    Ok((
        Tensor::from_vec(g, (n, c, h, w), dr.device())?.to_dtype(dr.dtype())?,
        Tensor::from_vec(db, c, dr.device())?.to_dtype(dr.dtype())?,
    ))
}

impl CustomOp3 for ConvBiasRelu {
    fn name(&self) -> &'static str {
        "conv2d-bias-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let kept = self.w.storage();
        let (s2, l2) = weight_operand(&kept, (s2, l2), cpu_storage)?;
        let low = low(&[s1.dtype(), s2.dtype(), s3.dtype()]);
        let (x, w, b) = (
            rounded_values(s1, l1, self.name(), low)?,
            rounded_values(s2, l2, self.name(), low)?,
            rounded_values(s3, l3, self.name(), low)?,
        );
        let y = if low {
            // CUDA's two roundings: the bf16 product (cuDNN's result), then the bias added in
            // f32 and the sum rounded (the NVRTC kernel; `storage_of` rounds).
            let mut y = kernel::forward(g, &x, &w);
            let plane = g.ho * g.wo;
            for (i, v) in y.iter_mut().enumerate() {
                *v = (to_bf16(*v) + b[(i / plane) % g.co]).max(0.0);
            }
            y
        } else {
            kernel::forward_bias_relu(g, &x, &w, &b)
        };
        Ok((storage_of(y, low, s1.dtype()), Shape::from((g.n, g.co, g.ho, g.wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dtype = s1.dtype();
        let kept = self.w.storage();
        let (s2, l2) = cuda::weight(&kept, s2, l2)?;
        let (c2, c3) = (cuda::cast(s2, l2, dtype)?, cuda::cast(s3, l3, dtype)?);
        let ((s2, l2), (s3, l3)) = (cuda::operand(&c2, s2, l2), cuda::operand(&c3, s3, l3));
        let (l2, l3) = (&*l2, &*l3);
        if seg_cuda::cudnn::takes(dtype) {
            if let Some(y) = seg_cuda::cudnn::forward_bias_relu(&self.g, (s1, l1), (s2, l2), (s3, l3))? {
                let g = &self.g;
                return Ok((y, Shape::from((g.n, g.co, g.ho, g.wo))));
            }
        }
        let (x, w, b) = (cuda::tensor(s1, l1)?, cuda::tensor(s2, l2)?, cuda::tensor(s3, l3)?);
        let y = composite::forward(&self.g, &x, &w)?.broadcast_add(&b.reshape((1, self.g.co, 1, 1))?)?;
        cuda::storage(&y.relu()?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        r: &Tensor,
        dr: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dr = dr.to_dtype(r.dtype())?.contiguous()?;
        let (g, db) = if applies_low(&dr) {
            relu_grad_and_bias_sum(&dr, &r.contiguous()?)?
        } else if let Some(both) = cuda_relu_grad(&dr, r)? {
            both
        } else {
            let g = (&dr * r.gt(0.0)?.to_dtype(dr.dtype())?)?;
            let db = g.sum(3)?.sum(2)?.sum(0)?;
            (g, db)
        };
        let op = ConvOp {
            g: self.g,
            piece: Piece::Forward,
            out: None,
            w: Kept::default(),
        };
        Ok((
            needed(x, || op.run(&g, self.w.or(w), Piece::InputGrad, None))?,
            weight_grad(w, || op.run(x, &g, Piece::WeightGrad, Some(w.dtype())))?,
            weight_grad(b, || db.to_dtype(b.dtype()))?,
        ))
    }
}

/// The gradient `f` computes for `t`, or nothing where `t` takes no part in differentiation
/// (an input image: no variable, no op behind it).
fn needed(t: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if t.track_op() {
        f().map(Some)
    } else {
        Ok(None)
    }
}

/// A parameter's gradient: to the installed sink where there is one (see [`crate::grad`]),
/// otherwise back to candle.
fn weight_grad(w: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    match needed(w, f)? {
        Some(dw) => crate::grad::offer(w, dw),
        None => Ok(None),
    }
}

/// ReLU's and the bias's gradients in one NVRTC kernel on CUDA (f32 or bf16; the sum in f32).
#[cfg(feature = "cuda")]
fn cuda_relu_grad(dr: &Tensor, r: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    if !dr.device().is_cuda() || !matches!(dr.dtype(), DType::F32 | DType::BF16) {
        return Ok(None);
    }
    seg_cuda::nvrtc::relu_grad_and_bias_sum(dr, &r.contiguous()?).map(Some)
}

#[cfg(not(feature = "cuda"))]
fn cuda_relu_grad(_: &Tensor, _: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    Ok(None)
}

/// `relu(conv2d(x, w) + b)` with `b` of length `Co`: one fused op (see [`conv2d`]).
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let g = geom(x.dims4()?, w.dims4()?, stride, padding, dilation)?;
    if b.dims1()? != g.co {
        candle_core::bail!("conv2d: bias has {} entries for {} output channels", b.dims1()?, g.co);
    }
    if !supported(x) || !compatible(x.dtype(), w.dtype()) || !compatible(x.dtype(), b.dtype()) {
        return x
            .conv2d(w, padding, stride, dilation, 1)?
            .broadcast_add(&b.reshape((1, g.co, 1, 1))?)?
            .relu();
    }
    let w = packed(w)?;
    let kept = Kept::of(x, &w)?;
    packed(x)?.apply_op3(&w, &packed(b)?, ConvBiasRelu { g, w: kept })
}
