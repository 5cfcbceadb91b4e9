//! The custom ops on a CUDA device against the CPU kernels, in value and gradient. Compiled only
//! with `--features cuda`; then a missing GPU is a failure, not a skip.

use candle_core::{DType, Device, ModuleT, Tensor, Var};

/// CUDA device 0 as the trainer opens it, with FP32-only convolutions: with TF32 tensor cores
/// (the default) results differ from the CPU's by about 1e-3 relative.
fn gpu() -> Device {
    seg_cuda::cudnn::set_tf32(false);
    seg_nn::cuda_device(0).expect("these tests need CUDA device 0 (the build has `--features cuda`)")
}

/// The convolutions run on cuDNN where it is installed, unless turned off with `SEG_CUDNN=0`
/// (then the cases above test candle's im2col fallback).
#[test]
fn cudnn_is_loaded_unless_turned_off() {
    let off = !seg_cuda::Settings::current().cudnn;
    assert_eq!(
        seg_cuda::cudnn::available(),
        !off,
        "cuDNN should load (is libcudnn.so.9 on the library path?)"
    );
}

/// SGD's fused CUDA updates give the CPU's parameters and momentum after two steps.
#[test]
fn sgd_steps_on_cuda_match_the_cpu() {
    use seg_nn::Optimizer;
    let p0 = Tensor::randn(0f32, 1.0, (37, 29), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (37, 29), &Device::Cpu).unwrap();
    let run = |dev: &Device| {
        let p = Var::from_tensor(&p0.to_device(dev).unwrap()).unwrap();
        let w = w.to_device(dev).unwrap();
        let mut sgd = seg_nn::Sgd::new(vec![("p".into(), p.clone(), 2.0)], 0.9, 5e-4).unwrap();
        for _ in 0..2 {
            let loss = (p.as_tensor().sqr().unwrap() * &w).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            sgd.step(&g, 0.05).unwrap();
        }
        let state = sgd.state();
        (p.as_tensor().clone(), state[0].1.clone())
    };
    let (pc, bc) = run(&Device::Cpu);
    let (pg, bg) = run(&gpu());
    agree(&pg, &pc, "sgd parameters");
    agree(&bg, &bc, "sgd momentum");
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn agree(a: &Tensor, b: &Tensor, what: &str) {
    let (a, b) = (host(a), host(b));
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d <= 1e-4 * scale, "{what}: CUDA and CPU differ by {d} (scale {scale})");
}

/// Runs `f` on CPU and GPU copies of the same inputs; compares output and every input gradient.
fn parity(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, what: &str) {
    let on = |dev: &Device| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        // Fixed output weights, the same on both devices.
        let n = y.elem_count();
        let wts: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect();
        let wts = Tensor::from_vec(wts, y.dims(), &Device::Cpu)
            .unwrap()
            .to_device(dev)
            .unwrap();
        let grads = (&y * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let gs: Vec<Tensor> = vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
        (y, gs)
    };
    let (yc, gc) = on(&Device::Cpu);
    let (yg, gg) = on(&gpu());
    agree(&yg, &yc, &format!("{what}: output"));
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        agree(a, b, &format!("{what}: gradient of input {i}"));
    }
}

#[test]
fn convolutions_on_cuda_match_the_cpu() {
    for (c, co, k, stride, pad, dil, h, w) in super::CONV_CASES {
        let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &Device::Cpu).unwrap();
        let kt = Tensor::randn(0f32, 1.0, (co, c, k, k), &Device::Cpu).unwrap();
        parity(
            &[x, kt],
            &|t| seg_nn::ops::conv::conv2d(&t[0], &t[1], stride, pad, dil).unwrap(),
            &format!("conv {c}->{co} k{k} s{stride} p{pad} d{dil}"),
        );
    }
    // A VGG-sized layer, where cuDNN picks other algorithms than for the small cases.
    let x = Tensor::randn(0f32, 1.0, (1, 64, 40, 56), &Device::Cpu).unwrap();
    let kt = Tensor::randn(0f32, 0.05, (64, 64, 3, 3), &Device::Cpu).unwrap();
    parity(
        &[x, kt],
        &|t| seg_nn::ops::conv::conv2d(&t[0], &t[1], 1, 1, 1).unwrap(),
        "conv 64->64 k3 at 40x56",
    );
    let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 7), &Device::Cpu).unwrap();
    let kt = Tensor::randn(0f32, 1.0, (5, 4, 3, 3), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, 5, &Device::Cpu).unwrap();
    parity(
        &[x, kt, b],
        &|t| seg_nn::ops::conv::conv2d_bias_relu(&t[0], &t[1], &t[2], 1, 1, 1).unwrap(),
        "fused conv+bias+relu",
    );
    for (ci, co, k, stride, pad) in [(3, 3, 4, 2, 1), (19, 19, 16, 8, 4)] {
        let x = Tensor::randn(0f32, 1.0, (2, ci, 5, 7), &Device::Cpu).unwrap();
        let kt = Tensor::randn(0f32, 1.0, (ci, co, k, k), &Device::Cpu).unwrap();
        parity(
            &[x, kt],
            &|t| seg_nn::ops::conv::conv_transpose2d(&t[0], &t[1], stride, pad, 1).unwrap(),
            &format!("convT {ci}->{co} k{k} s{stride}"),
        );
    }
}

#[test]
fn pool_norm_loss_and_resize_on_cuda_match_the_cpu() {
    let x = Tensor::randn(0f32, 1.0, (2, 5, 8, 12), &Device::Cpu).unwrap();
    parity(
        std::slice::from_ref(&x),
        &|t| seg_nn::max_pool2x2(&t[0]).unwrap(),
        "max pool",
    );
    // Integers: most windows hold ties, whose gradient goes to the first maximum on both.
    let ties = (&x * 1.5).unwrap().round().unwrap();
    parity(
        std::slice::from_ref(&ties),
        &|t| seg_nn::max_pool2x2(&t[0]).unwrap(),
        "max pool with ties",
    );
    parity(
        std::slice::from_ref(&x),
        &|t| seg_nn::resize_bilinear(&t[0], 13, 7).unwrap(),
        "resize",
    );
    let labels: Vec<u32> = (0..2 * 8 * 12)
        .map(|i| if i % 7 == 0 { 255 } else { (i % 5) as u32 })
        .collect();
    let lab = Tensor::from_vec(labels, (2, 8, 12), &Device::Cpu).unwrap();
    parity(
        std::slice::from_ref(&x),
        &|t| seg_nn::cross_entropy_ignore(&t[0], &lab.to_device(t[0].device()).unwrap(), 255).unwrap(),
        "cross-entropy",
    );
    let bn = |dev: &Device| {
        let vars = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, dev);
        (seg_nn::BatchNorm2d::new(5, vb.pp("bn"), &vars).unwrap(), vars)
    };
    let (bn_c, _vc) = bn(&Device::Cpu);
    let (bn_g, _vg) = bn(&gpu());
    parity(
        std::slice::from_ref(&x),
        &|t| {
            let m = if t[0].device().is_cpu() { &bn_c } else { &bn_g };
            m.forward_t(&t[0], true).unwrap()
        },
        "batch norm (training)",
    );
}

/// bf16 autocast on CUDA (bf16 activations, products accumulated in f32: cuDNN, or candle's
/// fallback with `SEG_CUDNN=0`) against the CPU's emulation of the same numerics: a conv layer
/// with bias in its fused ReLU form (the NVRTC bias + ReLU and its gradient), the bf16 max
/// pool, a strided conv and a transposed conv; the output, which stays bf16, and the gradients
/// of the weights, the bias and the input, within bf16's rounding. Both round in the same
/// places, but the products' f32 sums run in another order, so a value near a rounding boundary
/// can land one bf16 step apart, and a pool window holding a near-tie can route its gradient
/// to another element: the output is held element by element, the gradients in relative L2
/// norm.
#[test]
fn bf16_autocast_on_cuda_matches_the_cpu_emulation() {
    use candle_core::Module;
    use candle_nn::{VarBuilder, VarMap};
    let x0 = Tensor::randn(0f32, 1.0, (2, 16, 20, 24), &Device::Cpu).unwrap();
    let run = |dev: &Device| {
        let vars = VarMap::new();
        let vb = seg_nn::init::seeded_builder(&vars, 4, DType::F32, dev);
        let pad = super::padded();
        let strided = super::strided();
        let conv = seg_nn::conv2d(16, 32, 3, pad, vb.pp("c")).unwrap();
        let down = seg_nn::conv2d(32, 32, 3, strided, vb.pp("d")).unwrap();
        let up =
            seg_nn::ConvTranspose2d::bilinear(32, 2, VarBuilder::from_varmap(&vars, DType::F32, dev).pp("up"), &vars)
                .unwrap();
        let x = Var::from_tensor(&x0.to_device(dev).unwrap()).unwrap();
        let _bf16 = seg_nn::autocast(seg_nn::Precision::Bf16);
        let a = conv.forward_relu(x.as_tensor()).unwrap();
        let y = up
            .forward(&seg_nn::max_pool2x2(&down.forward(&a).unwrap()).unwrap())
            .unwrap();
        assert_eq!(y.dtype(), DType::BF16, "activations stay bf16 inside the scope");
        let y = seg_nn::precision::to_f32(&y).unwrap();
        let loss = y.sqr().unwrap().mean_all().unwrap();
        let g = loss.backward().unwrap();
        let var = |n: &str| vars.data().lock().unwrap()[n].clone();
        let grad = |t: &Tensor| g.get(t).unwrap().clone();
        let (cw, cb, dw) = (var("c.weight"), var("c.bias"), var("d.weight"));
        [
            y.clone(),
            grad(cw.as_tensor()),
            grad(cb.as_tensor()),
            grad(dw.as_tensor()),
            grad(x.as_tensor()),
        ]
    };
    let cpu = run(&Device::Cpu);
    let cuda = run(&gpu());
    let names = [
        "bf16 output",
        "conv weight gradient",
        "conv bias gradient",
        "strided conv weight gradient",
        "input gradient",
    ];
    for (i, ((a, b), what)) in cuda.iter().zip(&cpu).zip(names).enumerate() {
        assert_eq!(a.dtype(), DType::F32, "{what}: f32 outside the network");
        let (a, b) = (host(a), host(b));
        let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let d = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let rel = norm(&mut a.iter().zip(&b).map(|(x, y)| x - y)) / norm(&mut b.iter().copied()).max(1e-30);
        eprintln!("{what}: max difference {d} (scale {scale}), relative L2 {rel:.2e}");
        if i == 0 {
            assert!(
                d <= 3e-2 * scale,
                "{what}: CUDA and the CPU emulation differ by {d} (scale {scale})"
            );
        } else {
            assert!(rel <= 2e-2, "{what}: relative L2 difference {rel:.2e}");
        }
    }
}

/// The NVRTC argmax over channels gives the CPU kernel's ids, ties included.
#[test]
fn argmax_channels_on_cuda_matches_the_cpu() {
    let mut rng = seg_core::Rng::new(2);
    let x: Vec<f32> = (0..2 * 19 * 33 * 65).map(|_| rng.below(5) as f32).collect();
    let x = Tensor::from_vec(x, (2, 19, 33, 65), &Device::Cpu).unwrap();
    let ids = |t: &Tensor| {
        seg_nn::argmax_channels(t)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    };
    assert_eq!(ids(&x.to_device(&gpu()).unwrap()), ids(&x));
}
