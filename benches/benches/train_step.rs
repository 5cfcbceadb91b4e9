//! Per-batch throughput of training steps (forward, backward, optimiser step), in images per
//! second: VGG16-FCN8s and its reduced variant at 1×3×256×512 (SGD with momentum, as the
//! PyTorch reference `benches/reference/train_step_torch.py`), and one step of every adaptation
//! method next to source-only on the demo model and crop, so the cost of adaptation per batch
//! is visible; and inference (forward + argmax) at Cityscapes' full 1024×2048. Set
//! `SEG_BENCH_VGG=0` to skip the (slow) VGG steps. `SEG_BENCH_DEVICE=cuda` runs everything on
//! CUDA device 0 (build with `--features cuda`); each timed iteration ends with a device
//! synchronize, so the time covers the GPU's work.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seg_core::{FeatureTap, HeadInput, LossTerm, ParamGroup, StepInfo};
use seg_heads::MethodConfig;
use seg_nn::{cross_entropy_ignore, OptimizerConfig};

/// Large buffers are reused across training steps instead of re-faulted (see `seg_nn::alloc`).
#[global_allocator]
static ALLOC: seg_nn::alloc::CachingAlloc = seg_nn::alloc::CachingAlloc::new();

struct Step {
    vars: VarMap,
    backbone: Box<dyn seg_core::Backbone>,
    head: Option<Box<dyn seg_core::AdaptationHead>>,
    opts: Vec<(ParamGroup, Box<dyn seg_nn::Optimizer>)>,
}

fn device() -> Device {
    match std::env::var("SEG_BENCH_DEVICE").as_deref() {
        Ok("cuda") => seg_nn::cuda_device(0).expect("CUDA device 0 (build with --features cuda)"),
        _ => Device::Cpu,
    }
}

fn build(model: seg_fcn::ModelName, method: &MethodConfig, dev: &Device) -> Step {
    let dev = dev.clone();
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 0, DType::F32, &dev);
    let backbone = seg_fcn::build(model, 19, vb.pp("model"), &vars).unwrap();
    let stats = seg_heads::SizeConstraints::from_fractions(&[[1.0 / 19.0; 19], [0.5 / 19.0; 19]]);
    let head = method
        .build_head(backbone.as_ref(), vb.pp("head"), &vars, Some(&stats))
        .unwrap();
    let groups = head.as_ref().map(|h| h.param_groups()).unwrap_or_default();
    let mut by: std::collections::BTreeMap<ParamGroup, Vec<(String, candle_core::Var, f64)>> = Default::default();
    for (name, var) in vars.data().lock().unwrap().iter() {
        if seg_nn::layers::is_statistic(name) {
            continue;
        }
        let g = groups
            .iter()
            .filter(|(p, _, _)| name.starts_with(&format!("{p}.")))
            .max_by_key(|(p, _, _)| p.len())
            .map_or(ParamGroup::Segmenter, |(_, g, _)| *g);
        by.entry(g).or_default().push((name.clone(), var.clone(), 1.0));
    }
    let sgd = OptimizerConfig::Sgd {
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let opts = by.into_iter().map(|(g, p)| (g, sgd.build(p).unwrap())).collect();
    Step {
        vars,
        backbone,
        head,
        opts,
    }
}

fn step(s: &mut Step, x: &Tensor, y: &Tensor, xt: &Tensor) {
    let _ = &s.vars;
    let taps: Vec<FeatureTap> = s.head.as_ref().map(|h| h.taps()).unwrap_or_default();
    let f = s.backbone.forward_taps(x, true, &taps).unwrap();
    let mut terms = vec![LossTerm {
        name: "seg",
        value: cross_entropy_ignore(f.logits().unwrap(), y, 255).unwrap(),
        group: ParamGroup::Segmenter,
    }];
    if let Some(h) = &s.head {
        let ft = s.backbone.forward_taps(xt, true, &taps).unwrap();
        let input = HeadInput {
            backbone: s.backbone.as_ref(),
            source: &f,
            source_labels: y,
            target: &ft,
            step: StepInfo {
                step: 500,
                total_steps: 1000,
            },
        };
        terms.extend(h.losses(&input).unwrap());
    }
    let grads: Vec<_> = s
        .opts
        .iter()
        .map(|(g, _)| {
            let mine: Vec<&Tensor> = terms.iter().filter(|t| t.group == *g).map(|t| &t.value).collect();
            let total = mine.iter().skip(1).fold(mine[0].clone(), |a, b| (a + *b).unwrap());
            seg_nn::backward(&total).unwrap()
        })
        .collect();
    for ((_, o), g) in s.opts.iter_mut().zip(grads) {
        o.step(&g, 1e-4).unwrap();
    }
    x.device().synchronize().unwrap();
}

fn bench(c: &mut Criterion) {
    let dev = device();
    let vgg = std::env::var("SEG_BENCH_VGG").map_or(true, |v| v != "0");
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    if vgg {
        let x = Tensor::randn(0f32, 1.0, (1, 3, 256, 512), &dev).unwrap();
        let y = Tensor::zeros((1, 256, 512), DType::U32, &dev).unwrap();
        for model in [seg_fcn::ModelName::Vgg16Fcn8sReduced, seg_fcn::ModelName::Vgg16Fcn8s] {
            let mut s = build(model, &MethodConfig::SourceOnly, &dev);
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("{model}/1x3x256x512"), |b| b.iter(|| step(&mut s, &x, &y, &x)));
        }
    }
    let x = Tensor::randn(0f32, 1.0, (8, 3, 64, 128), &dev).unwrap();
    let y = Tensor::zeros((8, 64, 128), DType::U32, &dev).unwrap();
    for method in ["source-only", "dann", "fcn-wild", "cross-city", "san"] {
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
    for model in models {
        let s = build(model, &MethodConfig::SourceOnly, &dev);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{model}/1x3x1024x2048"), |b| {
            b.iter(|| {
                let f = s.backbone.forward_taps(&x, false, &[]).unwrap();
                let ids = f.logits().unwrap().argmax_keepdim(1).unwrap();
                dev.synchronize().unwrap();
                ids
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
