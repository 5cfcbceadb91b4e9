//! Times the phases of one VGG16-FCN8s training step at 1×3×256×512 (forward, loss, backward,
//! SGD step): `cargo run --release -p seg-fcn --example vgg_step -- [full|reduced] [steps]`.
//! Ends with the arithmetic per step (counted as direct convolutions, and as performed: the 3×3
//! layers go through Winograd's F(2×2, 3×3) on AVX-512 CPUs), the best step's GFLOP/s and the
//! process's peak resident memory (`cargo xtask bench-compare` reads these lines).
//! `SEG_BENCH_DEVICE=cuda` runs it on CUDA device 0 (build with `--features seg-nn/cuda`),
//! synchronising after every phase.
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::time::Instant;

/// Large buffers are reused across training steps instead of re-faulted (see `seg_alloc`).
#[global_allocator]
static ALLOC: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();

fn main() {
    let mut args = std::env::args().skip(1);
    let model = match args.next().as_deref() {
        Some("reduced") => seg_fcn::ModelName::Vgg16Fcn8sReduced,
        _ => seg_fcn::ModelName::Vgg16Fcn8s,
    };
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dev = match std::env::var("SEG_BENCH_DEVICE").as_deref() {
        Ok("cuda") => seg_nn::cuda_device(0).expect("CUDA device 0 (build with --features seg-nn/cuda)"),
        _ => Device::Cpu,
    };
    let sync = || dev.synchronize().unwrap();
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 1, DType::F32, &dev);
    let m = seg_fcn::build(model, 19, vb.pp("model"), &vars).unwrap();
    let params = vars
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| !seg_nn::layers::is_statistic(n))
        .map(|(n, v)| (n.clone(), v.clone(), 1.0))
        .collect();
    let mut opt = seg_nn::Sgd::new(params, 0.9, 5e-4).unwrap();
    let fcn = match model {
        seg_fcn::ModelName::Vgg16Fcn8sReduced => seg_fcn::vgg::FcnCfg::reduced(19),
        _ => seg_fcn::vgg::FcnCfg::full(19),
    };
    let gflop = 3.0 * 2.0 * fcn.forward_macs(256, 512) as f64 / 1e9;
    let winograd = dev.is_cpu() && seg_kernels::winograd::enabled();
    let performed = 3.0 * 2.0 * fcn.forward_macs_with(256, 512, winograd) as f64 / 1e9;
    let mut best = f64::INFINITY;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 256, 512), &dev).unwrap();
    let y = Tensor::zeros((1, 256, 512), DType::U32, &dev).unwrap();
    for _ in 0..steps {
        let t = Instant::now();
        let f = m.forward_taps(&x, true, &[]).unwrap();
        sync();
        let t1 = t.elapsed();
        let l = seg_nn::cross_entropy_ignore(f.logits().unwrap(), &y, 255).unwrap();
        sync();
        let t2 = t.elapsed();
        let g = seg_nn::backward(&l).unwrap();
        sync();
        let t3 = t.elapsed();
        seg_nn::Optimizer::step(&mut opt, &g, 1e-10).unwrap();
        sync();
        let t4 = t.elapsed();
        println!(
            "fwd {:.4}s loss {:.4}s bwd {:.4}s opt {:.4}s total {:.4}s",
            t1.as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64(),
            t4.as_secs_f64()
        );
        best = best.min(t4.as_secs_f64());
    }
    println!("train GFLOP per step: {gflop:.1}");
    println!("performed GFLOP per step: {performed:.1} (Winograd 3x3 layers: {winograd})");
    println!(
        "best step: {best:.3} s = {:.1} GFLOP/s counted as direct convolutions, {:.1} GFLOP/s performed",
        gflop / best,
        performed / best
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(l) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        let kb: f64 = l.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        println!("peak RSS: {:.0} MiB", kb / 1024.0);
    }
}
