//! cuDNN for the convolutions on CUDA, loaded at run time.
//!
//! candle 0.11 without its `cudnn` feature runs a CUDA convolution as im2col + cuBLAS and a
//! transposed one as a naive loop; with the feature, only the forward uses cuDNN, and the
//! binary then needs `libcudnn` to link and to start. Here `libcudnn.so.9` is opened with
//! `dlopen` the first time a convolution runs on CUDA: the forward, the input gradient (also
//! the transposed convolution's forward), the kernel gradient, the bias gradient and ReLU's
//! gradient each become one cuDNN call. Where the library is missing (or `SEG_CUDNN=0`), the
//! caller falls back to candle's tensor ops, so `--features cuda` still builds and runs without
//! cuDNN.
//!
//! Algorithms come from cuDNN's heuristics (`cudnnGet…Algorithm_v7`, as PyTorch with
//! `cudnn.benchmark = False`), chosen once per geometry and kept with their descriptors for the
//! life of the thread. Tensor cores (TF32) are allowed by default, as in PyTorch
//! (`torch.backends.cudnn.allow_tf32 = True`); [`set_tf32`]`(false)` or `SEG_CUDA_TF32=0` asks
//! for FP32 multiply-adds only.

use crate::conv_ops::Geom;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::CudaDevice;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

type Status = c_int;
type Ptr = *mut c_void;
type CPtr = *const c_void;

const DATA_FLOAT: c_int = 0;
const NCHW: c_int = 0;
const CROSS_CORRELATION: c_int = 1;
const DEFAULT_MATH: c_int = 0;
const FMA_MATH: c_int = 3;
const ACTIVATION_RELU: c_int = 1;
const NOT_PROPAGATE_NAN: c_int = 0;
/// The largest workspace an algorithm may ask for.
const MAX_WORKSPACE: usize = 1 << 30;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t` (one layout for all three).
#[repr(C)]
#[derive(Clone, Copy)]
struct AlgoPerf {
    algo: c_int,
    status: Status,
    time: f32,
    memory: usize,
    determinism: c_int,
    math_type: c_int,
    reserved: [c_int; 3],
}

type GetAlgo = unsafe extern "C" fn(Ptr, Ptr, Ptr, Ptr, Ptr, c_int, *mut c_int, *mut AlgoPerf) -> Status;
type WorkspaceSize = unsafe extern "C" fn(Ptr, Ptr, Ptr, Ptr, Ptr, c_int, *mut usize) -> Status;
type Run = unsafe extern "C" fn(Ptr, CPtr, Ptr, CPtr, Ptr, CPtr, Ptr, c_int, Ptr, usize, CPtr, Ptr, Ptr) -> Status;

/// The entry points used, resolved once.
struct Api {
    _lib: libloading::Library,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(*mut Ptr) -> Status,
    set_stream: unsafe extern "C" fn(Ptr, Ptr) -> Status,
    create_tensor: unsafe extern "C" fn(*mut Ptr) -> Status,
    set_tensor_4d: unsafe extern "C" fn(Ptr, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    create_filter: unsafe extern "C" fn(*mut Ptr) -> Status,
    set_filter_4d: unsafe extern "C" fn(Ptr, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    create_conv: unsafe extern "C" fn(*mut Ptr) -> Status,
    set_conv_2d: unsafe extern "C" fn(Ptr, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    set_math: unsafe extern "C" fn(Ptr, c_int) -> Status,
    create_activation: unsafe extern "C" fn(*mut Ptr) -> Status,
    set_activation: unsafe extern "C" fn(Ptr, c_int, c_int, f64) -> Status,
    fwd_algo: GetAlgo,
    fwd_ws: WorkspaceSize,
    fwd: Run,
    bwd_data_algo: GetAlgo,
    bwd_data_ws: WorkspaceSize,
    bwd_data: Run,
    bwd_filter_algo: GetAlgo,
    bwd_filter_ws: WorkspaceSize,
    bwd_filter: Run,
    bwd_bias: unsafe extern "C" fn(Ptr, CPtr, Ptr, CPtr, CPtr, Ptr, Ptr) -> Status,
    add_tensor: unsafe extern "C" fn(Ptr, CPtr, Ptr, CPtr, CPtr, Ptr, Ptr) -> Status,
    act_fwd: unsafe extern "C" fn(Ptr, Ptr, CPtr, Ptr, CPtr, CPtr, Ptr, Ptr) -> Status,
    act_bwd: unsafe extern "C" fn(Ptr, Ptr, CPtr, Ptr, CPtr, Ptr, CPtr, Ptr, CPtr, CPtr, Ptr, Ptr) -> Status,
}

impl Api {
    fn load() -> std::result::Result<Self, String> {
        let mut errors = Vec::new();
        let lib = ["libcudnn.so.9", "libcudnn.so"].iter().find_map(|name| {
            // SAFETY: loading cuDNN runs its initialisers, which have no preconditions.
            unsafe { libloading::Library::new(*name) }
                .map_err(|e| errors.push(e.to_string()))
                .ok()
        });
        let Some(lib) = lib else {
            return Err(errors.join("; "));
        };
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol has the C signature of the field it is stored in (cuDNN 9's
                // headers).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| format!("{}: {e}", $name))?
            };
        }
        Ok(Self {
            error_string: sym!("cudnnGetErrorString"),
            create: sym!("cudnnCreate"),
            set_stream: sym!("cudnnSetStream"),
            create_tensor: sym!("cudnnCreateTensorDescriptor"),
            set_tensor_4d: sym!("cudnnSetTensor4dDescriptor"),
            create_filter: sym!("cudnnCreateFilterDescriptor"),
            set_filter_4d: sym!("cudnnSetFilter4dDescriptor"),
            create_conv: sym!("cudnnCreateConvolutionDescriptor"),
            set_conv_2d: sym!("cudnnSetConvolution2dDescriptor"),
            set_math: sym!("cudnnSetConvolutionMathType"),
            create_activation: sym!("cudnnCreateActivationDescriptor"),
            set_activation: sym!("cudnnSetActivationDescriptor"),
            fwd_algo: sym!("cudnnGetConvolutionForwardAlgorithm_v7"),
            fwd_ws: sym!("cudnnGetConvolutionForwardWorkspaceSize"),
            fwd: sym!("cudnnConvolutionForward"),
            bwd_data_algo: sym!("cudnnGetConvolutionBackwardDataAlgorithm_v7"),
            bwd_data_ws: sym!("cudnnGetConvolutionBackwardDataWorkspaceSize"),
            bwd_data: sym!("cudnnConvolutionBackwardData"),
            bwd_filter_algo: sym!("cudnnGetConvolutionBackwardFilterAlgorithm_v7"),
            bwd_filter_ws: sym!("cudnnGetConvolutionBackwardFilterWorkspaceSize"),
            bwd_filter: sym!("cudnnConvolutionBackwardFilter"),
            bwd_bias: sym!("cudnnConvolutionBackwardBias"),
            add_tensor: sym!("cudnnAddTensor"),
            act_fwd: sym!("cudnnActivationForward"),
            act_bwd: sym!("cudnnActivationBackward"),
            _lib: lib,
        })
    }

    /// `Ok` for success, otherwise an error naming the call and cuDNN's reason.
    fn check(&self, what: &str, s: Status) -> Result<()> {
        if s == 0 {
            return Ok(());
        }
        // SAFETY: cudnnGetErrorString returns a static NUL-terminated string for any status.
        let msg = unsafe { std::ffi::CStr::from_ptr((self.error_string)(s)) };
        candle_core::bail!("cuDNN {what}: {} (status {s})", msg.to_string_lossy())
    }
}

/// cuDNN, where it loads and is not turned off (`SEG_CUDNN=0`).
fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        if std::env::var("SEG_CUDNN").is_ok_and(|v| v == "0") {
            return None;
        }
        match Api::load() {
            Ok(api) => Some(api),
            Err(e) => {
                tracing::warn!("cuDNN not loaded ({e}); CUDA convolutions use candle's im2col + cuBLAS");
                None
            }
        }
    })
    .as_ref()
}

/// Whether the CUDA convolutions run on cuDNN.
pub fn available() -> bool {
    api().is_some()
}

/// 0: not yet read from the environment; 1: FP32 only; 2: TF32 allowed.
static TF32: AtomicU8 = AtomicU8::new(0);

/// Allows (the default, PyTorch's) or forbids TF32 tensor cores in cuDNN convolutions.
pub fn set_tf32(allow: bool) {
    TF32.store(if allow { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether TF32 is allowed: [`set_tf32`], else `SEG_CUDA_TF32` (`0` forbids), else yes.
pub fn tf32() -> bool {
    match TF32.load(Ordering::Relaxed) {
        0 => {
            let allow = !std::env::var("SEG_CUDA_TF32").is_ok_and(|v| v == "0");
            set_tf32(allow);
            allow
        }
        v => v == 2,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Forward,
    InputGrad,
    WeightGrad,
}

/// Descriptors and the chosen algorithm for one geometry and piece.
struct Plan {
    x: Ptr,
    y: Ptr,
    w: Ptr,
    bias: Ptr,
    conv: Ptr,
    algo: c_int,
    workspace: usize,
}

/// Descriptors of one `N×C×H×W` tensor shape, for the elementwise calls.
struct Elementwise {
    t: Ptr,
    bias: Ptr,
}

#[derive(Default)]
struct ThreadState {
    handles: HashMap<candle_core::cuda_backend::DeviceId, Ptr>,
    plans: HashMap<(Geom, Kind, bool), Plan>,
    shapes: HashMap<(usize, usize, usize, usize), Elementwise>,
    relu: Option<Ptr>,
}

thread_local! {
    // cuDNN handles and descriptors are not shared between threads; they live as long as the
    // thread (a few dozen per model).
    static STATE: RefCell<ThreadState> = RefCell::default();
}

fn dim(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {v} exceeds int")))
}

fn tensor_desc(api: &Api, (n, c, h, w): (usize, usize, usize, usize)) -> Result<Ptr> {
    let mut d = std::ptr::null_mut();
    // SAFETY: d is a valid out-pointer; the descriptor is then set with plain integers.
    unsafe {
        api.check("create tensor descriptor", (api.create_tensor)(&mut d))?;
        api.check(
            "set tensor descriptor",
            (api.set_tensor_4d)(d, NCHW, DATA_FLOAT, dim(n)?, dim(c)?, dim(h)?, dim(w)?),
        )?;
    }
    Ok(d)
}

/// Tensor-core math (1) only where TF32 is allowed; never down-conversion to FP16 (2).
fn math_ok(math: c_int, allow_tf32: bool) -> bool {
    match math {
        1 => allow_tf32,
        2 => false,
        _ => true,
    }
}

impl Plan {
    fn new(api: &Api, handle: Ptr, g: &Geom, kind: Kind, allow_tf32: bool) -> Result<Self> {
        let x = tensor_desc(api, (g.n, g.c, g.h, g.w))?;
        let y = tensor_desc(api, (g.n, g.co, g.ho, g.wo))?;
        let bias = tensor_desc(api, (1, g.co, 1, 1))?;
        let (mut w, mut conv) = (std::ptr::null_mut(), std::ptr::null_mut());
        let (p, s, d) = (dim(g.pad)?, dim(g.stride)?, dim(g.dil)?);
        // SAFETY: out-pointers are valid; the setters take plain integers.
        unsafe {
            api.check("create filter descriptor", (api.create_filter)(&mut w))?;
            api.check(
                "set filter descriptor",
                (api.set_filter_4d)(w, DATA_FLOAT, NCHW, dim(g.co)?, dim(g.c)?, dim(g.kh)?, dim(g.kw)?),
            )?;
            api.check("create convolution descriptor", (api.create_conv)(&mut conv))?;
            api.check(
                "set convolution descriptor",
                (api.set_conv_2d)(conv, p, p, s, s, d, d, CROSS_CORRELATION, DATA_FLOAT),
            )?;
            api.check(
                "set math type",
                (api.set_math)(conv, if allow_tf32 { DEFAULT_MATH } else { FMA_MATH }),
            )?;
        }
        let (get, size): (GetAlgo, WorkspaceSize) = match kind {
            Kind::Forward => (api.fwd_algo, api.fwd_ws),
            Kind::InputGrad => (api.bwd_data_algo, api.bwd_data_ws),
            Kind::WeightGrad => (api.bwd_filter_algo, api.bwd_filter_ws),
        };
        // The descriptor order each query takes.
        let (a, b, c) = match kind {
            Kind::Forward => (x, w, y),
            Kind::InputGrad => (w, y, x),
            Kind::WeightGrad => (x, y, w),
        };
        let mut perf = [AlgoPerf {
            algo: 0,
            status: 0,
            time: 0.0,
            memory: 0,
            determinism: 0,
            math_type: 0,
            reserved: [0; 3],
        }; 16];
        let mut count = 0;
        // SAFETY: perf holds 16 entries, the count asked for.
        unsafe {
            api.check(
                "algorithm heuristics",
                get(handle, a, b, conv, c, perf.len() as c_int, &mut count, perf.as_mut_ptr()),
            )?;
        }
        let found = perf[..count.clamp(0, perf.len() as c_int) as usize]
            .iter()
            .find(|p| p.status == 0 && p.memory <= MAX_WORKSPACE && math_ok(p.math_type, allow_tf32));
        let Some(best) = found else {
            candle_core::bail!("cuDNN: no {kind:?} algorithm for {g:?}")
        };
        let mut workspace = 0;
        // SAFETY: descriptors as above; workspace is a valid out-pointer.
        unsafe {
            if allow_tf32 {
                api.check("set math type", (api.set_math)(conv, best.math_type))?;
            }
            api.check("workspace size", size(handle, a, b, conv, c, best.algo, &mut workspace))?;
        }
        Ok(Self {
            x,
            y,
            w,
            bias,
            conv,
            algo: best.algo,
            workspace,
        })
    }
}

/// A contiguous f32 view of a CUDA operand.
fn f32_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("cuDNN: contiguous operands expected")
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// Runs `f(api, handle, stream, state)` with this thread's handle for `dev`, bound to candle's
/// stream.
fn with_handle<T>(dev: &CudaDevice, f: impl FnOnce(&Api, Ptr, &Arc<CudaStream>, &mut ThreadState) -> Result<T>) -> Result<T> {
    let Some(api) = api() else {
        candle_core::bail!("cuDNN is not available")
    };
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().map_err(candle_core::Error::wrap)?;
    STATE.with(|st| {
        let mut st = st.borrow_mut();
        let handle = match st.handles.get(&dev.id()) {
            Some(&h) => h,
            None => {
                let mut h = std::ptr::null_mut();
                // SAFETY: h is a valid out-pointer.
                api.check("create handle", unsafe { (api.create)(&mut h) })?;
                st.handles.insert(dev.id(), h);
                h
            }
        };
        // SAFETY: the stream belongs to the device whose context is bound.
        api.check("set stream", unsafe { (api.set_stream)(handle, stream.cu_stream() as Ptr) })?;
        f(api, handle, &stream, &mut st)
    })
}

fn alloc(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every caller has cuDNN overwrite the whole buffer (beta = 0) before it is read.
    unsafe { dev.alloc::<f32>(n) }
}

/// One convolution piece: `(x, w) → y`, `(dy, w) → dx` or `(x, dy) → dw`, all NCHW f32.
fn conv_piece(g: &Geom, kind: Kind, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<CudaStorage> {
    let dev = s1.device().clone();
    let (a, b) = (f32_view(s1, l1)?, f32_view(s2, l2)?);
    let allow = tf32();
    let len = match kind {
        Kind::Forward => g.n * g.co * g.ho * g.wo,
        Kind::InputGrad => g.n * g.c * g.h * g.w,
        Kind::WeightGrad => g.co * g.c * g.kh * g.kw,
    };
    let mut out = alloc(&dev, len)?;
    with_handle(&dev, |api, handle, stream, st| {
        let plan = match st.plans.entry((*g, kind, allow)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(api, handle, g, kind, allow)?),
        };
        let mut ws = if plan.workspace > 0 {
            // SAFETY: scratch space cuDNN writes before it reads.
            Some(unsafe { stream.alloc::<u8>(plan.workspace) }.map_err(candle_core::Error::wrap)?)
        } else {
            None
        };
        let (alpha, beta) = (&1f32 as *const f32 as CPtr, &0f32 as *const f32 as CPtr);
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (po, _ro) = out.device_ptr_mut(stream);
        let (pw, _rw) = match ws.as_mut() {
            Some(ws) => {
                let (p, r) = ws.device_ptr_mut(stream);
                (p as Ptr, Some(r))
            }
            None => (std::ptr::null_mut(), None),
        };
        let (run, descs, what) = match kind {
            Kind::Forward => (api.fwd, [plan.x, plan.w, plan.y], "convolution forward"),
            Kind::InputGrad => (api.bwd_data, [plan.w, plan.y, plan.x], "convolution backward data"),
            Kind::WeightGrad => (api.bwd_filter, [plan.x, plan.y, plan.w], "convolution backward filter"),
        };
        // The data operands in the order of their descriptors: (x, w), (w, dy), (x, dy).
        let (p1, p2) = match kind {
            Kind::Forward | Kind::WeightGrad => (pa, pb),
            Kind::InputGrad => (pb, pa),
        };
        // SAFETY: the pointers are live device buffers of the sizes the descriptors state, on
        // the stream the handle is bound to; the workspace has the size the plan asked for.
        let status = unsafe {
            run(
                handle,
                alpha,
                descs[0],
                p1 as CPtr,
                descs[1],
                p2 as CPtr,
                plan.conv,
                plan.algo,
                pw,
                plan.workspace,
                beta,
                descs[2],
                po as Ptr,
            )
        };
        api.check(what, status)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `y = conv(x, w)`.
pub fn forward(g: &Geom, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<CudaStorage> {
    conv_piece(g, Kind::Forward, s1, l1, s2, l2)
}

/// `dx = convᵀ(dy, w)` (and a transposed convolution's forward).
pub fn input_grad(g: &Geom, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<CudaStorage> {
    conv_piece(g, Kind::InputGrad, s1, l1, s2, l2)
}

/// `dw` from `(x, dy)`.
pub fn weight_grad(g: &Geom, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<CudaStorage> {
    conv_piece(g, Kind::WeightGrad, s1, l1, s2, l2)
}

/// `relu(conv(x, w) + b)`: the convolution, then the bias added and the ReLU applied in place.
pub fn forward_bias_relu(
    g: &Geom,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let mut y = forward(g, s1, l1, s2, l2)?;
    let dev = y.device().clone();
    let b = f32_view(s3, l3)?;
    let allow = tf32();
    with_handle(&dev, |api, handle, stream, st| {
        let relu = relu_desc(api, st)?;
        let Some(plan) = st.plans.get(&(*g, Kind::Forward, allow)) else {
            candle_core::bail!("cuDNN: the forward's plan is missing (precision changed mid-call)")
        };
        let out = y.as_cuda_slice_mut::<f32>()?;
        let (pb, _rb) = b.device_ptr(stream);
        let (py, _ry) = out.device_ptr_mut(stream);
        let (one, zero) = (&1f32 as *const f32 as CPtr, &0f32 as *const f32 as CPtr);
        // SAFETY: y is N×Co×Ho×Wo and b has Co entries, as the plan's descriptors say; the
        // activation runs in place, which cuDNN allows.
        unsafe {
            api.check("add bias", (api.add_tensor)(handle, one, plan.bias, pb as CPtr, one, plan.y, py as Ptr))?;
            api.check(
                "relu forward",
                (api.act_fwd)(handle, relu, one, plan.y, py as CPtr, zero, plan.y, py as Ptr),
            )
        }
    })?;
    Ok(y)
}

fn relu_desc(api: &Api, st: &mut ThreadState) -> Result<Ptr> {
    if let Some(d) = st.relu {
        return Ok(d);
    }
    let mut d = std::ptr::null_mut();
    // SAFETY: d is a valid out-pointer.
    unsafe {
        api.check("create activation descriptor", (api.create_activation)(&mut d))?;
        api.check(
            "set activation descriptor",
            (api.set_activation)(d, ACTIVATION_RELU, NOT_PROPAGATE_NAN, 0.0),
        )?;
    }
    st.relu = Some(d);
    Ok(d)
}

fn wrap(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
}

/// ReLU's gradient `g = dr · [r > 0]` and the bias gradient `Σ g` per channel, from the ReLU
/// output `r` (`N×C×H×W`, CUDA, f32).
pub fn relu_grad_and_bias_sum(dr: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = dr.dims4()?;
    if r.dims4()? != (n, c, h, w) {
        candle_core::bail!("relu-grad: gradient {:?} and output {:?} differ", dr.dims(), r.dims());
    }
    let (ds, dl) = dr.storage_and_layout();
    let (rs, rl) = r.storage_and_layout();
    let (Storage::Cuda(ds), Storage::Cuda(rs)) = (&*ds, &*rs) else {
        candle_core::bail!("relu-grad: CUDA tensors expected")
    };
    let dev = ds.device().clone();
    let (dv, rv) = (f32_view(ds, dl)?, f32_view(rs, rl)?);
    let mut g = alloc(&dev, n * c * h * w)?;
    let mut db = alloc(&dev, c)?;
    with_handle(&dev, |api, handle, stream, st| {
        let relu = relu_desc(api, st)?;
        let e = match st.shapes.entry((n, c, h, w)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Elementwise {
                t: tensor_desc(api, (n, c, h, w))?,
                bias: tensor_desc(api, (1, c, 1, 1))?,
            }),
        };
        let (pd, _rd) = dv.device_ptr(stream);
        let (pr, _rr) = rv.device_ptr(stream);
        let (pg, _rg) = g.device_ptr_mut(stream);
        let (pb, _rb) = db.device_ptr_mut(stream);
        let (one, zero) = (&1f32 as *const f32 as CPtr, &0f32 as *const f32 as CPtr);
        // SAFETY: all four buffers match the descriptors' shapes; for ReLU the mask [x > 0]
        // equals [r > 0], so r stands for both x and y.
        unsafe {
            api.check(
                "relu backward",
                (api.act_bwd)(
                    handle, relu, one, e.t, pr as CPtr, e.t, pd as CPtr, e.t, pr as CPtr, zero, e.t, pg as Ptr,
                ),
            )?;
            api.check("bias gradient", (api.bwd_bias)(handle, one, e.t, pg as CPtr, zero, e.bias, pb as Ptr))
        }
    })?;
    Ok((wrap(CudaStorage::wrap_cuda_slice(g, dev.clone()), (n, c, h, w)), wrap(CudaStorage::wrap_cuda_slice(db, dev), c)))
}
