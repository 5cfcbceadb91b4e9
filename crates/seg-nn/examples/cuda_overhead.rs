//! Host-side cost per call of the pieces a CUDA training step is made of, and their time with
//! the GPU's work: each piece is issued 200 times without synchronising (the host's time per
//! call; on small tensors the GPU keeps up, so this is the launch overhead), then the device is
//! synchronised (the whole time per call). Needs `--features cuda` and a GPU:
//! `cargo run --release -p seg-nn --features cuda --example cuda_overhead`.
use candle_core::{Tensor, Var};
use std::time::Instant;

fn time(dev: &candle_core::Device, name: &str, mut f: impl FnMut() -> Tensor) {
    for _ in 0..5 {
        let _ = f();
    }
    dev.synchronize().unwrap();
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        let _ = f();
    }
    let host = t.elapsed() / n;
    dev.synchronize().unwrap();
    let total = t.elapsed() / n;
    println!(
        "{name:<42} host {:>8.1} us/call   with GPU {:>8.1} us/call",
        host.as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e6
    );
}

fn main() {
    let dev = seg_nn::cuda_device(0).expect("CUDA device 0");
    println!("cuDNN: {}", seg_cuda::cudnn::available());
    for (label, h, w) in [("8x8", 8, 8), ("128x256", 128, 256)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 64, h, w), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 0.05, (64, 64, 3, 3), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::zeros(64, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let (x, k, b) = (x.as_tensor(), k.as_tensor(), b.as_tensor());
        time(&dev, &format!("conv 64->64 k3 {label}"), || {
            seg_nn::ops::conv::conv2d(x, k, 1, 1, 1).unwrap()
        });
        time(&dev, &format!("conv+bias+relu {label}"), || {
            seg_nn::ops::conv::conv2d_bias_relu(x, k, b, 1, 1, 1).unwrap()
        });
        time(&dev, &format!("conv+bias+relu fwd+bwd {label}"), || {
            let y = seg_nn::ops::conv::conv2d_bias_relu(x, k, b, 1, 1, 1).unwrap();
            let _ = seg_nn::backward(&y.sum_all().unwrap()).unwrap();
            y
        });
        time(&dev, &format!("max pool fwd+bwd {label}"), || {
            let y = seg_nn::max_pool2x2(x).unwrap();
            let _ = seg_nn::backward(&y.sum_all().unwrap()).unwrap();
            y
        });
        time(&dev, &format!("candle add {label}"), || (x + x).unwrap());
        time(&dev, &format!("candle zeros_like {label}"), || x.zeros_like().unwrap());
        time(&dev, &format!("candle affine {label}"), || x.affine(2.0, 1.0).unwrap());
        time(&dev, &format!("candle sum_all {label}"), || x.sum_all().unwrap());
    }
    let p = Var::from_tensor(&Tensor::randn(0f32, 1.0, (64, 64, 3, 3), &dev).unwrap()).unwrap();
    let mut sgd = seg_nn::Sgd::new(vec![("p".into(), p.clone(), 1.0)], 0.9, 5e-4).unwrap();
    let g = seg_nn::backward(&(p.as_tensor() * 2.0).unwrap().sum_all().unwrap()).unwrap();
    time(&dev, "sgd step, one 64x64x3x3 parameter", || {
        seg_nn::Optimizer::step(&mut sgd, &g, 1e-3).unwrap();
        p.as_tensor().clone()
    });
}
