//! cuDNN for the convolutions on CUDA, loaded at run time.
//!
//! candle 0.11 without its `cudnn` feature runs a CUDA convolution as im2col + cuBLAS and a
//! transposed one as a naive loop; with the feature, only the forward uses cuDNN, and the
//! binary then needs `libcudnn` to link and to start. Here `libcudnn.so.9` is opened with
//! `dlopen` the first time a convolution runs on CUDA: the forward, the input gradient (also
//! the transposed convolution's forward) and the kernel gradient each become one cuDNN call
//! (the bias and ReLU around them are NVRTC kernels, [`crate::nvrtc`]). Where the library is missing (or `SEG_CUDNN=0`), the
//! caller falls back to candle's tensor ops, so `--features cuda` still builds and runs without
//! cuDNN.
//!
//! A convolution piece runs through cuDNN's graph API: an execution plan per geometry, built
//! once from cuDNN's heuristics (as PyTorch with `cudnn.benchmark = False`) and kept for the
//! life of the thread, so a call only binds pointers and executes. Where no plan builds (or
//! `SEG_CUDNN_LEGACY=1`), the legacy `cudnnConvolution*` calls run with the algorithm
//! `cudnnGet…Algorithm_v7` ranks first. Tensor cores (TF32) are allowed by default, as in
//! PyTorch (`torch.backends.cudnn.allow_tf32 = True`); [`set_tf32`]`(false)` or
//! `SEG_CUDA_TF32=0` asks for FP32 multiply-adds only.
//!
//! The convolution pieces take f32 or bf16 operands (mixed precision): bf16 tensors with f32
//! compute type (cuDNN's "pseudo-bf16" configuration), on tensor cores whatever the TF32
//! setting. As in PyTorch, engines whose numerical notes say they reduce partial sums in
//! reduced precision are allowed (only FP16 down-conversion is refused). A geometry no plan and
//! no legacy algorithm takes (bf16 on a GPU without bf16 engines, say), or whose plan cuDNN
//! refuses as not supported when it runs, is logged once and left to the caller's candle
//! fallback, counted by [`left_to_candle`].

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, DType, Layout, Result};
use seg_kernels::{Geom, Piece};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

type Status = c_int;
type Ptr = *mut c_void;
type CPtr = *const c_void;

const DATA_FLOAT: c_int = 0;
const DATA_BFLOAT16: c_int = 9;
const NCHW: c_int = 0;
const CROSS_CORRELATION: c_int = 1;
const DEFAULT_MATH: c_int = 0;
const TENSOR_OP_MATH: c_int = 1;
const FMA_MATH: c_int = 3;
/// The largest workspace an algorithm may ask for.
const MAX_WORKSPACE: usize = 1 << 30;
/// The scaling factors cuDNN takes by pointer (alpha = 1, beta = 0: overwrite the output).
static ONE: f32 = 1.0;
static ZERO: f32 = 0.0;

fn scale(v: &'static f32) -> CPtr {
    (v as *const f32).cast()
}

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
    fwd_algo: GetAlgo,
    fwd_ws: WorkspaceSize,
    fwd: Run,
    bwd_data_algo: GetAlgo,
    bwd_data_ws: WorkspaceSize,
    bwd_data: Run,
    bwd_filter_algo: GetAlgo,
    bwd_filter_ws: WorkspaceSize,
    bwd_filter: Run,
    be_create: unsafe extern "C" fn(c_int, *mut Ptr) -> Status,
    be_destroy: unsafe extern "C" fn(Ptr) -> Status,
    be_set: unsafe extern "C" fn(Ptr, c_int, c_int, i64, CPtr) -> Status,
    be_get: unsafe extern "C" fn(Ptr, c_int, c_int, i64, *mut i64, Ptr) -> Status,
    be_finalize: unsafe extern "C" fn(Ptr) -> Status,
    be_execute: unsafe extern "C" fn(Ptr, Ptr, Ptr) -> Status,
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
        // The signatures and enumerations below are cuDNN 9's; an older library (the unversioned
        // name may be one) is refused, so candle's ops run instead.
        // SAFETY: `cudnnGetVersion` has this signature in every cuDNN: no arguments, the
        // version number returned.
        let version = unsafe {
            lib.get::<unsafe extern "C" fn() -> usize>(b"cudnnGetVersion\0")
                .map(|f| f())
        }
        .map_err(|e| format!("cudnnGetVersion: {e}"))?;
        if version < 90000 {
            return Err(format!("cuDNN 9 is needed, this library is version {version}"));
        }
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
            fwd_algo: sym!("cudnnGetConvolutionForwardAlgorithm_v7"),
            fwd_ws: sym!("cudnnGetConvolutionForwardWorkspaceSize"),
            fwd: sym!("cudnnConvolutionForward"),
            bwd_data_algo: sym!("cudnnGetConvolutionBackwardDataAlgorithm_v7"),
            bwd_data_ws: sym!("cudnnGetConvolutionBackwardDataWorkspaceSize"),
            bwd_data: sym!("cudnnConvolutionBackwardData"),
            bwd_filter_algo: sym!("cudnnGetConvolutionBackwardFilterAlgorithm_v7"),
            bwd_filter_ws: sym!("cudnnGetConvolutionBackwardFilterWorkspaceSize"),
            bwd_filter: sym!("cudnnConvolutionBackwardFilter"),
            be_create: sym!("cudnnBackendCreateDescriptor"),
            be_destroy: sym!("cudnnBackendDestroyDescriptor"),
            be_set: sym!("cudnnBackendSetAttribute"),
            be_get: sym!("cudnnBackendGetAttribute"),
            be_finalize: sym!("cudnnBackendFinalize"),
            be_execute: sym!("cudnnBackendExecute"),
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

/// Whether `s` is one of cuDNN 9's "not supported" statuses (3000-3999): the operation, shape,
/// type or layout has no implementation, as opposed to a bad parameter or a failure.
fn not_supported(s: Status) -> bool {
    (3000..4000).contains(&s)
}

/// cuDNN, where it loads and is not turned off (the `cudnn` setting, `SEG_CUDNN=0`).
fn api() -> Option<&'static Api> {
    if !crate::settings::cudnn() {
        return None;
    }
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| match Api::load() {
        Ok(api) => Some(api),
        Err(e) => {
            tracing::warn!("cuDNN not loaded ({e}); CUDA convolutions use candle's im2col + cuBLAS");
            None
        }
    })
    .as_ref()
}

/// Whether the CUDA convolutions run on cuDNN.
pub fn available() -> bool {
    api().is_some()
}

/// Allows (the default, PyTorch's) or forbids TF32 tensor cores in cuDNN convolutions.
pub fn set_tf32(allow: bool) {
    crate::settings::set_cuda_tf32(allow);
}

/// Whether TF32 is allowed (the `cuda_tf32` setting: [`set_tf32`], else `SEG_CUDA_TF32=0`
/// forbids, else yes).
pub fn tf32() -> bool {
    crate::settings::cuda_tf32()
}

/// Geometries (with piece and type) that cuDNN could not run, left to candle's ops.
static LEFT_TO_CANDLE: AtomicUsize = AtomicUsize::new(0);

/// How many convolution geometries (each with its piece and element type) cuDNN has had no plan
/// and no legacy algorithm for in this process, so that candle's slower ops run them; the
/// benchmarks print it, since a fallback is otherwise only a log line.
pub fn left_to_candle() -> usize {
    LEFT_TO_CANDLE.load(Ordering::Relaxed)
}

/// Whether cuDNN runs the convolution pieces on operands of `dtype`: f32 or bf16, with cuDNN
/// loaded.
pub fn takes(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16) && available()
}

/// An element type of the convolution pieces.
trait Elem: CudaDType + DeviceRepr {
    /// Its `cudnnDataType_t`.
    const CUDNN: c_int;
}

impl Elem for f32 {
    const CUDNN: c_int = DATA_FLOAT;
}

impl Elem for half::bf16 {
    const CUDNN: c_int = DATA_BFLOAT16;
}

/// How a plan may use tensor cores: TF32 for f32 where allowed, always for bf16.
fn tensor_cores(data_type: c_int, allow_tf32: bool) -> bool {
    data_type == DATA_BFLOAT16 || allow_tf32
}

/// The order in which the legacy calls take the forward convolution's `(x, w, y)` for `piece`:
/// the two inputs, then the output (`(x, w) → y`, `(w, dy) → dx`, `(x, dy) → dw`).
fn legacy_order(piece: Piece) -> [usize; 3] {
    match piece {
        Piece::Forward => [0, 1, 2],
        Piece::InputGrad => [1, 2, 0],
        Piece::WeightGrad => [0, 2, 1],
    }
}

/// Descriptors and the chosen algorithm of the legacy calls for one geometry and piece.
struct LegacyPlan {
    x: Ptr,
    y: Ptr,
    w: Ptr,
    conv: Ptr,
    algo: c_int,
    workspace: usize,
}

#[derive(Default)]
struct ThreadState {
    handles: HashMap<candle_core::cuda_backend::DeviceId, Ptr>,
    /// Per device (a graph plan belongs to its handle), geometry, piece, element type, TF32 and
    /// alignment.
    plans: HashMap<(candle_core::cuda_backend::DeviceId, Geom, Piece, c_int, bool, usize), Exec>,
}

thread_local! {
    // cuDNN handles and descriptors are not shared between threads; they live as long as the
    // thread (a few dozen per model).
    static STATE: RefCell<ThreadState> = RefCell::default();
}

fn dim(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {v} exceeds int")))
}

fn tensor_desc(api: &Api, (n, c, h, w): (usize, usize, usize, usize), data_type: c_int) -> Result<Ptr> {
    let mut d = std::ptr::null_mut();
    // SAFETY: d is a valid out-pointer; the descriptor is then set with plain integers.
    unsafe {
        api.check("create tensor descriptor", (api.create_tensor)(&mut d))?;
        api.check(
            "set tensor descriptor",
            (api.set_tensor_4d)(d, NCHW, data_type, dim(n)?, dim(c)?, dim(h)?, dim(w)?),
        )?;
    }
    Ok(d)
}

/// Tensor-core math (1) only where tensor cores may be used ([`tensor_cores`]); never
/// down-conversion to FP16 (2).
fn math_ok(math: c_int, tensor_cores: bool) -> bool {
    match math {
        1 => tensor_cores,
        2 => false,
        _ => true,
    }
}

impl LegacyPlan {
    fn new(api: &Api, handle: Ptr, g: &Geom, kind: Piece, data_type: c_int, allow_tf32: bool) -> Result<Self> {
        let cores = tensor_cores(data_type, allow_tf32);
        let x = tensor_desc(api, (g.n, g.c, g.h, g.w), data_type)?;
        let y = tensor_desc(api, (g.n, g.co, g.ho, g.wo), data_type)?;
        let (mut w, mut conv) = (std::ptr::null_mut(), std::ptr::null_mut());
        let (p, s, d) = (dim(g.pad)?, dim(g.stride)?, dim(g.dil)?);
        // SAFETY: out-pointers are valid; the setters take plain integers.
        unsafe {
            api.check("create filter descriptor", (api.create_filter)(&mut w))?;
            api.check(
                "set filter descriptor",
                (api.set_filter_4d)(w, data_type, NCHW, dim(g.co)?, dim(g.c)?, dim(g.kh)?, dim(g.kw)?),
            )?;
            api.check("create convolution descriptor", (api.create_conv)(&mut conv))?;
            api.check(
                "set convolution descriptor",
                (api.set_conv_2d)(conv, p, p, s, s, d, d, CROSS_CORRELATION, DATA_FLOAT),
            )?;
            let math = if data_type == DATA_BFLOAT16 {
                TENSOR_OP_MATH
            } else if allow_tf32 {
                DEFAULT_MATH
            } else {
                FMA_MATH
            };
            api.check("set math type", (api.set_math)(conv, math))?;
        }
        let (get, size): (GetAlgo, WorkspaceSize) = match kind {
            Piece::Forward => (api.fwd_algo, api.fwd_ws),
            Piece::InputGrad => (api.bwd_data_algo, api.bwd_data_ws),
            Piece::WeightGrad => (api.bwd_filter_algo, api.bwd_filter_ws),
        };
        let xwy = [x, w, y];
        let [a, b, c] = legacy_order(kind).map(|i| xwy[i]);
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
                get(
                    handle,
                    a,
                    b,
                    conv,
                    c,
                    perf.len() as c_int,
                    &mut count,
                    perf.as_mut_ptr(),
                ),
            )?;
        }
        let found = perf[..count.clamp(0, perf.len() as c_int) as usize]
            .iter()
            .find(|p| p.status == 0 && p.memory <= MAX_WORKSPACE && math_ok(p.math_type, cores));
        let Some(best) = found else {
            candle_core::bail!("cuDNN: no {kind:?} algorithm for {g:?}")
        };
        let mut workspace = 0;
        // SAFETY: descriptors as above; workspace is a valid out-pointer.
        unsafe {
            if cores {
                api.check("set math type", (api.set_math)(conv, best.math_type))?;
            }
            api.check("workspace size", size(handle, a, b, conv, c, best.algo, &mut workspace))?;
        }
        Ok(Self {
            x,
            y,
            w,
            conv,
            algo: best.algo,
            workspace,
        })
    }
}

/// A contiguous view of a CUDA operand of element type `T`.
fn view<'a, T: Elem>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("cuDNN: contiguous operands expected")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// Runs `f(api, handle, stream, state)` with this thread's handle for `dev`, bound to candle's
/// stream.
fn with_handle<T>(
    dev: &CudaDevice,
    f: impl FnOnce(&Api, Ptr, &Arc<CudaStream>, &mut ThreadState) -> Result<T>,
) -> Result<T> {
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
        api.check("set stream", unsafe {
            (api.set_stream)(handle, stream.cu_stream() as Ptr)
        })?;
        f(api, handle, &stream, &mut st)
    })
}

fn alloc<T: Elem>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller has cuDNN overwrite the whole buffer (beta = 0) before it is read.
    unsafe { dev.alloc::<T>(n) }
}

/// How one geometry and piece runs: an execution plan of cuDNN's graph API, or the legacy
/// call where no plan could be built or `SEG_CUDNN_LEGACY=1`. A whole forward call took about
/// 27 µs of host time the first way and 49 µs the second (cuDNN 9.19, H200,
/// `--example cuda_overhead`).
enum Exec {
    Graph(graph::Plan),
    Legacy(LegacyPlan),
    /// Neither builds for this geometry and type: the caller's fallback runs it.
    Unsupported,
}

/// Whether to skip the graph API (the `cudnn_legacy` setting, `SEG_CUDNN_LEGACY=1`).
fn legacy_only() -> bool {
    crate::settings::cudnn_legacy()
}

/// The largest power of two (at most 16) that divides every pointer: the byte alignment the
/// graph API is promised.
fn alignment(ptrs: &[u64]) -> usize {
    let mut a = 16u64;
    while a > 1 && ptrs.iter().any(|p| p % a != 0) {
        a /= 2;
    }
    a as usize
}

/// One convolution piece: `(x, w) → y`, `(dy, w) → dx` (also a transposed convolution's
/// forward) or `(x, dy) → dw`, all NCHW, both operands f32 or both bf16; `None` where cuDNN has
/// no way to run it (the caller falls back).
pub fn conv(
    g: &Geom,
    kind: Piece,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> Result<Option<CudaStorage>> {
    use candle_core::backend::BackendStorage;
    match (s1.dtype(), s2.dtype()) {
        (DType::F32, DType::F32) => conv_piece_of::<f32>(g, kind, (s1, l1), (s2, l2)),
        (DType::BF16, DType::BF16) => conv_piece_of::<half::bf16>(g, kind, (s1, l1), (s2, l2)),
        (a, b) => candle_core::bail!("cuDNN convolution: operands of {a:?} and {b:?} (two f32 or two bf16 expected)"),
    }
}

fn conv_piece_of<T: Elem>(
    g: &Geom,
    kind: Piece,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> Result<Option<CudaStorage>> {
    let dev = s1.device().clone();
    let (a, b) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
    let allow = tf32();
    let len = kind.out_dims(g).iter().product();
    let mut out = alloc::<T>(&dev, len)?;
    let ran = with_handle(&dev, |api, handle, stream, st| {
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (po, _ro) = out.device_ptr_mut(stream);
        let align = alignment(&[pa, pb, po]);
        let exec = match st.plans.entry((dev.id(), *g, kind, T::CUDNN, allow, align)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let built = if legacy_only() {
                    None
                } else {
                    graph::Plan::new(api, handle, g, kind, T::CUDNN, allow, align)
                };
                e.insert(match built {
                    Some(p) => Exec::Graph(p),
                    None => match LegacyPlan::new(api, handle, g, kind, T::CUDNN, allow) {
                        Ok(p) => Exec::Legacy(p),
                        Err(err) => {
                            tracing::warn!(
                                "cuDNN runs no {kind:?} convolution for {g:?} in {}: {err}; candle's ops run it",
                                if T::CUDNN == DATA_BFLOAT16 { "bf16" } else { "f32" }
                            );
                            LEFT_TO_CANDLE.fetch_add(1, Ordering::Relaxed);
                            Exec::Unsupported
                        }
                    },
                })
            }
        };
        let workspace = match exec {
            Exec::Graph(p) => p.workspace,
            Exec::Legacy(p) => p.workspace,
            Exec::Unsupported => return Ok(false),
        };
        let mut ws = if workspace > 0 {
            // SAFETY: scratch space cuDNN writes before it reads.
            Some(unsafe { stream.alloc::<u8>(workspace) }.map_err(candle_core::Error::wrap)?)
        } else {
            None
        };
        let (pws, _rw) = match ws.as_mut() {
            Some(ws) => {
                let (p, r) = ws.device_ptr_mut(stream);
                (p as Ptr, Some(r))
            }
            None => (std::ptr::null_mut(), None),
        };
        // The operands as (x, w, y) of the forward convolution: for the input gradient y is
        // the given dy and x the output; for the kernel gradient w is the output.
        let xwy = match kind {
            Piece::Forward => [pa, pb, po],
            Piece::InputGrad => [po, pb, pa],
            Piece::WeightGrad => [pa, po, pb],
        }
        .map(|p| p as Ptr);
        let (status, what) = match &*exec {
            Exec::Graph(p) => (p.run(api, handle, xwy, pws)?, "graph execute (convolution)"),
            Exec::Legacy(plan) => {
                let (run, what) = match kind {
                    Piece::Forward => (api.fwd, "convolution forward"),
                    Piece::InputGrad => (api.bwd_data, "convolution backward data"),
                    Piece::WeightGrad => (api.bwd_filter, "convolution backward filter"),
                };
                let descs = [plan.x, plan.w, plan.y];
                let [i1, i2, o] = legacy_order(kind);
                // SAFETY: the pointers are live device buffers of the sizes the descriptors
                // state, on the stream the handle is bound to; the workspace has the size the
                // plan asked for.
                let status = unsafe {
                    run(
                        handle,
                        scale(&ONE),
                        descs[i1],
                        xwy[i1],
                        descs[i2],
                        xwy[i2],
                        plan.conv,
                        plan.algo,
                        pws,
                        plan.workspace,
                        scale(&ZERO),
                        descs[o],
                        xwy[o],
                    )
                };
                (status, what)
            }
            Exec::Unsupported => return Ok(false),
        };
        if not_supported(status) {
            // A plan that built but will not run (cuDNN can decide so only at execution): the
            // legacy calls take this geometry from the next call on where a graph plan was
            // refused and they have an algorithm, candle's ops otherwise (and for this call).
            let legacy = match exec {
                Exec::Graph(_) => LegacyPlan::new(api, handle, g, kind, T::CUDNN, allow).ok(),
                _ => None,
            };
            tracing::warn!(
                "cuDNN's {what} refused {kind:?} for {g:?} in {}: status {status}; {} run it",
                if T::CUDNN == DATA_BFLOAT16 { "bf16" } else { "f32" },
                if legacy.is_some() {
                    "the legacy calls"
                } else {
                    "candle's ops"
                }
            );
            *exec = match legacy {
                Some(p) => Exec::Legacy(p),
                None => {
                    LEFT_TO_CANDLE.fetch_add(1, Ordering::Relaxed);
                    Exec::Unsupported
                }
            };
            return Ok(false);
        }
        api.check(what, status).map(|()| true)
    })?;
    Ok(ran.then(|| CudaStorage::wrap_cuda_slice(out, dev)))
}

/// cuDNN's graph ("backend") API for one convolution piece: the operation graph, the engine
/// its heuristics rank first among those that build (skipping engines that convert inputs to
/// FP16, and tensor-core engines where TF32 is not allowed, as PyTorch does), and the
/// finalised execution plan, kept for the life of the thread. A call then only binds the
/// pointers (a variant pack) and executes.
mod graph {
    use super::{Api, CPtr, Geom, Piece, Ptr, CROSS_CORRELATION, DATA_FLOAT, MAX_WORKSPACE};
    use std::ffi::c_int;

    const T_HANDLE: c_int = 0;
    const T_DATA_TYPE: c_int = 1;
    const T_INT64: c_int = 3;
    const T_FLOAT: c_int = 4;
    const T_VOID_PTR: c_int = 6;
    const T_CONV_MODE: c_int = 7;
    const T_HEUR_MODE: c_int = 8;
    const T_NUMERICAL_NOTE: c_int = 11;
    const T_DESCRIPTOR: c_int = 15;

    const D_CONVOLUTION: c_int = 1;
    const D_ENGINE: c_int = 2;
    const D_ENGINECFG: c_int = 3;
    const D_ENGINEHEUR: c_int = 4;
    const D_PLAN: c_int = 5;
    const D_OP_FORWARD: c_int = 10;
    const D_OP_BWD_FILTER: c_int = 11;
    const D_OP_BWD_DATA: c_int = 12;
    const D_GRAPH: c_int = 15;
    const D_VARIANT_PACK: c_int = 16;
    const D_TENSOR: c_int = 17;

    const A_CONV_COMP_TYPE: c_int = 100;
    const A_CONV_MODE: c_int = 101;
    const A_CONV_DILATIONS: c_int = 102;
    const A_CONV_FILTER_STRIDES: c_int = 103;
    const A_CONV_POST_PADDINGS: c_int = 104;
    const A_CONV_PRE_PADDINGS: c_int = 105;
    const A_CONV_SPATIAL_DIMS: c_int = 106;
    const A_HEUR_MODE: c_int = 200;
    const A_HEUR_GRAPH: c_int = 201;
    const A_HEUR_RESULTS: c_int = 202;
    const A_CFG_ENGINE: c_int = 300;
    const A_PLAN_HANDLE: c_int = 400;
    const A_PLAN_CONFIG: c_int = 401;
    const A_PLAN_WORKSPACE: c_int = 402;
    const A_GRAPH_HANDLE: c_int = 800;
    const A_GRAPH_OPS: c_int = 801;
    const A_TENSOR_ALIGNMENT: c_int = 900;
    const A_TENSOR_DATA_TYPE: c_int = 901;
    const A_TENSOR_DIMS: c_int = 902;
    const A_TENSOR_STRIDES: c_int = 903;
    const A_TENSOR_UID: c_int = 906;
    const A_VP_UIDS: c_int = 1000;
    const A_VP_POINTERS: c_int = 1001;
    const A_VP_WORKSPACE: c_int = 1003;
    const A_ENGINE_NOTES: c_int = 1303;
    /// The operation's attributes (alpha, beta, conv desc, then the three tensors) per kind,
    /// tensors in the order x, w, y.
    const A_FORWARD: [c_int; 6] = [700, 701, 702, 704, 703, 705];
    const A_BWD_DATA: [c_int; 6] = [706, 707, 708, 710, 709, 711];
    const A_BWD_FILTER: [c_int; 6] = [712, 713, 714, 716, 715, 717];

    const HEUR_INSTANT: c_int = 0;
    const HEUR_FALLBACK: c_int = 2;
    const NOTE_TENSOR_CORE: c_int = 0;
    const NOTE_DOWN_CONVERT: c_int = 1;
    /// Tensor ids in the variant pack: x, w, y.
    const UIDS: [i64; 3] = [1, 2, 3];

    pub(super) struct Plan {
        plan: Ptr,
        pub workspace: usize,
    }

    /// A backend descriptor, destroyed on drop unless kept.
    struct Desc<'a> {
        api: &'a Api,
        d: Ptr,
    }

    impl<'a> Desc<'a> {
        fn new(api: &'a Api, kind: c_int) -> Option<Self> {
            let mut d = std::ptr::null_mut();
            // SAFETY: valid out-pointer.
            (unsafe { (api.be_create)(kind, &mut d) } == 0).then_some(Self { api, d })
        }

        fn set<T>(&self, attr: c_int, ty: c_int, values: &[T]) -> Option<()> {
            // SAFETY: `values` holds `len` elements of the attribute's type.
            let s = unsafe { (self.api.be_set)(self.d, attr, ty, values.len() as i64, values.as_ptr() as CPtr) };
            (s == 0).then_some(())
        }

        fn finalize(&self) -> Option<()> {
            // SAFETY: a descriptor of this API.
            (unsafe { (self.api.be_finalize)(self.d) } == 0).then_some(())
        }

        /// Keeps the descriptor alive (the plan refers to it).
        fn keep(self) -> Ptr {
            let d = self.d;
            std::mem::forget(self);
            d
        }
    }

    impl Drop for Desc<'_> {
        fn drop(&mut self) {
            // SAFETY: created by be_create and not yet destroyed.
            unsafe { (self.api.be_destroy)(self.d) };
        }
    }

    fn tensor(api: &Api, dims: [usize; 4], uid: i64, data_type: c_int, align: usize) -> Option<Desc<'_>> {
        let t = Desc::new(api, D_TENSOR)?;
        let d: [i64; 4] = dims.map(|v| v as i64);
        let strides = [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];
        t.set(A_TENSOR_DATA_TYPE, T_DATA_TYPE, &[data_type])?;
        t.set(A_TENSOR_DIMS, T_INT64, &d)?;
        t.set(A_TENSOR_STRIDES, T_INT64, &strides)?;
        t.set(A_TENSOR_UID, T_INT64, &[uid])?;
        t.set(A_TENSOR_ALIGNMENT, T_INT64, &[align as i64])?;
        t.finalize()?;
        Some(t)
    }

    /// Whether the engine of `cfg` is one we may run (tensor cores only where `cores`).
    fn acceptable(api: &Api, cfg: Ptr, cores: bool) -> Option<bool> {
        let engine = Desc::new(api, D_ENGINE)?;
        let mut n = 0i64;
        // SAFETY: out-pointers for one descriptor and the count.
        let s = unsafe {
            (api.be_get)(
                cfg,
                A_CFG_ENGINE,
                T_DESCRIPTOR,
                1,
                &mut n,
                &engine.d as *const Ptr as Ptr,
            )
        };
        if s != 0 {
            return None;
        }
        let mut notes = [0 as c_int; 16];
        // SAFETY: room for 16 notes.
        let s = unsafe {
            (api.be_get)(
                engine.d,
                A_ENGINE_NOTES,
                T_NUMERICAL_NOTE,
                16,
                &mut n,
                notes.as_mut_ptr() as Ptr,
            )
        };
        if s != 0 {
            return None;
        }
        let notes = &notes[..n.clamp(0, 16) as usize];
        Some(!notes.contains(&NOTE_DOWN_CONVERT) && (cores || !notes.contains(&NOTE_TENSOR_CORE)))
    }

    impl Plan {
        /// The plan, or `None` where the graph API cannot build one (the caller then uses the
        /// legacy call).
        pub(super) fn new(
            api: &Api,
            handle: Ptr,
            g: &Geom,
            kind: Piece,
            data_type: c_int,
            allow_tf32: bool,
            align: usize,
        ) -> Option<Self> {
            let cores = super::tensor_cores(data_type, allow_tf32);
            let x = tensor(api, [g.n, g.c, g.h, g.w], UIDS[0], data_type, align)?;
            let w = tensor(api, [g.co, g.c, g.kh, g.kw], UIDS[1], data_type, align)?;
            let y = tensor(api, [g.n, g.co, g.ho, g.wo], UIDS[2], data_type, align)?;
            let conv = Desc::new(api, D_CONVOLUTION)?;
            let (p, st, dl) = (g.pad as i64, g.stride as i64, g.dil as i64);
            conv.set(A_CONV_COMP_TYPE, T_DATA_TYPE, &[DATA_FLOAT])?;
            conv.set(A_CONV_MODE, T_CONV_MODE, &[CROSS_CORRELATION])?;
            conv.set(A_CONV_SPATIAL_DIMS, T_INT64, &[2i64])?;
            conv.set(A_CONV_DILATIONS, T_INT64, &[dl, dl])?;
            conv.set(A_CONV_FILTER_STRIDES, T_INT64, &[st, st])?;
            conv.set(A_CONV_PRE_PADDINGS, T_INT64, &[p, p])?;
            conv.set(A_CONV_POST_PADDINGS, T_INT64, &[p, p])?;
            conv.finalize()?;
            let (op_kind, attrs) = match kind {
                Piece::Forward => (D_OP_FORWARD, A_FORWARD),
                Piece::InputGrad => (D_OP_BWD_DATA, A_BWD_DATA),
                Piece::WeightGrad => (D_OP_BWD_FILTER, A_BWD_FILTER),
            };
            let op = Desc::new(api, op_kind)?;
            op.set(attrs[0], T_FLOAT, &[1f32])?;
            op.set(attrs[1], T_FLOAT, &[0f32])?;
            op.set(attrs[2], T_DESCRIPTOR, &[conv.d])?;
            op.set(attrs[3], T_DESCRIPTOR, &[x.d])?;
            op.set(attrs[4], T_DESCRIPTOR, &[w.d])?;
            op.set(attrs[5], T_DESCRIPTOR, &[y.d])?;
            op.finalize()?;
            let graph = Desc::new(api, D_GRAPH)?;
            graph.set(A_GRAPH_OPS, T_DESCRIPTOR, &[op.d])?;
            graph.set(A_GRAPH_HANDLE, T_HANDLE, &[handle])?;
            graph.finalize()?;
            for mode in [HEUR_INSTANT, HEUR_FALLBACK] {
                if let Some(plan) = Self::from_heuristics(api, handle, &graph, mode, cores) {
                    // The plan refers to these.
                    for d in [x, w, y, conv, op, graph] {
                        d.keep();
                    }
                    return Some(plan);
                }
            }
            None
        }

        fn from_heuristics(api: &Api, handle: Ptr, graph: &Desc<'_>, mode: c_int, cores: bool) -> Option<Self> {
            let heur = Desc::new(api, D_ENGINEHEUR)?;
            heur.set(A_HEUR_GRAPH, T_DESCRIPTOR, &[graph.d])?;
            heur.set(A_HEUR_MODE, T_HEUR_MODE, &[mode])?;
            heur.finalize()?;
            let mut count = 0i64;
            // SAFETY: asks for the number of results only.
            let s = unsafe {
                (api.be_get)(
                    heur.d,
                    A_HEUR_RESULTS,
                    T_DESCRIPTOR,
                    0,
                    &mut count,
                    std::ptr::null_mut(),
                )
            };
            if s != 0 || count <= 0 {
                return None;
            }
            let cfgs: Vec<Desc<'_>> = (0..count.min(64))
                .map(|_| Desc::new(api, D_ENGINECFG))
                .collect::<Option<_>>()?;
            let ptrs: Vec<Ptr> = cfgs.iter().map(|c| c.d).collect();
            let mut got = 0i64;
            // SAFETY: `ptrs` holds that many engine-config descriptors to fill.
            let s = unsafe {
                (api.be_get)(
                    heur.d,
                    A_HEUR_RESULTS,
                    T_DESCRIPTOR,
                    ptrs.len() as i64,
                    &mut got,
                    ptrs.as_ptr() as Ptr,
                )
            };
            if s != 0 {
                return None;
            }
            for cfg in cfgs.into_iter().take(got.clamp(0, ptrs.len() as i64) as usize) {
                if acceptable(api, cfg.d, cores) != Some(true) {
                    continue;
                }
                let Some(plan) = Desc::new(api, D_PLAN) else { continue };
                if plan.set(A_PLAN_HANDLE, T_HANDLE, &[handle]).is_none()
                    || plan.set(A_PLAN_CONFIG, T_DESCRIPTOR, &[cfg.d]).is_none()
                    || plan.finalize().is_none()
                {
                    continue;
                }
                let (mut ws, mut n) = (0i64, 0i64);
                // SAFETY: one INT64 out-value.
                let s =
                    unsafe { (api.be_get)(plan.d, A_PLAN_WORKSPACE, T_INT64, 1, &mut n, &mut ws as *mut i64 as Ptr) };
                if s != 0 || ws < 0 || ws as usize > MAX_WORKSPACE {
                    continue;
                }
                // The plan may refer to its engine configuration and heuristics.
                cfg.keep();
                heur.keep();
                return Some(Self {
                    plan: plan.keep(),
                    workspace: ws as usize,
                });
            }
            None
        }

        /// Runs the plan on `ptrs` (x, w, y as the forward convolution names them): cuDNN's
        /// status, or an error where the operands could not be bound.
        pub(super) fn run(
            &self,
            api: &Api,
            handle: Ptr,
            ptrs: [Ptr; 3],
            workspace: Ptr,
        ) -> candle_core::Result<super::Status> {
            let Some(vp) = Desc::new(api, D_VARIANT_PACK) else {
                candle_core::bail!("cuDNN: could not create a variant pack")
            };
            let bound = vp
                .set(A_VP_POINTERS, T_VOID_PTR, &ptrs)
                .and_then(|_| vp.set(A_VP_UIDS, T_INT64, &UIDS));
            let bound = bound.and_then(|_| vp.set(A_VP_WORKSPACE, T_VOID_PTR, &[workspace]));
            if bound.and_then(|_| vp.finalize()).is_none() {
                candle_core::bail!("cuDNN: could not bind the operands of a convolution");
            }
            // SAFETY: the plan was finalised for this handle; the pointers are live buffers of
            // the shapes and alignment the plan was built for, the workspace of its size.
            Ok(unsafe { (api.be_execute)(handle, self.plan, vp.d) })
        }
    }
}

/// `relu(conv(x, w) + b)`: the convolution, then the bias added and the ReLU applied in place
/// by one NVRTC kernel ([`crate::nvrtc::bias_relu`]; f32 or bf16); `None` where cuDNN cannot
/// run the convolution.
pub fn forward_bias_relu(
    g: &Geom,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> Result<Option<CudaStorage>> {
    let Some(mut y) = conv(g, Piece::Forward, (s1, l1), (s2, l2))? else {
        return Ok(None);
    };
    crate::nvrtc::bias_relu(&mut y, (g.n, g.co, g.ho * g.wo), s3, l3)?;
    Ok(Some(y))
}
