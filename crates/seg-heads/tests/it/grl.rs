//! The gradient reversal layer: identity forward, -lambda times the gradient backward, checked
//! against central finite differences of the plain (unreversed) function.

use candle_core::{DType, Device, Tensor, Var};
use seg_core::Rng;
use seg_heads::{grad_reverse, ramp};

/// f(x) = sum(w * sin(x)), the function whose gradient the GRL reverses.
fn f(x: &Tensor, w: &Tensor) -> Tensor {
    (x.sin().unwrap() * w).unwrap().sum_all().unwrap()
}

#[test]
fn grl_is_identity_forward_and_minus_lambda_backward() {
    let mut rng = Rng::new(11);
    let shape = (2, 3, 5, 7); // odd sizes
    let n = 2 * 3 * 5 * 7;
    let xs: Vec<f64> = (0..n).map(|_| rng.normal() as f64).collect();
    let ws: Vec<f64> = (0..n).map(|_| rng.normal() as f64).collect();
    let w = Tensor::from_vec(ws, shape, &Device::Cpu).unwrap();
    let x0 = Tensor::from_vec(xs.clone(), shape, &Device::Cpu).unwrap();

    // Numerical gradient of f by central differences (f64).
    let eps = 1e-6;
    let numeric: Vec<f64> = (0..n)
        .map(|i| {
            let mut plus = xs.clone();
            plus[i] += eps;
            let mut minus = xs.clone();
            minus[i] -= eps;
            let fp = f(&Tensor::from_vec(plus, shape, &Device::Cpu).unwrap(), &w)
                .to_scalar::<f64>()
                .unwrap();
            let fm = f(&Tensor::from_vec(minus, shape, &Device::Cpu).unwrap(), &w)
                .to_scalar::<f64>()
                .unwrap();
            (fp - fm) / (2.0 * eps)
        })
        .collect();

    for lambda in [0.0, 0.3, 1.0, 2.5] {
        let x = Var::from_tensor(&x0).unwrap();
        let y = grad_reverse(x.as_tensor(), lambda).unwrap();
        let diff = (&y - &x0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            diff < 1e-12 * (1.0 + lambda),
            "forward must be the identity, off by {diff}"
        );
        let grads = f(&y, &w).backward().unwrap();
        // With lambda = 0 candle prunes the path (a product with 0): no gradient means zero.
        let g = match grads.get(x.as_tensor()) {
            Some(g) => g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            None => vec![0.0; n],
        };
        for (i, (&a, &nu)) in g.iter().zip(&numeric).enumerate() {
            let want = -lambda * nu;
            assert!(
                (a - want).abs() < 1e-6 * (1.0 + want.abs()),
                "lambda {lambda}, element {i}: {a} vs {want}"
            );
        }
    }
    // f32 works too, and the result is a plain tensor on the input's device.
    let x32 = Var::from_tensor(&x0.to_dtype(DType::F32).unwrap()).unwrap();
    let g = grad_reverse(x32.as_tensor(), 2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = g
        .get(x32.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(g.iter().all(|&v| (v + 2.0).abs() < 1e-6));
}

#[test]
fn ramp_matches_the_dann_schedule() {
    assert_eq!(ramp(0.0, 10.0), 0.0);
    assert_eq!(ramp(-1.0, 10.0), 0.0);
    assert!((ramp(0.1, 10.0) - 0.462_117_2).abs() < 1e-6);
    assert!((ramp(1.0, 10.0) - seg_nn::lambda_schedule(1.0, 10.0)).abs() < 1e-12);
    // Not clamped above: Cross-City's ramp keeps rising after t = ramp_steps.
    assert!(ramp(2.0, 10.0) > ramp(1.0, 10.0));
}
