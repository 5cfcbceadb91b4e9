//! Per-batch throughput of training steps (forward, backward, optimiser step), in images per
//! second, each through the trainer's own step function (`seg_train::Stepper`): VGG16-FCN8s and
//! its reduced variant at 1×3×256×512 (on CUDA also at 1×3×512×1024 and 4×3×512×1024, each in
//! f32 and in bf16 mixed precision, `train_step/<model>/bf16/<size>`) (SGD with momentum, as
//! the PyTorch reference
//! `benches/reference/train_step_torch.py`), and one step of every adaptation method next to
//! source-only on the demo model and crop, so the cost of adaptation per batch
//! is visible; and inference (forward + argmax) at Cityscapes' full 1024×2048. Set
//! `SEG_BENCH_VGG=0` to skip the (slow) VGG steps. `SEG_BENCH_DEVICE=cuda` runs everything on
//! CUDA device 0 (build with `--features cuda`); each timed iteration ends with a device
//! synchronize, so the time covers the GPU's work.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seg_core::{Batch, Domain, SegMethod, Stage, StepCx, StepInfo};
use seg_methods::{MethodConfig, PartSeeds};
use seg_train::{LrAt, Stepper, TrainerConfig};

/// Large buffers are reused across training steps instead of re-faulted (see `seg_alloc`).
#[global_allocator]
static ALLOC: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();

/// A method and its optimisers, built as the trainer builds them (default trainer settings:
/// SGD with momentum for the segmenter, Adam for the other groups).
struct Step {
    method: Box<dyn SegMethod>,
    stepper: Stepper,
}

fn device() -> Device {
    match std::env::var("SEG_BENCH_DEVICE").as_deref() {
        Ok("cuda") => seg_nn::cuda_device(0).expect("CUDA device 0 (build with --features cuda)"),
        _ => Device::Cpu,
    }
}

fn build(model: seg_fcn::ModelName, method: &MethodConfig, dev: &Device) -> Step {
    build_with(model, method, dev, &TrainerConfig::default())
}

fn build_with(model: seg_fcn::ModelName, method: &MethodConfig, dev: &Device, cfg: &TrainerConfig) -> Step {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 0, DType::F32, dev);
    let backbone = seg_fcn::build(model, 19, vb.pp("model"), &vars).unwrap();
    let stats = seg_heads::SizeConstraints::from_fractions(&[[1.0 / 19.0; 19], [0.5 / 19.0; 19]]);
    let seeds = PartSeeds { head: 0, copies: 1 };
    let rebuild = |vb: candle_nn::VarBuilder<'_>| seg_fcn::build(model, 19, vb, &vars);
    let method = method
        .build_on(backbone, &vars, dev, seeds, &rebuild, Some(&stats))
        .unwrap();
    method.start().unwrap();
    let stepper = Stepper::new(method.as_ref(), &vars, cfg).unwrap();
    Step { method, stepper }
}

/// One training step of the trainer's step function, halfway through the schedule.
fn step(s: &mut Step, x: &Tensor, y: &Tensor, xt: &Tensor) {
    let source = Batch {
        images: x.clone(),
        labels: Some(y.clone()),
        domain: Domain::Source,
        names: Vec::new(),
        det: None,
    };
    let target = Batch {
        images: xt.clone(),
        labels: None,
        domain: Domain::Target,
        names: Vec::new(),
        det: None,
    };
    let info = StepInfo {
        step: 500,
        total_steps: 1000,
    };
    let cx = StepCx {
        source: &source,
        target: s.method.needs_target().then_some(&target),
        stage: Stage::Train,
        step: info,
        target_bn_only: true,
    };
    let at = LrAt {
        step: 500,
        total: 1000,
        power: 0.9,
    };
    let terms = s.stepper.step(s.method.as_ref(), &cx, at).unwrap();
    drop(terms);
    x.device().synchronize().unwrap();
}

fn bench(c: &mut Criterion) {
    let dev = device();
    let vgg = std::env::var("SEG_BENCH_VGG").map_or(true, |v| v != "0");
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    if vgg {
        // On CUDA also the real sizes, and each size in bf16 mixed precision (the CPU has no
        // bf16 kernels: its bf16 path only emulates the numerics).
        let sizes: &[(usize, usize, usize)] = if dev.is_cuda() {
            &[(1, 256, 512), (1, 512, 1024), (4, 512, 1024)]
        } else {
            &[(1, 256, 512)]
        };
        let precisions: &[seg_nn::Precision] = if dev.is_cuda() {
            &[seg_nn::Precision::F32, seg_nn::Precision::Bf16]
        } else {
            &[seg_nn::Precision::F32]
        };
        for &(n, h, w) in sizes {
            let x = Tensor::randn(0f32, 1.0, (n, 3, h, w), &dev).unwrap();
            let y = Tensor::zeros((n, h, w), DType::U32, &dev).unwrap();
            for model in [seg_fcn::ModelName::Vgg16Fcn8sReduced, seg_fcn::ModelName::Vgg16Fcn8s] {
                for &precision in precisions {
                    let cfg = TrainerConfig {
                        precision,
                        ..Default::default()
                    };
                    let mut s = build_with(model, &MethodConfig::SourceOnly, &dev, &cfg);
                    let name = match precision {
                        seg_nn::Precision::F32 => format!("{model}/{n}x3x{h}x{w}"),
                        seg_nn::Precision::Bf16 => format!("{model}/bf16/{n}x3x{h}x{w}"),
                    };
                    group.throughput(Throughput::Elements(n as u64));
                    seg_cuda::reset_peak_memory(&dev).unwrap();
                    group.bench_function(&name, |b| b.iter(|| step(&mut s, &x, &y, &x)));
                    if let Some(peak) = seg_cuda::peak_memory(&dev).unwrap() {
                        // PyTorch's counterpart: the reference script's "peak GPU memory" line.
                        println!(
                            "peak GPU memory train_step/{name}: {:.0} MiB",
                            peak as f64 / (1u64 << 20) as f64
                        );
                        // A convolution cuDNN could not plan runs on candle's far slower ops.
                        println!(
                            "cuDNN geometries left to candle so far: {}",
                            seg_cuda::cudnn::left_to_candle()
                        );
                    }
                }
            }
        }
    }
    let x = Tensor::randn(0f32, 1.0, (8, 3, 64, 128), &dev).unwrap();
    let y = Tensor::zeros((8, 64, 128), DType::U32, &dev).unwrap();
    for method in seg_methods::METHOD_NAMES
        .into_iter()
        .filter(|m| !matches!(*m, "oracle" | "adabn"))
    {
        let cfg: MethodConfig = method.parse().unwrap();
        let mut s = build(seg_fcn::ModelName::Small, &cfg, &dev);
        group.throughput(Throughput::Elements(8));
        group.bench_function(format!("small/{method}/8x3x64x128"), |b| {
            b.iter(|| step(&mut s, &x, &y, &x))
        });
    }
    group.finish();

    // Inference at full resolution: forward in eval mode and the per-pixel argmax.
    let mut group = c.benchmark_group("infer");
    group.sample_size(10);
    let x = Tensor::randn(0f32, 1.0, (1, 3, 1024, 2048), &dev).unwrap();
    let mut models = vec![seg_fcn::ModelName::Small];
    if vgg && (dev.is_cuda() || std::env::var("SEG_BENCH_VGG_FULLRES").is_ok_and(|v| v == "1")) {
        models.push(seg_fcn::ModelName::Vgg16Fcn8s);
    }
    // On CUDA also under bf16 autocast (bf16 activations, f32 logits), PyTorch's `--infer --amp
    // bf16` counterpart.
    let precisions: &[(&str, seg_nn::Precision)] = if dev.is_cuda() {
        &[("", seg_nn::Precision::F32), ("/bf16", seg_nn::Precision::Bf16)]
    } else {
        &[("", seg_nn::Precision::F32)]
    };
    for model in models {
        let s = build(model, &MethodConfig::SourceOnly, &dev);
        group.throughput(Throughput::Elements(1));
        for &(tag, precision) in precisions {
            group.bench_function(format!("{model}{tag}/1x3x1024x2048"), |b| {
                b.iter(|| {
                    let _no_grad = seg_train::infer::graph_free(&dev);
                    let _precision = seg_nn::autocast(precision);
                    let f = s.method.deployed().forward_taps(&x, false, &[]).unwrap();
                    let ids = seg_nn::argmax_channels(f.logits().unwrap()).unwrap();
                    dev.synchronize().unwrap();
                    ids
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
