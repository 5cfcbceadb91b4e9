//! Discriminators: the class-wise bank equals C separate per-cell discriminators (and candle's
//! grouped convolution on the repeated input); per-cell output shapes; dropout.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use seg_core::Rng;
use seg_heads::discriminator::dropout;
use seg_heads::{CellDiscriminator, ClassDiscriminatorBank, DiscriminatorSpec};

use crate::common::randn;

fn var(vars: &VarMap, name: &str) -> Tensor {
    vars.data().lock().unwrap().get(name).unwrap().as_tensor().clone()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn class_bank_equals_separate_convs_and_grouped_conv() {
    let (c_in, classes, hidden) = (8, 5, 6);
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    for std in [0.0, 0.5] {
        let spec = DiscriminatorSpec {
            hidden,
            init_std: std,
            dropout: 0.0,
        };
        let prefix = format!("bank{}", std > 0.0);
        let bank = ClassDiscriminatorBank::new(c_in, classes, &spec, vb.pp(&prefix)).unwrap();
        let x = randn(&mut Rng::new(5), &[2, c_in, 23, 23], 0.0);
        let out = bank.forward(&x).unwrap();
        assert_eq!(out.dims(), &[2, classes, 23, 23]);

        let (w1, b1) = (
            var(&vars, &format!("{prefix}.fc1.weight")),
            var(&vars, &format!("{prefix}.fc1.bias")),
        );
        let (w2, b2) = (
            var(&vars, &format!("{prefix}.fc2.weight")),
            var(&vars, &format!("{prefix}.fc2.bias")),
        );
        let (w3, b3) = (
            var(&vars, &format!("{prefix}.out.weight")),
            var(&vars, &format!("{prefix}.out.bias")),
        );
        assert_eq!(w1.dims(), &[classes * hidden, c_in, 1, 1]);
        assert_eq!(w2.dims(), &[classes * hidden, hidden, 1, 1]);
        assert_eq!(w3.dims(), &[classes, hidden, 1, 1]);
        let conv = |x: &Tensor, w: &Tensor, b: &Tensor, groups: usize| {
            x.conv2d(w, 0, 1, 1, groups)
                .unwrap()
                .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
                .unwrap()
        };

        // C separate discriminators, one per class.
        for c in 0..classes {
            let h = conv(
                &x,
                &w1.narrow(0, c * hidden, hidden).unwrap(),
                &b1.narrow(0, c * hidden, hidden).unwrap(),
                1,
            );
            let h = h.relu().unwrap();
            let h = conv(
                &h,
                &w2.narrow(0, c * hidden, hidden).unwrap(),
                &b2.narrow(0, c * hidden, hidden).unwrap(),
                1,
            );
            let h = h.relu().unwrap();
            let y = conv(&h, &w3.narrow(0, c, 1).unwrap(), &b3.narrow(0, c, 1).unwrap(), 1);
            let d = max_abs_diff(&y, &out.narrow(1, c, 1).unwrap());
            assert!(d < 1e-5, "class {c}: bank differs from its own discriminator by {d}");
        }

        // One grouped 1x1 conv over the input repeated C times.
        let rep = x.repeat((1, classes, 1, 1)).unwrap();
        let h = conv(&rep, &w1, &b1, classes).relu().unwrap();
        let h = conv(&h, &w2, &b2, classes).relu().unwrap();
        let y = conv(&h, &w3, &b3, classes);
        let d = max_abs_diff(&y, &out);
        assert!(d < 1e-5, "bank differs from the grouped conv by {d}");
    }
}

#[test]
fn cell_discriminator_gives_one_logit_per_cell() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let spec = DiscriminatorSpec {
        hidden: 7,
        init_std: 0.001,
        dropout: 0.5,
    };
    let d = CellDiscriminator::new(8, &spec, vb.pp("d")).unwrap();
    let x = randn(&mut Rng::new(1), &[3, 8, 23, 17], 0.0);
    let y = d.forward(&x).unwrap();
    assert_eq!(y.dims(), &[3, 1, 23, 17]);
    // The same as three 1x1 convolutions with ReLU between them.
    let conv = |x: &Tensor, layer: &str| {
        let (w, b) = (
            var(&vars, &format!("d.{layer}.weight")),
            var(&vars, &format!("d.{layer}.bias")),
        );
        x.conv2d(&w, 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
            .unwrap()
    };
    let want = conv(&conv(&conv(&x, "fc1").relu().unwrap(), "fc2").relu().unwrap(), "out");
    assert!(max_abs_diff(&y, &want) < 1e-6);
    // Same random stream, same dropout masks: reproducible; another stream differs.
    let a = d.forward_t(&x, Some(&mut Rng::new(4))).unwrap();
    let b = d.forward_t(&x, Some(&mut Rng::new(4))).unwrap();
    let c = d.forward_t(&x, Some(&mut Rng::new(5))).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 0.0);
    for name in [
        "d.fc1.weight",
        "d.fc1.bias",
        "d.fc2.weight",
        "d.fc2.bias",
        "d.out.weight",
        "d.out.bias",
    ] {
        assert!(vars.data().lock().unwrap().contains_key(name), "{name}");
    }
}

#[test]
fn dropout_zeroes_about_p_and_rescales() {
    let x = Tensor::ones((4, 16, 25, 25), DType::F32, &Device::Cpu).unwrap();
    let y = dropout(&x, 0.5, &mut Rng::new(9))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f32 / y.len() as f32;
    assert!((zeros - 0.5).abs() < 0.03, "{zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    let same = dropout(&x, 0.0, &mut Rng::new(9)).unwrap();
    assert_eq!(max_abs_diff(&same, &x), 0.0);
}
