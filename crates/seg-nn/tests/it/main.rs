//! Reference-value tests of the layers, losses and optimisers (values derived by hand in the
//! comments, or checked with central finite differences).

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use seg_nn::{cross_entropy_ignore, max_pool2x2, resize_bilinear, BatchNorm2d, ConvTranspose2d, Optimizer};

#[cfg(feature = "cuda")]
mod cuda;

/// A 3×3 convolution's "same" padding (1), stride 1.
fn padded() -> seg_nn::layers::ConvCfg {
    seg_nn::layers::ConvCfg {
        padding: 1,
        ..Default::default()
    }
}

/// A 3×3 convolution at stride 2, padding 1 (halves the size).
fn strided() -> seg_nn::layers::ConvCfg {
    seg_nn::layers::ConvCfg { stride: 2, ..padded() }
}

/// All values of a tensor, flattened.
trait Flat {
    fn flat(&self) -> Vec<f32>;
}

impl Flat for Tensor {
    fn flat(&self) -> Vec<f32> {
        self.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }
}

fn cpu() -> Device {
    Device::Cpu
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn max_pool_gradient_is_one_at_the_maximum() {
    let x = Var::from_vec(
        (0..16).map(|v| ((v * 7) % 16) as f32).collect::<Vec<_>>(),
        (1, 1, 4, 4),
        &cpu(),
    )
    .unwrap();
    let y = max_pool2x2(x.as_tensor()).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    // Windows of [0,7,14,5 / 12,3,10,1 / 8,15,6,13 / 4,11,2,9]: maxima 12, 14, 15, 13.
    assert_eq!(y.flat(), vec![12.0, 14.0, 15.0, 13.0]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap().flat();
    assert_eq!(gx.iter().sum::<f32>(), 4.0, "unscaled: one unit per window");
    assert_eq!(gx[4], 1.0); // 12
    assert_eq!(gx[2], 1.0); // 14
    assert!(max_pool2x2(&Tensor::zeros((1, 1, 3, 4), DType::F32, &cpu()).unwrap()).is_err());
}

#[test]
fn cross_entropy_skips_ignored_pixels() {
    // Two classes, three pixels: logits (0, ln 3) → p = (0.25, 0.75).
    let l3 = 3f32.ln();
    let logits = Var::from_vec(vec![0.0, 0.0, 0.0, l3, l3, l3], (1, 2, 1, 3), &cpu()).unwrap();
    let labels = Tensor::from_vec(vec![1u32, 0, 255], (1, 1, 3), &cpu()).unwrap();
    let loss = cross_entropy_ignore(logits.as_tensor(), &labels, 255).unwrap();
    let want = (-(0.75f32.ln()) - 0.25f32.ln()) / 2.0;
    assert!(close(loss.to_scalar::<f32>().unwrap(), want, 1e-5));
    // d/dlogit = (p - onehot) / valid_count; ignored pixel gets nothing.
    let g = loss.backward().unwrap();
    let gl = g.get(logits.as_tensor()).unwrap().flat();
    let want_g = [0.25 / 2.0, (0.25 - 1.0) / 2.0, 0.0, (0.75 - 1.0) / 2.0, 0.75 / 2.0, 0.0];
    for (a, b) in gl.iter().zip(want_g) {
        assert!(close(*a, b, 1e-5), "{gl:?}");
    }
    let all_ignored = Tensor::from_vec(vec![255u32; 3], (1, 1, 3), &cpu()).unwrap();
    assert_eq!(
        cross_entropy_ignore(logits.as_tensor(), &all_ignored, 255)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn bilinear_resize_matches_pytorch_rule_and_has_gradients() {
    let x = Var::from_vec(vec![0f32, 200.0], (1, 1, 1, 2), &cpu()).unwrap();
    let y = resize_bilinear(x.as_tensor(), 1, 4).unwrap();
    assert_eq!(y.flat(), vec![0.0, 50.0, 150.0, 200.0]);
    // d sum(y) / dx = column sums of the interpolation matrix: (1 + .75 + .25, .25 + .75 + 1).
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(x.as_tensor()).unwrap().flat(), vec![2.0, 2.0]);
    // Odd sizes, both directions.
    let z = Tensor::arange(0f32, 2.0 * 3.0 * 5.0 * 7.0, &cpu())
        .unwrap()
        .reshape((2, 3, 5, 7))
        .unwrap();
    assert_eq!(resize_bilinear(&z, 9, 4).unwrap().dims(), &[2, 3, 9, 4]);
}

#[test]
fn sgd_momentum_and_weight_decay_follow_pytorch() {
    // p0 = 1, loss = 3 p (g = 3), wd = 0.1, m = 0.9, lr = 0.1.
    // step 1: g' = 3 + 0.1 = 3.1; b = 3.1; p = 1 - 0.31 = 0.69
    // step 2: g' = 3 + 0.069 = 3.069; b = 0.9*3.1 + 3.069 = 5.859; p = 0.69 - 0.5859 = 0.1041
    let p = Var::from_vec(vec![1f32], 1, &cpu()).unwrap();
    let mut opt = seg_nn::Sgd::new(vec![("p".into(), p.clone(), 1.0)], 0.9, 0.1).unwrap();
    for want in [0.69f32, 0.1041] {
        let g = (p.as_tensor() * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        opt.step(&g, 0.1).unwrap();
        assert!(close(p.as_tensor().to_vec1::<f32>().unwrap()[0], want, 1e-5));
    }
    let state = opt.state();
    assert_eq!(state[0].0, "p.momentum");
    assert!(close(state[0].1.to_vec1::<f32>().unwrap()[0], 5.859, 1e-5));
    // A saved state of another shape is refused naming its key (it said only "shape mismatch").
    let wrong =
        std::collections::HashMap::from([("p.momentum".to_string(), Tensor::zeros(2, DType::F32, &cpu()).unwrap())]);
    let e = opt.load_state(&wrong).unwrap_err().to_string();
    assert!(
        e.contains("`p.momentum`") && e.contains("[2]") && e.contains("[1]"),
        "{e}"
    );
}

#[test]
fn adam_first_step_moves_by_lr() {
    let p = Var::from_vec(vec![1f32, -2.0], 2, &cpu()).unwrap();
    let mut opt = seg_nn::Adam::new(vec![("p".into(), p.clone(), 1.0)], 0.9, 0.999, 1e-8, 0.0).unwrap();
    let g = (p.as_tensor() * Tensor::new(&[5f32, -0.01], &cpu()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    opt.step(&g, 0.01).unwrap();
    let v = p.as_tensor().to_vec1::<f32>().unwrap();
    assert!(close(v[0], 0.99, 1e-5) && close(v[1], -1.99, 1e-5), "{v:?}");
}

/// Several steps of each optimiser (in place on the CPU) against the formulas in f64, with a
/// parameter big enough to span several parallel chunks.
#[test]
fn optimizer_steps_in_place_follow_the_pytorch_formulas() {
    let n = 200_003;
    let init: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 10.0).collect();
    let coef: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 3.0).collect();
    let c = Tensor::from_vec(coef.clone(), n, &cpu()).unwrap();
    for adam in [false, true] {
        let p = Var::from_vec(init.clone(), n, &cpu()).unwrap();
        let params = vec![("p".to_string(), p.clone(), 0.5)];
        let mut opt: Box<dyn seg_nn::Optimizer> = if adam {
            Box::new(seg_nn::Adam::new(params, 0.9, 0.99, 1e-8, 1e-2).unwrap())
        } else {
            Box::new(seg_nn::Sgd::new(params, 0.9, 1e-2).unwrap())
        };
        let (mut want, mut m, mut v) = (
            init.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            vec![0f64; n],
            vec![0f64; n],
        );
        for t in 1..=3 {
            // Loss Σ c·p² → gradient 2·c·p.
            let loss = (p.as_tensor().sqr().unwrap() * &c).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
            for i in 0..n {
                let g = 2.0 * coef[i] as f64 * want[i] + 1e-2 * want[i];
                if adam {
                    m[i] = 0.9 * m[i] + 0.1 * g;
                    v[i] = 0.99 * v[i] + 0.01 * g * g;
                    let (mh, vh) = (m[i] / (1.0 - 0.9f64.powi(t)), v[i] / (1.0 - 0.99f64.powi(t)));
                    want[i] -= 0.05 * mh / (vh.sqrt() + 1e-8);
                } else {
                    m[i] = 0.9 * m[i] + g;
                    want[i] -= 0.05 * m[i];
                }
            }
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "adam={adam}: off by {worst}");
    }
}

#[test]
fn batch_norm_uses_batch_stats_in_training_and_updates_running_ones() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &cpu());
    let bn = BatchNorm2d::new(1, vb.pp("bn"), &vars).unwrap();
    // Values 1, 2, 3, 6: mean 3, biased var 3.5, unbiased 14/3.
    let x = Tensor::from_vec(vec![1f32, 2.0, 3.0, 6.0], (1, 1, 2, 2), &cpu()).unwrap();
    let y = bn.forward_t(&x, true).unwrap().flat();
    assert!(close(y[0], -2.0 / (3.5f32 + 1e-5).sqrt(), 1e-5));
    let data = vars.data().lock().unwrap();
    let rm = data["bn.running_mean"].as_tensor().to_vec1::<f32>().unwrap()[0];
    let rv = data["bn.running_var"].as_tensor().to_vec1::<f32>().unwrap()[0];
    assert!(
        close(rm, 0.3, 1e-6) && close(rv, 0.9 + 0.1 * 14.0 / 3.0, 1e-5),
        "{rm} {rv}"
    );
    drop(data);
    // Evaluation uses the running statistics.
    let e = bn.forward_t(&x, false).unwrap().flat();
    assert!(close(e[0], (1.0 - rm) / (rv + 1e-5).sqrt(), 1e-5));
}

#[test]
fn learned_upsampling_starts_bilinear() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &cpu());
    let up = ConvTranspose2d::bilinear(2, 2, vb.pp("up"), &vars).unwrap();
    let x = Tensor::ones((1, 2, 3, 3), DType::F32, &cpu()).unwrap();
    let y = up.forward(&x).unwrap();
    assert_eq!(y.dims(), &[1, 2, 6, 6]);
    // Interior of a constant map stays constant; channels do not mix.
    let v = y
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .get(2)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(v[1..5].iter().all(|&a| close(a, 1.0, 1e-6)), "{v:?}");
}

#[test]
fn bce_on_logits_is_stable() {
    let x = Tensor::new(&[0f32, 100.0, -100.0], &cpu()).unwrap();
    let l = seg_nn::bce_with_logits(&x, 1.0).unwrap().to_scalar::<f32>().unwrap();
    // (ln 2 + 0 + 100) / 3
    assert!(close(l, (2f32.ln() + 100.0) / 3.0, 1e-5), "{l}");
}

#[test]
fn cumulative_batch_norm_statistics_are_those_of_all_batches_together() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &cpu());
    let bn = BatchNorm2d::new(1, vb.pp("bn"), &vars).unwrap();
    let stats = || {
        let data = vars.data().lock().unwrap();
        let get = |n: &str| data[n].as_tensor().to_vec1::<f32>().unwrap()[0];
        (get("bn.running_mean"), get("bn.running_var"))
    };
    bn.set_momentum(None, true).unwrap();
    for v in [vec![1f32, 3.0], vec![5.0, 7.0], vec![1000.0, 1000.5, 1001.0, 1001.5]] {
        let n = v.len();
        bn.forward_t(&Tensor::from_vec(v, (1, 1, 1, n), &cpu()).unwrap(), true)
            .unwrap();
    }
    // Of the eight values together: mean 501, unbiased variance Σ(x − 501)² / 7. Averaging the
    // batches' means and variances (PyTorch's momentum=None) would give 338.3 and 1.5.
    let all = [1f64, 3.0, 5.0, 7.0, 1000.0, 1000.5, 1001.0, 1001.5];
    let mean = all.iter().sum::<f64>() / 8.0;
    let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0;
    let (m, v) = stats();
    assert!(close(m, mean as f32, 1e-4), "{m} vs {mean}");
    assert!(close(v, var as f32, 1e-3), "{v} vs {var}");
    // A reset starts over: one batch's own statistics.
    bn.set_momentum(None, true).unwrap();
    bn.forward_t(&Tensor::from_vec(vec![1f32, 3.0], (1, 1, 1, 2), &cpu()).unwrap(), true)
        .unwrap();
    assert_eq!(stats(), (2.0, 2.0));
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Forward and both gradients of `ours` and `theirs` (of the same two variables) agree.
fn same_op_and_gradients(
    x: &Var,
    k: &Var,
    ours: impl Fn(&Tensor, &Tensor) -> Tensor,
    theirs: impl Fn(&Tensor, &Tensor) -> Tensor,
    what: &str,
) {
    let a = ours(x.as_tensor(), k.as_tensor());
    let b = theirs(x.as_tensor(), k.as_tensor());
    assert_eq!(a.dims(), b.dims(), "{what}");
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
    let d = max_diff(&a, &b);
    assert!(d < 1e-5 * scale, "{what}: forward differs by {d}");
    // Gradients of a weighted sum.
    let wts = Tensor::randn(0f32, 1.0, a.dims(), &cpu()).unwrap();
    let g1 = (a * &wts).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (b * &wts).unwrap().sum_all().unwrap().backward().unwrap();
    for (v, name) in [(x, "input"), (k, "kernel")] {
        let (ga, gb) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
        let scale = gb
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let d = max_diff(ga, gb);
        assert!(d < 1e-5 * scale, "{what}: {name} gradient differs by {d}");
    }
}

/// (c, co, k, stride, pad, dil, h, w): padded, dilated, strided, pointwise, 7×7, a padding wider
/// than the kernel (FCN's conv1_1 pads by 100), and one big enough to be cut into several bands.
/// Strided sizes leave no remainder: candle's own conv gradient fails on those (its transposed
/// conv gets no output padding); the finite-difference test covers a remainder.
/// (c, co, k, stride, pad, dil, h, w)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

const CONV_CASES: [ConvCase; 12] = [
    (2, 3, 3, 1, 2, 2, 3, 1),
    (3, 2, 16, 8, 4, 1, 24, 32),
    (2, 3, 4, 2, 0, 1, 10, 8),
    (3, 5, 3, 1, 1, 1, 7, 9),
    (4, 2, 3, 1, 2, 2, 6, 5),
    (8, 3, 1, 1, 0, 1, 5, 7),
    (2, 3, 7, 1, 3, 1, 9, 8),
    (3, 4, 4, 2, 1, 1, 8, 10),
    (2, 3, 3, 2, 0, 1, 9, 7),
    (3, 2, 3, 1, 5, 1, 4, 6),
    (2, 2, 1, 2, 1, 1, 5, 5),
    (64, 8, 3, 1, 1, 1, 64, 64),
];

#[test]
fn convolution_ops_match_candle_in_value_and_gradients() {
    for (c, co, k, stride, pad, dil, h, w) in CONV_CASES {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, h, w), &cpu()).unwrap()).unwrap();
        let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, k, k), &cpu()).unwrap()).unwrap();
        same_op_and_gradients(
            &x,
            &kv,
            |x, k| seg_nn::ops::conv::conv2d(x, k, stride, pad, dil).unwrap(),
            |x, k| x.conv2d(k, pad, stride, dil, 1).unwrap(),
            &format!("conv {c}->{co} k{k} s{stride} p{pad} d{dil} {h}x{w}"),
        );
    }
}

/// One 3×3 stride-1 convolution `n×c×h×w → co` with padding `pad` (Winograd's F(2×2, 3×3)
/// when both sides have 16 channels or more): value and both gradients against candle's conv,
/// and with `fused` the conv + bias + ReLU op (bias and ReLU applied in the output transform)
/// against the unfused layer.
fn winograd_case((n, c, co, pad, h, w): (usize, usize, usize, usize, usize, usize), fused: bool) {
    let what = format!("winograd conv {n}x{c}->{co} p{pad} {h}x{w}");
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &cpu()).unwrap()).unwrap();
    let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, 3, 3), &cpu()).unwrap()).unwrap();
    same_op_and_gradients(
        &x,
        &kv,
        |x, k| seg_nn::ops::conv::conv2d(x, k, 1, pad, 1).unwrap(),
        |x, k| x.conv2d(k, pad, 1, 1, 1).unwrap(),
        &what,
    );
    if !fused {
        return;
    }
    let b = Tensor::randn(0f32, 1.0, co, &cpu()).unwrap();
    let ours = seg_nn::ops::conv::conv2d_bias_relu(x.as_tensor(), kv.as_tensor(), &b, 1, pad, 1).unwrap();
    let plain = x
        .as_tensor()
        .conv2d(kv.as_tensor(), pad, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, co, 1, 1)).unwrap())
        .unwrap()
        .relu()
        .unwrap();
    let (d, scale) = (
        max_diff(&ours, &plain),
        max_diff(&plain, &plain.zeros_like().unwrap()).max(1.0),
    );
    assert!(d < 1e-5 * scale, "{what} + bias + relu: differs by {d}");
}

/// Odd and even sizes, tile rows that do not fill a vector, paddings 0-2, several tile blocks
/// and images, a width past one 512-tile block, and one block whose output channels are split
/// between threads.
#[test]
fn winograd_convolutions_match_candle_in_value_and_gradients() {
    for case in [
        (2, 16, 16, 1, 7, 9),
        (1, 20, 33, 0, 10, 37),
        (2, 17, 24, 2, 5, 70),
        (1, 48, 40, 1, 41, 66),
        (1, 16, 16, 1, 4, 1100),
        (1, 24, 40, 1, 6, 6),
    ] {
        winograd_case(case, true);
    }
}

/// The same comparison over shapes drawn at random (fixed seed): sizes 1-72 wide, any
/// remainder of tiles per row, 16-75 channels, paddings 0-2, one or two images.
#[test]
fn winograd_matches_candle_over_random_shapes() {
    let mut seed = 1u64;
    let mut pick = |m: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % m
    };
    for _ in 0..40 {
        let (n, c, co, pad) = (1 + pick(2), 16 + pick(40), 16 + pick(60), pick(3));
        let extra = if pad == 0 { 2 } else { 0 };
        let (h, w) = (1 + pick(20) + extra, 1 + pick(72) + extra);
        winograd_case((n, c, co, pad, h, w), false);
    }
}

#[test]
fn fused_conv_bias_relu_matches_the_unfused_layer() {
    for (c, co, k, stride, pad, dil, h, w) in [
        (3, 5, 3, 1, 1, 1, 7, 9),
        (4, 3, 3, 2, 1, 1, 8, 6),
        (6, 4, 1, 1, 0, 1, 5, 5),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, h, w), &cpu()).unwrap()).unwrap();
        let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, k, k), &cpu()).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, co, &cpu()).unwrap()).unwrap();
        let fused = seg_nn::ops::conv::conv2d_bias_relu(x.as_tensor(), kv.as_tensor(), b.as_tensor(), stride, pad, dil)
            .unwrap();
        let plain = x
            .as_tensor()
            .conv2d(kv.as_tensor(), pad, stride, dil, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, co, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_diff(&fused, &plain) < 1e-4, "forward");
        let wts = Tensor::randn(0f32, 1.0, fused.dims(), &cpu()).unwrap();
        let g1 = (fused * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, name) in [(&x, "input"), (&kv, "kernel"), (&b, "bias")] {
            let d = max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(d < 1e-3, "k{k} s{stride}: {name} gradient differs by {d}");
        }
    }
}

#[test]
fn transposed_convolution_matches_candle_in_value_and_gradients() {
    // FCN's upsampling: kernel 2s, padding s/2; plus odd sizes and a dilation.
    for (ci, co, k, stride, pad, dil, h, w) in [
        (3, 3, 4, 2, 1, 1, 5, 7),
        (2, 2, 16, 8, 4, 1, 3, 4),
        (4, 2, 3, 1, 1, 1, 6, 5),
        (2, 3, 3, 2, 0, 2, 4, 3),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, ci, h, w), &cpu()).unwrap()).unwrap();
        let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (ci, co, k, k), &cpu()).unwrap()).unwrap();
        same_op_and_gradients(
            &x,
            &kv,
            |x, k| seg_nn::ops::conv::conv_transpose2d(x, k, stride, pad, dil).unwrap(),
            |x, k| x.conv_transpose2d(k, pad, 0, stride, dil).unwrap(),
            &format!("convT {ci}->{co} k{k} s{stride} p{pad} d{dil} {h}x{w}"),
        );
    }
}

/// The CUDA path computes each piece from candle's tensor ops (a flipped-kernel forward conv
/// for the input gradient); the same functions on the CPU must give the CPU kernels' numbers.
#[test]
fn composite_pieces_used_on_cuda_match_the_cpu_kernels() {
    use seg_kernels::Geom;
    use seg_nn::ops::conv::composite;
    // Plus strided sizes whose remainders differ between height and width.
    let extra: [ConvCase; 2] = [(2, 2, 3, 2, 1, 1, 9, 8), (3, 2, 4, 3, 1, 1, 10, 12)];
    for (c, co, k, stride, pad, dil, h, w) in CONV_CASES.into_iter().chain(extra) {
        let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &cpu()).unwrap();
        let kt = Tensor::randn(0f32, 1.0, (co, c, k, k), &cpu()).unwrap();
        let g = Geom::conv(x.dims4().unwrap(), kt.dims4().unwrap(), stride, pad, dil).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (2, co, g.ho, g.wo), &cpu()).unwrap();
        let data = |t: &Tensor| t.flat();
        let cmp = |cpu: Vec<f32>, comp: Tensor, what: &str| {
            let comp = data(&comp);
            assert_eq!(cpu.len(), comp.len(), "{what}");
            let scale = comp.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = cpu.iter().zip(&comp).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d < 1e-5 * scale, "{what} k{k} s{stride} p{pad} d{dil}: differs by {d}");
        };
        let (xv, kv, dyv) = (data(&x), data(&kt), data(&dy));
        cmp(
            seg_kernels::conv::forward(&g, &xv, &kv),
            composite::forward(&g, &x, &kt).unwrap(),
            "forward",
        );
        cmp(
            seg_kernels::conv::input_grad(&g, &dyv, &kv),
            composite::input_grad(&g, &dy, &kt).unwrap(),
            "input grad",
        );
        cmp(
            seg_kernels::conv::weight_grad(&g, &xv, &dyv),
            composite::weight_grad(&g, &x, &dy).unwrap(),
            "weight grad",
        );
    }
}

#[test]
fn convolution_gradients_match_finite_differences() {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 2, 5, 6), &cpu()).unwrap()).unwrap();
    let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 2, 3, 3), &cpu()).unwrap()).unwrap();
    let wts = Tensor::randn(0f32, 1.0, (1, 3, 3, 3), &cpu()).unwrap();
    let f = |x: &Tensor, k: &Tensor| -> f32 {
        let y = seg_nn::ops::conv::conv2d(x, k, 2, 1, 1).unwrap();
        (y * &wts).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let grads = {
        let y = seg_nn::ops::conv::conv2d(x.as_tensor(), kv.as_tensor(), 2, 1, 1).unwrap();
        (y * &wts).unwrap().sum_all().unwrap().backward().unwrap()
    };
    for v in [&x, &kv] {
        let base = v.as_tensor().flat();
        let analytic = grads.get(v.as_tensor()).unwrap().flat();
        for i in (0..base.len()).step_by(5) {
            let at = |delta: f32| {
                let mut p = base.clone();
                p[i] += delta;
                let t = Tensor::from_vec(p, v.as_tensor().dims(), &cpu()).unwrap();
                if std::ptr::eq(v, &x) {
                    f(&t, kv.as_tensor())
                } else {
                    f(x.as_tensor(), &t)
                }
            };
            let numeric = (at(1e-2) - at(-1e-2)) / 2e-2;
            assert!(
                (numeric - analytic[i]).abs() < 2e-2,
                "element {i}: {numeric} vs {}",
                analytic[i]
            );
        }
    }
}

#[test]
fn batch_norm_gradient_matches_finite_differences() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &cpu());
    let bn = BatchNorm2d::new(3, vb.pp("bn"), &vars).unwrap();
    let x0: Vec<f32> = (0..2 * 3 * 3 * 5)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
        .collect();
    let wts = Tensor::from_vec(
        (0..90).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect::<Vec<_>>(),
        (2, 3, 3, 5),
        &cpu(),
    )
    .unwrap();
    let f = |v: &[f32]| -> f64 {
        let x = Tensor::from_vec(v.to_vec(), (2, 3, 3, 5), &cpu())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        // Reference in f64: (x - mean) / sqrt(var + eps) per channel.
        let xt = x.transpose(0, 1).unwrap().reshape((3, 30)).unwrap();
        let mean = xt.mean_keepdim(1).unwrap();
        let var = xt.broadcast_sub(&mean).unwrap().sqr().unwrap().mean_keepdim(1).unwrap();
        let xh = xt
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap();
        let xh = xh.reshape((3, 2, 3, 5)).unwrap().transpose(0, 1).unwrap();
        (xh * wts.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let x = Var::from_vec(x0.clone(), (2, 3, 3, 5), &cpu()).unwrap();
    let y = bn.forward_t(x.as_tensor(), true).unwrap();
    let got = (y * &wts).unwrap().sum_all().unwrap();
    assert!(close(got.to_scalar::<f32>().unwrap(), f(&x0) as f32, 1e-4));
    let g = got.backward().unwrap().get(x.as_tensor()).unwrap().flat();
    for i in [0, 7, 31, 64, 89] {
        let (mut a, mut b) = (x0.clone(), x0.clone());
        a[i] += 1e-3;
        b[i] -= 1e-3;
        let num = (f(&a) - f(&b)) / 2e-3;
        assert!(
            (g[i] as f64 - num).abs() < 2e-3 * (1.0 + num.abs()),
            "element {i}: {} vs {num}",
            g[i]
        );
    }
}

#[test]
fn settings_switch_the_cpu_kernels_in_one_process_with_the_same_results() {
    use seg_kernels::settings::Settings;
    let before = Settings::current();
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &cpu());
    let cfg = padded();
    let conv = seg_nn::conv2d(16, 32, 3, cfg, vb.pp("c")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 16, 20, 24), &cpu()).unwrap();
    let fast = Settings {
        sgemm: true,
        winograd: true,
    };
    fast.apply();
    assert_eq!(Settings::current(), fast);
    let y_fast = conv.forward(&x).unwrap();
    let slow = Settings {
        sgemm: false,
        winograd: false,
    };
    slow.apply();
    assert_eq!(Settings::current(), slow);
    assert!(
        !seg_kernels::winograd::enabled(),
        "winograd must be off when its setting is"
    );
    let y_slow = conv.forward(&x).unwrap();
    before.apply();
    assert!(max_diff(&y_fast, &y_slow) < 1e-3, "{}", max_diff(&y_fast, &y_slow));
    // Where AVX-512 is, the fast path really is another path.
    if seg_kernels::sgemm::available() {
        fast.apply();
        assert!(seg_kernels::winograd::enabled());
        before.apply();
    }
}

/// Inside a bf16 autocast scope a conv layer computes on bf16 operands and gives a bf16 result
/// (on the CPU: the f32 product of the widened operands, rounded; the bias added in bf16);
/// outside, and after the scope, it is f32 again. Gradients reach the f32 weights and stay close
/// to f32's.
#[test]
fn bf16_autocast_rounds_the_convolutions_operands_and_result() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &cpu());
    let cfg = padded();
    let conv = seg_nn::conv2d(8, 16, 3, cfg, vb.pp("c")).unwrap();
    let up = ConvTranspose2d::bilinear(16, 2, vb.pp("up"), &vars).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 8, 12, 10), &cpu()).unwrap();
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    let full = conv.forward(&x).unwrap();
    let (low, low_relu, low_up) = {
        let _bf16 = seg_nn::autocast(seg_nn::Precision::Bf16);
        (
            conv.forward(&x).unwrap(),
            conv.forward_relu(&x).unwrap(),
            up.forward(&full).unwrap(),
        )
    };
    assert_eq!(seg_nn::precision::current(), seg_nn::Precision::F32, "the scope ended");
    for t in [&low, &low_relu, &low_up] {
        assert_eq!(t.dtype(), DType::BF16, "results stay bf16 inside the scope");
    }
    assert_eq!(conv.forward(&x).unwrap().dtype(), DType::F32, "f32 after the scope");
    let [low, low_relu, low_up] = [low, low_relu, low_up].map(|t| seg_nn::precision::to_f32(&t).unwrap());
    // The same computation by hand: rounded operands, f32 product rounded, the bias added and
    // the sum rounded.
    let w = vars.data().lock().unwrap()["c.weight"].as_tensor().clone();
    let b = vars.data().lock().unwrap()["c.bias"].as_tensor().clone();
    let by_hand = round(
        &round(&seg_nn::ops::conv::conv2d(&round(&x), &round(&w), 1, 1, 1).unwrap())
            .broadcast_add(&round(&b).reshape((1, 16, 1, 1)).unwrap())
            .unwrap(),
    );
    assert!(max_diff(&low, &by_hand) < 1e-6, "{}", max_diff(&low, &by_hand));
    let scale = full.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    // The fused form rounds as the plain one does (and as CUDA's cuDNN product + NVRTC bias and
    // ReLU): the product, then the sum.
    assert_eq!(max_diff(&low_relu, &low.relu().unwrap()), 0.0);
    let d = max_diff(&low, &full);
    assert!(
        d > 0.0 && d < 2e-2 * scale,
        "bf16 differs from f32 by {d} (scale {scale})"
    );
    assert!(max_diff(&low_up, &up.forward(&full).unwrap()) < 2e-2 * scale);
    // Gradients reach the f32 weight through the casts.
    let wv = vars.data().lock().unwrap()["c.weight"].clone();
    let grad = |p: seg_nn::Precision| {
        let _scope = seg_nn::autocast(p);
        let y = seg_nn::precision::to_f32(&conv.forward(&x).unwrap()).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        g.get(wv.as_tensor()).unwrap().clone()
    };
    let (g32, g16) = (grad(seg_nn::Precision::F32), grad(seg_nn::Precision::Bf16));
    assert_eq!(g16.dtype(), DType::F32);
    let gscale = g32.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(
        max_diff(&g16, &g32) < 3e-2 * gscale,
        "{} vs {gscale}",
        max_diff(&g16, &g32)
    );
}

/// The bf16 pieces of a network on the CPU: a fused conv + ReLU, a strided conv, the max pool,
/// batch norm, a transposed conv and a resize keep their activations bf16 inside an autocast
/// scope, and the loss and the weights' gradients stay within bf16's rounding of f32's.
#[test]
fn bf16_network_pieces_keep_bf16_and_track_f32() {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 11, DType::F32, &cpu());
    let pad = padded();
    let strided = strided();
    let conv = seg_nn::conv2d(4, 8, 3, pad, vb.pp("c")).unwrap();
    let down = seg_nn::conv2d(8, 8, 3, strided, vb.pp("d")).unwrap();
    let bn = seg_nn::BatchNorm2d::new(8, vb.pp("bn"), &vars).unwrap();
    let up = ConvTranspose2d::bilinear(8, 2, vb.pp("up"), &vars).unwrap();
    let mut rng = seg_core::Rng::new(3);
    let x = (0..2 * 4 * 16 * 12)
        .map(|_| rng.range_f32(-2.0, 2.0))
        .collect::<Vec<_>>();
    let x = Tensor::from_vec(x, (2, 4, 16, 12), &cpu()).unwrap();
    let run = |p: seg_nn::Precision| {
        let _scope = seg_nn::autocast(p);
        let a = conv.forward_relu(&x).unwrap();
        let b = seg_nn::max_pool2x2(&down.forward(&a).unwrap()).unwrap();
        let c = candle_core::ModuleT::forward_t(&bn, &b, true).unwrap();
        let y = seg_nn::resize_bilinear(&up.forward(&c).unwrap(), 10, 6).unwrap();
        let want = if p == seg_nn::Precision::Bf16 {
            DType::BF16
        } else {
            DType::F32
        };
        for t in [&a, &b, &c, &y] {
            assert_eq!(t.dtype(), want);
        }
        let loss = seg_nn::precision::to_f32(&y)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let g = loss.backward().unwrap();
        let w = vars.data().lock().unwrap()["c.weight"].clone();
        (loss, g.get(w.as_tensor()).unwrap().clone())
    };
    let (l32, g32) = run(seg_nn::Precision::F32);
    let (l16, g16) = run(seg_nn::Precision::Bf16);
    let (l32, l16) = (l32.to_scalar::<f32>().unwrap(), l16.to_scalar::<f32>().unwrap());
    assert!((l32 - l16).abs() <= 2e-2 * l32, "loss f32 {l32}, bf16 {l16}");
    assert_eq!(g16.dtype(), DType::F32, "the master weights' gradients are f32");
    let scale = g32.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(
        max_diff(&g16, &g32) < 3e-2 * scale,
        "{} vs {scale}",
        max_diff(&g16, &g32)
    );
}

/// Inside `no_grad` the layers build no backward graph (the result tracks nothing) and give the
/// same values, in f32 and under bf16; the scope ends with its guard.
#[test]
fn no_grad_builds_no_graph_and_keeps_the_values() {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 5, DType::F32, &cpu());
    let pad = padded();
    let conv = seg_nn::conv2d(3, 4, 3, pad, vb.pp("c")).unwrap();
    let bn = seg_nn::BatchNorm2d::new(4, vb.pp("bn"), &vars).unwrap();
    let up = ConvTranspose2d::bilinear(4, 2, vb.pp("up"), &vars).unwrap();
    let x = Tensor::ones((1, 3, 6, 8), DType::F32, &cpu()).unwrap();
    let net = |p: seg_nn::Precision| {
        let _scope = seg_nn::autocast(p);
        let a = candle_core::ModuleT::forward_t(&bn, &conv.forward_relu(&x).unwrap(), false).unwrap();
        seg_nn::precision::to_f32(&up.forward(&conv.forward(&x).unwrap()).unwrap())
            .unwrap()
            .broadcast_add(&a.sum_all().unwrap().to_dtype(DType::F32).unwrap())
            .unwrap()
    };
    for p in [seg_nn::Precision::F32, seg_nn::Precision::Bf16] {
        let tracked = net(p);
        assert!(tracked.track_op(), "a plain forward builds the graph");
        let free = {
            let _no_grad = seg_nn::grad::no_grad();
            net(p)
        };
        assert!(!free.track_op(), "{p:?}: no graph inside no_grad");
        assert_eq!(max_diff(&free, &tracked), 0.0, "{p:?}: same values");
        assert!(net(p).track_op(), "the scope ended with its guard");
    }
}

/// Under bf16 the conv ops take the f32 variables and hand their gradients, in f32, to the
/// sink of `seg_nn::backward` as in f32 training: the same gradients as candle's plain pass.
#[test]
fn bf16_weight_gradients_reach_the_variables_through_the_sink() {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 9, DType::F32, &cpu());
    let pad = padded();
    let conv = seg_nn::conv2d(3, 6, 3, pad, vb.pp("c")).unwrap();
    let up = ConvTranspose2d::bilinear(6, 2, vb.pp("up"), &vars).unwrap();
    let mut rng = seg_core::Rng::new(4);
    let x = (0..2 * 3 * 8 * 8).map(|_| rng.range_f32(-1.0, 1.0)).collect::<Vec<_>>();
    let x = Tensor::from_vec(x, (2, 3, 8, 8), &cpu()).unwrap();
    let loss = || {
        let _bf16 = seg_nn::autocast(seg_nn::Precision::Bf16);
        let y = up.forward(&conv.forward_relu(&x).unwrap()).unwrap();
        seg_nn::precision::to_f32(&y)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let (plain, sunk) = (loss().backward().unwrap(), seg_nn::backward(&loss()).unwrap());
    for name in ["c.weight", "c.bias", "up.weight"] {
        let v = vars.data().lock().unwrap()[name].clone();
        let (a, b) = (plain.get(v.as_tensor()).unwrap(), sunk.get(v.as_tensor()).unwrap());
        assert_eq!(a.dtype(), DType::F32, "{name}");
        assert_eq!(max_diff(a, b), 0.0, "{name}");
    }
}

/// The per-pixel argmax op gives candle's `argmax(1)`: the same ids, ties to the first channel.
#[test]
fn argmax_channels_matches_candles_argmax() {
    let mut rng = seg_core::Rng::new(8);
    // Few distinct values, so ties are common.
    let x: Vec<f32> = (0..3 * 7 * 9 * 11).map(|_| rng.below(4) as f32).collect();
    let x = Tensor::from_vec(x, (3, 7, 9, 11), &cpu()).unwrap();
    let ours = seg_nn::argmax_channels(&x).unwrap();
    let theirs = x.argmax(1).unwrap();
    assert_eq!(ours.dims(), theirs.dims());
    assert_eq!(
        ours.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        theirs.flatten_all().unwrap().to_vec1::<u32>().unwrap()
    );
}
