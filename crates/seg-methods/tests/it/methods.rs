//! The six methods added on the method layer: each one's own invariants (difference loss,
//! weight regulariser, curriculum stage 1, entropy and its gradient), gradient routing per
//! group through the step context, and refusals naming the method.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use seg_core::{
    Backbone, Batch, Domain, FeatureTap, GroupId, LossTerm, Method, Rng, SegMethod, Stage, StepCx, StepInfo,
};
use seg_heads::dsn::{difference_loss, scale_invariant_mse};
use seg_heads::entropy::normalized_entropy;
use seg_methods::two_stream::{layer_regulariser, mmd2};
use seg_methods::{MethodConfig, MethodParts};
use seg_nn::vars::trainable_under;

use crate::common::{grad_mass, group_sum, labels, randn, TinyNet, CLASSES, SIDE};

const NEW: [&str; 6] = [
    "dsn",
    "curriculum",
    "two-stream",
    "adaptsegnet",
    "advent-minent",
    "advent",
];

fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
}

struct Built {
    vars: VarMap,
    method: Box<dyn SegMethod>,
}

fn build(name: &str, second_with_conv1: bool) -> Result<Built, seg_heads::HeadError> {
    build_config(name.parse().unwrap(), second_with_conv1)
}

fn build_config(method: MethodConfig, second_with_conv1: bool) -> Result<Built, seg_heads::HeadError> {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 7, DType::F32, &Device::Cpu);
    let net = TinyNet::new(vb.pp("model"), true).unwrap();
    let copy = seg_nn::init::seeded_builder(&vars, 8, DType::F32, &Device::Cpu);
    let another = |prefix: &str| -> candle_core::Result<Box<dyn Backbone>> {
        Ok(Box::new(TinyNet::new(copy.pp(prefix), second_with_conv1)?))
    };
    let stats = crate::common::stats();
    let method = method.build(MethodParts {
        backbone: Box::new(net),
        model_vars: trainable_under(&vars, "model"),
        vars: &vars,
        vb: vb.pp("head"),
        another: &another,
        source_stats: Some(&stats),
    })?;
    method.start().unwrap();
    Ok(Built { vars, method })
}

fn batches(seed: u64, target_labels: bool) -> (Batch, Batch) {
    let mut rng = Rng::new(seed);
    let source = Batch {
        images: randn(&mut rng, &[2, 3, SIDE, SIDE], 0.5),
        labels: Some(labels(&mut rng, 2)),
        domain: Domain::Source,
        names: vec!["s0".into(), "s1".into()],
        det: None,
    };
    let target = Batch {
        images: randn(&mut rng, &[2, 3, SIDE, SIDE], -0.5),
        labels: target_labels.then(|| labels(&mut rng, 2)),
        domain: Domain::Target,
        names: vec!["t0".into(), "t1".into()],
        det: None,
    };
    (source, target)
}

fn terms(m: &dyn Method, stage: Stage, source: &Batch, target: Option<&Batch>) -> Vec<LossTerm> {
    let cx = StepCx {
        source,
        target,
        stage,
        step: StepInfo {
            step: 5,
            total_steps: 10,
        },
        target_bn_only: true,
    };
    m.losses(&cx).unwrap()
}

#[test]
fn difference_loss_is_zero_for_orthogonal_representations() {
    // Over four cells, the shared map lives on cells 0-1 and the private one on cells 2-3, each
    // with zero mean per channel: after centring and row normalisation their cross-correlation
    // is zero.
    let shared = Tensor::from_vec(
        vec![1f32, -1.0, 0.0, 0.0, 2.0, -2.0, 0.0, 0.0],
        (1, 2, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    let private = Tensor::from_vec(
        vec![0f32, 0.0, 3.0, -3.0, 0.0, 0.0, -1.0, 1.0],
        (1, 2, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    assert!(scalar(&difference_loss(&shared, &private).unwrap()).abs() < 1e-6);
    // Identical representations are as far from orthogonal as they get.
    assert!(scalar(&difference_loss(&shared, &shared).unwrap()) > 0.1);
    // The scale-invariant MSE ignores a constant offset and sees a pattern.
    let x = randn(&mut Rng::new(1), &[2, 3, 4, 4], 0.0);
    assert!(scalar(&scale_invariant_mse(&x, &(&x + 0.7).unwrap()).unwrap()).abs() < 1e-6);
    assert!(scalar(&scale_invariant_mse(&x, &x.zeros_like().unwrap()).unwrap()) > 0.1);
}

/// DSN's private encoders reach the grid of whichever tap is shared, at whatever stride the
/// model has it (the tiny net: conv1 and logits at 1, conv5 and fc7 at 2).
#[test]
fn dsn_shares_any_tap_at_that_taps_stride() {
    let (source, target) = batches(3, false);
    for tap in [
        FeatureTap::Conv1,
        FeatureTap::Conv5,
        FeatureTap::Fc7,
        FeatureTap::Logits,
    ] {
        let cfg = seg_heads::dsn::DsnConfig {
            tap,
            ..Default::default()
        };
        let built = build_config(MethodConfig::Dsn(cfg), true).unwrap_or_else(|e| panic!("{}: {e}", tap.name()));
        let terms = terms(built.method.as_ref(), Stage::Train, &source, Some(&target));
        // seg + recon, difference, sim_disc, sim_adv
        assert_eq!(terms.len(), 5, "{}", tap.name());
        for t in &terms {
            assert!(scalar(&t.value).is_finite(), "{} {}", tap.name(), t.name);
        }
    }
}

#[test]
fn weight_regulariser_is_zero_when_target_weights_are_a_linear_map_of_source_ones() {
    let mut rng = Rng::new(2);
    let ws = randn(&mut rng, &[4, 3, 3, 3], 0.0);
    let bs = randn(&mut rng, &[4], 0.0);
    let (a, b) = (1.7f64, -0.3f64);
    let pairs = vec![
        (ws.clone(), ws.affine(a, b).unwrap()),
        (bs.clone(), bs.affine(a, b).unwrap()),
    ];
    let at = Tensor::new(a as f32, &Device::Cpu).unwrap();
    let bt = Tensor::new(b as f32, &Device::Cpu).unwrap();
    for per_weight in [true, false] {
        let r = scalar(&layer_regulariser(&pairs, &at, &bt, per_weight).unwrap());
        assert!(r.abs() < 1e-5, "per_weight {per_weight}: {r}");
    }
    // Off the map it is exp(s) - 1 > 0, with s the (mean) squared residual.
    let one = Tensor::new(1f32, &Device::Cpu).unwrap();
    let zero = Tensor::new(0f32, &Device::Cpu).unwrap();
    let r = scalar(&layer_regulariser(&pairs, &one, &zero, true).unwrap());
    let n = (4 * 27 + 4) as f32;
    let s: f32 = pairs
        .iter()
        .map(|(s, t)| scalar(&(t - s).unwrap().sqr().unwrap().sum_all().unwrap()))
        .sum::<f32>()
        / n;
    assert!(
        (r - (s.exp() - 1.0)).abs() < 1e-4 * r.max(1.0),
        "{r} vs {}",
        s.exp() - 1.0
    );
    // MMD: zero for one sample against itself, positive for shifted samples.
    let x = randn(&mut rng, &[32, 5], 0.0);
    assert!(scalar(&mmd2(&x, &x).unwrap()).abs() < 1e-5);
    assert!(scalar(&mmd2(&x, &(&x + 2.0).unwrap()).unwrap()) > 0.05);
}

#[test]
fn two_streams_start_equal_and_the_regulariser_starts_at_zero() {
    let b = build("two-stream", true).unwrap();
    let model = trainable_under(&b.vars, "model");
    let source = trainable_under(&b.vars, "source_stream");
    assert_eq!(model.len(), source.len());
    for ((n1, v1), (n2, v2)) in model.iter().zip(&source) {
        assert_eq!(n1.strip_prefix("model."), n2.strip_prefix("source_stream."));
        let d = scalar(
            &(v1.as_tensor() - v2.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap(),
        );
        assert_eq!(d, 0.0, "{n1}");
    }
    let (s, t) = batches(3, false);
    let terms = terms(b.method.as_ref(), Stage::Train, &s, Some(&t));
    let reg = terms.iter().find(|t| t.name == "stream_reg").unwrap();
    assert!(scalar(&reg.value).abs() < 1e-6);
    // The deployed network is the target stream (the `model.*` variables).
    let x = randn(&mut Rng::new(4), &[1, 3, SIDE, SIDE], 0.0);
    let deployed = b.method.deployed().forward_taps(&x, false, &[]).unwrap();
    assert_eq!(deployed.logits().unwrap().dims(), &[1, CLASSES, SIDE, SIDE]);
}

#[test]
fn curriculum_stage_one_reads_source_only_and_trains_only_the_regressors() {
    let b = build("curriculum", true).unwrap();
    assert!(matches!(b.method.stages()[0], Stage::Pretrain { steps } if steps > 0));
    let (s, t_labelled) = batches(5, true);
    // Without any target batch, and with one that carries labels: the same terms.
    let alone = terms(b.method.as_ref(), Stage::Pretrain { steps: 10 }, &s, None);
    let with = terms(b.method.as_ref(), Stage::Pretrain { steps: 10 }, &s, Some(&t_labelled));
    assert_eq!(alone.len(), 2);
    for (a, w) in alone.iter().zip(&with) {
        assert_eq!(a.name, w.name);
        assert_eq!(scalar(&a.value), scalar(&w.value));
        assert_eq!(a.group, GroupId("curriculum"));
    }
    // Stage 1 has no segmentation term: no gradient reaches the model or its frozen copy.
    let sum = group_sum(&alone, GroupId("curriculum")).unwrap();
    let grads = seg_nn::backward(&sum).unwrap();
    assert_eq!(grad_mass(&grads, &trainable_under(&b.vars, "model")), 0.0);
    assert_eq!(grad_mass(&grads, &trainable_under(&b.vars, "frozen")), 0.0);
    assert!(grad_mass(&grads, &trainable_under(&b.vars, "head")) > 0.0);
    // Stage 2 trains the segmenter and never touches the regressors or the frozen copy.
    let stage2 = terms(b.method.as_ref(), Stage::Train, &s, Some(&t_labelled));
    let names: Vec<&str> = stage2.iter().map(|t| t.name).collect();
    assert_eq!(names, ["seg", "dist", "landmarks"]);
    let grads = seg_nn::backward(&group_sum(&stage2, GroupId::SEGMENTER).unwrap()).unwrap();
    assert!(grad_mass(&grads, &trainable_under(&b.vars, "model")) > 0.0);
    assert_eq!(grad_mass(&grads, &trainable_under(&b.vars, "frozen")), 0.0);
    assert_eq!(grad_mass(&grads, &trainable_under(&b.vars, "head")), 0.0);
}

#[test]
fn entropy_and_its_gradient_match_finite_differences() {
    let mut rng = Rng::new(9);
    let logits = randn(&mut rng, &[1, 4, 2, 3], 0.0);
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    // Value against a direct computation.
    let mut want = 0f64;
    for px in 0..6 {
        let z: Vec<f64> = (0..4).map(|c| v[c * 6 + px] as f64).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: f64 = z.iter().map(|x| (x - m).exp()).sum();
        want -= z.iter().map(|x| ((x - m).exp() / e) * ((x - m) - e.ln())).sum::<f64>();
    }
    want /= 6.0 * 4f64.ln();
    let var = Var::from_tensor(&logits).unwrap();
    let ent = normalized_entropy(var.as_tensor()).unwrap();
    assert!((scalar(&ent) as f64 - want).abs() < 1e-5);
    let grads = ent.backward().unwrap();
    let g: Vec<f32> = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-2f32;
    for i in 0..v.len() {
        let at = |d: f32| {
            let mut w = v.clone();
            w[i] += d;
            let t = Tensor::from_vec(w, (1, 4, 2, 3), &Device::Cpu).unwrap();
            scalar(&normalized_entropy(&t).unwrap())
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 2e-3,
            "logit {i}: finite difference {fd}, gradient {}",
            g[i]
        );
    }
}

#[test]
fn gradients_reach_exactly_the_groups_each_term_names() {
    for name in NEW {
        let b = build(name, true).unwrap();
        if name == "two-stream" {
            // Equal streams sit at the regulariser's minimum (zero gradient for a_j, b_j):
            // move the target stream off it.
            for (_, v) in trainable_under(&b.vars, "model") {
                v.set(&v.as_tensor().affine(1.1, 0.01).unwrap()).unwrap();
            }
        }
        let (s, t) = batches(11, false);
        let stage = Stage::Train;
        let ts = terms(b.method.as_ref(), stage, &s, Some(&t));
        for t in &ts {
            assert!(
                scalar(&t.value).is_finite(),
                "{name}: {} = {}",
                t.name,
                scalar(&t.value)
            );
        }
        let sets = b.method.parameters();
        // Every trainable variable is in exactly one set.
        let mut all: Vec<String> = sets.iter().flat_map(|p| p.vars.iter().map(|v| v.0.clone())).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "{name}: a variable in two sets");
        let mut every: Vec<String> = trainable_under(&b.vars, "model")
            .into_iter()
            .chain(trainable_under(&b.vars, "head"))
            .chain(trainable_under(&b.vars, "frozen"))
            .chain(trainable_under(&b.vars, "source_stream"))
            .map(|v| v.0)
            .collect();
        every.sort();
        assert_eq!(all, every, "{name}: sets do not cover the variables");
        let seg = group_sum(&ts, GroupId::SEGMENTER).unwrap();
        let grads = seg_nn::backward(&seg).unwrap();
        for set in &sets {
            let mass = grad_mass(&grads, &set.vars);
            if set.loss == GroupId::SEGMENTER && set.group != GroupId::FROZEN {
                assert!(
                    mass > 0.0,
                    "{name}: set `{}` gets no gradient from its loss group",
                    set.group
                );
            }
            if set.group == GroupId::FROZEN {
                assert_eq!(mass, 0.0, "{name}: the frozen copy gets a gradient");
            }
        }
        if let Some(disc) = group_sum(&ts, GroupId::DISCRIMINATOR) {
            // Discriminator terms see detached inputs: no gradient to the networks.
            let grads = seg_nn::backward(&disc).unwrap();
            assert_eq!(grad_mass(&grads, &trainable_under(&b.vars, "model")), 0.0, "{name}");
            let mine: Vec<_> = sets
                .iter()
                .filter(|p| p.group == GroupId::DISCRIMINATOR)
                .flat_map(|p| p.vars.clone())
                .collect();
            assert!(grad_mass(&grads, &mine) > 0.0, "{name}");
        }
    }
}

#[test]
fn a_second_stream_without_the_same_layers_is_refused_naming_the_method() {
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 7, DType::F32, &Device::Cpu);
    let net = TinyNet::new(vb.pp("model"), true).unwrap();
    let copy = seg_nn::init::seeded_builder(&vars, 8, DType::F32, &Device::Cpu);
    // A "copy" whose layers sit one level deeper: no layer has a counterpart by name, so the
    // streams cannot be paired layer by layer.
    let another = |prefix: &str| -> candle_core::Result<Box<dyn Backbone>> {
        Ok(Box::new(TinyNet::new(copy.pp(prefix).pp("inner"), true)?))
    };
    let err = "two-stream"
        .parse::<MethodConfig>()
        .unwrap()
        .build(MethodParts {
            backbone: Box::new(net),
            model_vars: trainable_under(&vars, "model"),
            vars: &vars,
            vb: vb.pp("head"),
            another: &another,
            source_stats: None,
        })
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("two-stream") && err.contains("per-layer"), "{err}");
}

/// What the method config says about reading the target's train split (`seg-adapt check`)
/// agrees with the built method (a run): target batches in its steps, or AdaBN's re-estimation.
#[test]
fn the_config_and_the_built_method_agree_on_reading_the_target() {
    for name in seg_methods::METHOD_NAMES {
        let cfg: MethodConfig = name.parse().unwrap();
        if name == "adabn" {
            // The tiny net has no batch norm, which AdaBN refuses; its only use of the target
            // is the re-estimation.
            assert!(cfg.reads_target_train());
            continue;
        }
        let b = build(name, true).unwrap();
        let reads = b.method.needs_target() || b.method.stages().contains(&Stage::ReestimateBn);
        assert_eq!(cfg.reads_target_train(), reads, "{name}");
    }
}

/// Every method's terms under bf16 autocast (bf16 activations inside the networks; on the CPU
/// the products in f32 on the widened operands) stay within bf16's rounding of its f32 terms,
/// on the same model and batches.
#[test]
fn every_method_computes_its_terms_in_bf16_within_rounding_of_f32() {
    let (source, target) = batches(11, true);
    // AdaBN's step is source-only's (the tiny net has no batch norm to re-estimate).
    for name in seg_methods::METHOD_NAMES.into_iter().filter(|m| *m != "adabn") {
        let b = build(name, true).unwrap();
        let target = b.method.needs_target().then_some(&target);
        let f32_terms = terms(b.method.as_ref(), Stage::Train, &source, target);
        let bf16_terms = {
            let _bf16 = seg_nn::autocast(seg_nn::Precision::Bf16);
            terms(b.method.as_ref(), Stage::Train, &source, target)
        };
        assert_eq!(f32_terms.len(), bf16_terms.len(), "{name}");
        for (a, l) in f32_terms.iter().zip(&bf16_terms) {
            let (x, y) = (scalar(&a.value), scalar(&l.value));
            assert!(y.is_finite(), "{name}: {} is {y} in bf16", l.name);
            assert!(
                (x - y).abs() <= 0.03 * x.abs() + 2e-3,
                "{name}: {} is {x} in f32 and {y} in bf16",
                a.name
            );
        }
    }
}

#[test]
fn the_segmenters_adversarial_terms_push_against_their_discriminator() {
    // As for the heads: gradient descent of the networks on the segmenter's side of each
    // adversarial pair (inverted labels, reversed gradient) must raise the discriminator's own
    // loss; a sign or a label swapped on either side would lower it.
    for (name, adv, disc) in [
        ("adaptsegnet", "out_adv", "out_disc"),
        ("advent", "out_adv", "out_disc"),
        ("dsn", "sim_adv", "sim_disc"),
    ] {
        let b = build(name, true).unwrap();
        let model = trainable_under(&b.vars, "model");
        let (s, t) = batches(11, false);
        let term = |n: &str| {
            terms(b.method.as_ref(), Stage::Train, &s, Some(&t))
                .into_iter()
                .find(|x| x.name == n)
                .unwrap_or_else(|| panic!("{name}: no term {n}"))
                .value
        };
        let before = scalar(&term(disc));
        for _ in 0..20 {
            let grads = seg_nn::backward(&term(adv)).unwrap();
            for (_, v) in &model {
                if let Some(g) = grads.get(v.as_tensor()) {
                    // Steps of a fixed size along the gradient's direction: the terms carry
                    // their small published weights (AdaptSegNet's 0.001), which plain SGD at
                    // one rate would turn into no step at all.
                    let top = scalar(&g.abs().unwrap().max_all().unwrap()).max(1e-12);
                    v.set(&(v.as_tensor() - (g * (0.05 / top as f64)).unwrap()).unwrap())
                        .unwrap();
                }
            }
        }
        let after = scalar(&term(disc));
        assert!(
            after > before + 1e-3,
            "{name}: {disc} went from {before} to {after} when the networks followed {adv}"
        );
    }
}
