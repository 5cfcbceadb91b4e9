//! One SSD300 training step (forward, MultiBox loss with hard-negative mining, backward, SGD
//! with momentum 0.9 and weight decay 5e-4) at 8×3×300×300, through the trainer's step function
//! (`seg_train::Stepper`), car-only (two classes with background), as the PyTorch reference
//! `benches/reference/ssd_step_torch.py` times torchvision's `ssd300_vgg16`; and the same with
//! DA-Faster-style image-level domain classifiers (8 source + 8 target images), for the cost of
//! adaptation. Boxes are matched to the default boxes on the host before the timed region, as
//! the data loader does. `SEG_BENCH_DEVICE=cuda` runs on CUDA device 0.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seg_core::{Batch, DetTargets, Domain, Stage, StepCx, StepInfo};
use seg_detect::ClassSet;
use seg_ssd::{DetMethodConfig, SsdConfig};
use seg_train::{LrAt, Stepper, TrainerConfig};

#[global_allocator]
static ALLOC: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();

const N: usize = 8;

fn device() -> Device {
    match std::env::var("SEG_BENCH_DEVICE").as_deref() {
        Ok("cuda") => seg_nn::cuda_device(0).expect("CUDA device 0 (build with --features cuda)"),
        _ => Device::Cpu,
    }
}

/// A batch of noise images with two car boxes each (the reference's boxes, in unit coordinates).
fn batch(cfg: &SsdConfig, dev: &Device, seed: u64, labelled: bool) -> Batch {
    let mut rng = seg_core::Rng::new(seed);
    let px: Vec<f32> = (0..N * 3 * 300 * 300).map(|_| rng.normal()).collect();
    let images = Tensor::from_vec(px, (N, 3, 300, 300), dev).unwrap();
    let priors = cfg.prior_spec().priors();
    let boxes = [
        [30.0 / 300.0, 40.0 / 300.0, 120.0 / 300.0, 150.0 / 300.0],
        [150.0 / 300.0, 60.0 / 300.0, 280.0 / 300.0, 200.0 / 300.0],
    ];
    let (c, o) = seg_ssd::coding::match_priors(&boxes, &[0, 0], &priors, 0.5);
    let p = priors.len();
    let det = labelled.then(|| DetTargets {
        classes: Tensor::from_vec(c.repeat(N), (N, p), dev).unwrap(),
        offsets: Tensor::from_vec(o.into_iter().flatten().collect::<Vec<f32>>().repeat(N), (N, p, 4), dev).unwrap(),
    });
    Batch {
        images,
        labels: None,
        domain: if labelled { Domain::Source } else { Domain::Target },
        names: Vec::new(),
        det,
    }
}

fn bench(c: &mut Criterion) {
    let dev = device();
    let cfg = SsdConfig::vgg300(ClassSet::Car);
    let tc = TrainerConfig {
        lr: 1e-3,
        optimizer: seg_nn::OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
        },
        ..Default::default()
    };
    let source = batch(&cfg, &dev, 1, true);
    let target = batch(&cfg, &dev, 2, false);
    let mut g = c.benchmark_group("ssd_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    for kind in ["source-only", "da-image"] {
        let vars = VarMap::new();
        let method = DetMethodConfig::parse(kind)
            .unwrap()
            .build(&cfg, &vars, &dev, 0)
            .unwrap();
        let mut stepper = Stepper::new(method.as_ref(), &vars, &tc).unwrap();
        let target = seg_core::Method::needs_target(method.as_ref()).then_some(&target);
        g.bench_function(format!("ssd300_{kind}_8x3x300x300"), |b| {
            b.iter(|| {
                let cx = StepCx {
                    source: &source,
                    target,
                    stage: Stage::Train,
                    step: StepInfo {
                        step: 5,
                        total_steps: 10,
                    },
                    target_bn_only: false,
                };
                let terms = stepper
                    .step(
                        method.as_ref(),
                        &cx,
                        LrAt {
                            step: 5,
                            total: 10,
                            power: 0.0,
                        },
                    )
                    .unwrap();
                // Reading the loss back ends the step on every device.
                terms[0].value.to_scalar::<f32>().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
