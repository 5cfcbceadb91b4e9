//! Category-size statistics (percentiles over the images that contain a class) and the size
//! penalty: its value on a hand-made example, the gradient scaling of large classes, and a fall
//! under optimisation.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use seg_core::{HeadInput, StepInfo, NUM_CLASSES};
use seg_heads::{FcnWildConfig, FcnWildHead, Presence, SizeConstraints, SizePenalty};
use seg_nn::{Adam, Optimizer};

use crate::common::TinyNet;

#[test]
fn percentiles_over_the_images_that_contain_the_class() {
    // Class 0: 0.1, 0.2, ..., 1.0 in ten images, absent (0) from two more.
    // Class 1: a single image. Class 2: never.
    let mut per_image = vec![[0f32; NUM_CLASSES]; 12];
    for (i, f) in per_image.iter_mut().take(10).enumerate() {
        f[0] = (i + 1) as f32 / 10.0;
    }
    per_image[11][1] = 0.25;
    let s = SizeConstraints::from_fractions(&per_image);
    // NumPy: np.percentile([.1,...,1.], 10) = 0.19, mean 0.55, np.percentile(..., 90) = 0.91.
    assert!((s.alpha[0] - 0.19).abs() < 1e-6, "{}", s.alpha[0]);
    assert!((s.delta[0] - 0.55).abs() < 1e-6, "{}", s.delta[0]);
    assert!((s.gamma[0] - 0.91).abs() < 1e-6, "{}", s.gamma[0]);
    assert!(s.present[0] && s.present[1] && !s.present[2]);
    assert_eq!((s.alpha[1], s.delta[1], s.gamma[1]), (0.25, 0.25, 0.25));
    assert_eq!((s.alpha[2], s.delta[2], s.gamma[2]), (0.0, 0.0, 0.0));
}

#[test]
fn class_fractions_skip_ignored_pixels() {
    let labels: [u8; 6] = [0, 0, 1, 255, 255, 3];
    let f = SizeConstraints::class_fractions(&labels).unwrap();
    assert_eq!((f[0], f[1], f[2], f[3]), (0.5, 0.25, 0.0, 0.25));
    assert!(SizeConstraints::class_fractions(&[255u32, 255]).is_none());
}

/// The paper's rule: soft fractions, lower bound at the mean.
const PAPER: SizePenalty = SizePenalty {
    presence_factor: 0.1,
    presence: Presence::Soft,
    lower_slack: 0.0,
    large_alpha: 0.1,
    large_grad_scale: 0.1,
};

fn stats(alpha: f32, with_class1: bool) -> SizeConstraints {
    let mut s = SizeConstraints::from_fractions(&[]);
    s.alpha[0] = alpha;
    s.delta[0] = 0.5;
    s.gamma[0] = 0.8;
    s.present[0] = true;
    // Class 1: upper bound below the uniform fraction 1/19.
    s.alpha[1] = 0.01;
    s.delta[1] = 0.02;
    s.gamma[1] = 0.03;
    s.present[1] = with_class1;
    s
}

#[test]
fn penalty_value_and_large_class_gradient_scale() {
    let u = 1.0 / NUM_CLASSES as f32;
    let logits = Var::zeros((2, NUM_CLASSES, 5, 7), DType::F32, &Device::Cpu).unwrap();
    let grad_of_class0 = |alpha: f32, with_class1: bool| {
        let p = stats(alpha, with_class1).penalty(logits.as_tensor(), &PAPER).unwrap();
        let value = p.to_scalar::<f32>().unwrap();
        let g = p
            .backward()
            .unwrap()
            .get(logits.as_tensor())
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap();
        (value, g.sum_all().unwrap().to_scalar::<f32>().unwrap())
    };
    // Uniform prediction: class 0 below delta by 0.5 - 1/19, class 1 above gamma by 1/19 - 0.03.
    let want = (0.5 - u) + (u - 0.03);
    let (v_small, _) = grad_of_class0(0.05, true);
    let (v_large, _) = grad_of_class0(0.2, true);
    assert!((v_small - want).abs() < 1e-5, "{v_small} vs {want}");
    assert!((v_large - want).abs() < 1e-5, "{v_large} vs {want}");
    // Class 0 alone, so that no other class's penalty reaches its logit through the softmax.
    let (_, g_small) = grad_of_class0(0.05, false);
    let (_, g_large) = grad_of_class0(0.2, false);
    assert!(g_small < 0.0, "raising class 0's logit lowers the penalty");
    assert!(
        (g_large / g_small - 0.1).abs() < 1e-3,
        "alpha > 0.1 scales the gradient by 0.1: {g_large} / {g_small}"
    );

    // A class predicted below 0.1 * alpha is absent and pays nothing.
    let p = stats(0.9, true)
        .penalty(logits.as_tensor(), &PAPER)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((p - (u - 0.03)).abs() < 1e-5, "{p}");
}

#[test]
fn size_constraint_falls_when_optimised() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let net = TinyNet::new(vb.pp("model"), true).unwrap();
    let cfg = FcnWildConfig {
        ramp: false,
        size_weight: 1.0,
        ..Default::default()
    };
    let head = FcnWildHead::new(&cfg, &net, vb.pp("head"), &stats(0.05, true)).unwrap();
    let mut rng = seg_core::Rng::new(2);
    let mut src = seg_core::Features::default();
    let mut tgt = seg_core::Features::default();
    src.maps.insert(
        seg_core::FeatureTap::Fc7,
        crate::common::randn(&mut rng, &[1, 8, 3, 3], 0.0),
    );
    tgt.maps.insert(
        seg_core::FeatureTap::Fc7,
        crate::common::randn(&mut rng, &[2, 8, 3, 3], 0.0),
    );
    let logits = Var::from_tensor(&crate::common::randn(&mut rng, &[2, NUM_CLASSES, 9, 11], 0.0)).unwrap();
    let labels = Tensor::zeros((1, 6, 6), DType::U32, &Device::Cpu).unwrap();
    let mut adam = Adam::new(vec![("logits".into(), logits.clone(), 1.0)], 0.9, 0.999, 1e-8, 0.0).unwrap();
    let mut history = Vec::new();
    for step in 0..30 {
        tgt.maps
            .insert(seg_core::FeatureTap::Logits, logits.as_tensor().clone());
        let images = Tensor::zeros((2, 3, 6, 6), DType::F32, &Device::Cpu).unwrap();
        let input = HeadInput {
            backbone: &net,
            source_images: &images,
            target_images: &images,
            source: &src,
            source_labels: &labels,
            target: &tgt,
            step: StepInfo { step, total_steps: 30 },
        };
        use seg_core::AdaptationHead;
        let terms = head.losses(&input).unwrap();
        let size = terms
            .iter()
            .find(|t| t.name == "size_constraint")
            .unwrap()
            .value
            .clone();
        history.push(size.to_scalar::<f32>().unwrap());
        adam.step(&size.backward().unwrap(), 0.1).unwrap();
    }
    assert!(history[29] < 0.5 * history[0], "{history:?}");
}

#[test]
fn a_prediction_shaped_like_a_typical_source_image_pays_nothing() {
    // Source images with road, sky and car in varying amounts; the other classes never occur.
    let per_image: Vec<[f32; NUM_CLASSES]> = (0..20)
        .map(|i| {
            let mut f = [0f32; NUM_CLASSES];
            let car = 0.05 + 0.01 * (i % 5) as f32;
            f[0] = 0.5 - car;
            f[10] = 0.5;
            f[13] = car;
            f
        })
        .collect();
    let s = SizeConstraints::from_fractions(&per_image);
    // A confident prediction on a 20x20 map: car in the first two columns of every second row
    // (5%), road in the rest of the left half (45%), sky in the right half (50%).
    let (h, w) = (20, 20);
    let mut v = vec![0f32; NUM_CLASSES * h * w];
    for y in 0..h {
        for x in 0..w {
            let c = if x < 2 && y % 2 == 0 {
                13
            } else if x < 10 {
                0
            } else {
                10
            };
            v[c * h * w + y * w + x] = 30.0;
        }
    }
    let logits = Tensor::from_vec(v, (1, NUM_CLASSES, h, w), &Device::Cpu).unwrap();
    let ours = FcnWildConfig::default();
    let opts = SizePenalty {
        presence_factor: ours.presence_factor,
        presence: ours.presence,
        lower_slack: ours.lower_slack,
        large_alpha: ours.large_alpha,
        large_grad_scale: ours.large_grad_scale,
    };
    let p = s.penalty(&logits, &opts).unwrap().to_scalar::<f32>().unwrap();
    assert!(p.abs() < 1e-4, "penalty {p} for a source-like prediction");
    // With the paper's soft presence and the mean as lower bound, the tiny softmax mass of the
    // absent classes does not count them (they have no statistics), but every present class
    // below its mean pays: car at 5% against a mean of 7%.
    let paper = s.penalty(&logits, &PAPER).unwrap().to_scalar::<f32>().unwrap();
    assert!(paper > 0.01, "{paper}");
}
