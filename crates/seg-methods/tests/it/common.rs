//! A tiny backbone (conv1 at input resolution, a 2×2 pool, conv5 and fc7 at stride 2, logits
//! upsampled back) and helpers to build random features, heads and inputs.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use seg_core::{AdaptationHead, Backbone, FeatureTap, Features, GroupId, LossTerm, Rng};
use seg_heads::SizeConstraints;
use seg_methods::MethodConfig;
use seg_nn::layers::ConvCfg;
use seg_nn::{conv2d, max_pool2x2, Conv2d};

pub(crate) const C: usize = 8;
pub(crate) const CLASSES: usize = 19;
/// Input side: even for the pool, and the 23×23 feature grid is odd.
pub(crate) const SIDE: usize = 46;
pub(crate) const GRID: usize = 23;

pub(crate) struct TinyNet {
    conv1: Conv2d,
    conv5: Conv2d,
    fc7: Conv2d,
    cls: Conv2d,
    with_conv1: bool,
}

const ALL_TAPS: [FeatureTap; 4] = [
    FeatureTap::Conv1,
    FeatureTap::Conv5,
    FeatureTap::Fc7,
    FeatureTap::Logits,
];
const NO_CONV1: [FeatureTap; 3] = [FeatureTap::Conv5, FeatureTap::Fc7, FeatureTap::Logits];

impl TinyNet {
    pub(crate) fn new(vb: VarBuilder<'_>, with_conv1: bool) -> Result<Self> {
        let pad = ConvCfg {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: conv2d(3, C, 3, pad, vb.pp("conv1"))?,
            conv5: conv2d(C, C, 3, pad, vb.pp("conv5"))?,
            fc7: conv2d(C, C, 1, ConvCfg::default(), vb.pp("fc7"))?,
            cls: conv2d(C, CLASSES, 1, ConvCfg::default(), vb.pp("cls"))?,
            with_conv1,
        })
    }

    fn head_from_conv5(&self, conv5: &Tensor, feats: &mut Features) -> Result<()> {
        let fc7 = self.fc7.forward(conv5)?.relu()?;
        let small = self.cls.forward(&fc7)?;
        let (n, c, h, w) = small.dims4()?;
        // Nearest 2× upsampling as broadcast + reshape (correct gradient).
        let logits = small
            .reshape((n, c, h, 1, w, 1))?
            .broadcast_as((n, c, h, 2, w, 2))?
            .contiguous()?
            .reshape((n, c, 2 * h, 2 * w))?;
        feats.maps.insert(FeatureTap::Fc7, fc7);
        feats.maps.insert(FeatureTap::Logits, logits);
        Ok(())
    }
}

impl Backbone for TinyNet {
    fn forward_taps(&self, images: &Tensor, _train: bool, taps: &[FeatureTap]) -> Result<Features> {
        let mut feats = Features::default();
        let c1 = self.conv1.forward(images)?.relu()?;
        let c5 = self.conv5.forward(&max_pool2x2(&c1)?)?.relu()?;
        self.head_from_conv5(&c5, &mut feats)?;
        if self.with_conv1 {
            feats.maps.insert(FeatureTap::Conv1, c1);
        }
        feats.maps.insert(FeatureTap::Conv5, c5);
        seg_nn::precision::leave(feats, taps)
    }

    fn forward_from(&self, feats: &Features, tap: FeatureTap, replaced: &Tensor, _train: bool) -> Result<Tensor> {
        if tap != FeatureTap::Conv5 {
            candle_core::bail!("tiny net: forward_from supports conv5 only");
        }
        let mut out = feats.clone();
        self.head_from_conv5(replaced, &mut out)?;
        seg_nn::precision::to_f32(out.logits()?)
    }

    fn stride(&self) -> usize {
        2
    }

    fn taps(&self) -> &'static [FeatureTap] {
        if self.with_conv1 {
            &ALL_TAPS
        } else {
            &NO_CONV1
        }
    }

    fn tap_channels(&self, tap: FeatureTap) -> Option<usize> {
        match tap {
            FeatureTap::Conv1 if self.with_conv1 => Some(C),
            FeatureTap::Conv5 | FeatureTap::Fc7 => Some(C),
            FeatureTap::Logits => Some(CLASSES),
            _ => None,
        }
    }

    fn tap_stride(&self, tap: FeatureTap) -> Option<usize> {
        self.tap_channels(tap)?;
        Some(match tap {
            FeatureTap::Conv1 | FeatureTap::Logits => 1,
            _ => 2,
        })
    }

    fn num_classes(&self) -> usize {
        CLASSES
    }

    fn has_batch_norm(&self) -> bool {
        false
    }

    fn set_bn_momentum(&self, _momentum: Option<f64>, _reset: bool) -> Result<()> {
        Ok(())
    }
}

/// A normal random tensor (seeded) plus `offset`.
pub(crate) fn randn(rng: &mut Rng, shape: &[usize], offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() + offset).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Random labels in `0..CLASSES` with some ignore pixels, `n×SIDE×SIDE` u32.
pub(crate) fn labels(rng: &mut Rng, n: usize) -> Tensor {
    let v: Vec<u32> = (0..n * SIDE * SIDE)
        .map(|_| {
            if rng.chance(0.1) {
                255
            } else {
                rng.below(CLASSES) as u32
            }
        })
        .collect();
    Tensor::from_vec(v, (n, SIDE, SIDE), &Device::Cpu).unwrap()
}

/// Source-like size statistics with every class present.
pub(crate) fn stats() -> SizeConstraints {
    let mut rng = Rng::new(3);
    let per_image: Vec<[f32; CLASSES]> = (0..20)
        .map(|_| {
            let mut f = [0f32; CLASSES];
            for x in f.iter_mut() {
                *x = rng.range_f32(0.01, 0.2);
            }
            f
        })
        .collect();
    SizeConstraints::from_fractions(&per_image)
}

/// A model, its variables and a head for `method`.
pub(crate) struct Setup {
    pub vars: VarMap,
    pub net: TinyNet,
    pub head: Box<dyn AdaptationHead>,
}

pub(crate) fn setup(method: &MethodConfig) -> Setup {
    let vars = VarMap::new();
    // Seeded: candle's own CPU initialiser cannot be seeded, and some random draws leave the
    // tiny net's ReLUs dead (a flaky "step changed nothing" for feature-level terms).
    let vb = seg_nn::init::seeded_builder(&vars, 7, DType::F32, &Device::Cpu);
    let net = TinyNet::new(vb.pp("model"), true).unwrap();
    let head = method
        .build_head(&net, vb.pp("head"), &vars, Some(&stats()))
        .unwrap()
        .unwrap();
    Setup { vars, net, head }
}

/// Source (2 images) and target (3 images) features of the tiny net, and source labels.
pub(crate) fn forward(s: &Setup, seed: u64) -> (Features, Features, Tensor) {
    let mut rng = Rng::new(seed);
    let taps = s.head.taps();
    let src = s
        .net
        .forward_taps(&randn(&mut rng, &[2, 3, SIDE, SIDE], 0.5), true, &taps)
        .unwrap();
    let tgt = s
        .net
        .forward_taps(&randn(&mut rng, &[3, 3, SIDE, SIDE], -0.5), true, &taps)
        .unwrap();
    (src, tgt, labels(&mut rng, 2))
}

/// Variables whose name starts with `prefix.`, with names.
pub(crate) fn vars_under(vars: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = vars.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("{prefix}.")))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Bit-exact snapshot of variables.
pub(crate) fn snapshot(vars: &[(String, Var)]) -> Vec<Vec<u32>> {
    vars.iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

/// The sum of the terms of one loss group, if it has any.
pub(crate) fn group_sum(terms: &[LossTerm], group: GroupId) -> Option<Tensor> {
    terms
        .iter()
        .filter(|t| t.group == group)
        .map(|t| t.value.clone())
        .reduce(|a, b| (a + b).unwrap())
}

/// Total absolute gradient that `grads` holds for `vars`.
pub(crate) fn grad_mass(grads: &candle_core::backprop::GradStore, vars: &[(String, Var)]) -> f32 {
    vars.iter()
        .filter_map(|(_, v)| grads.get(v.as_tensor()))
        .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
        .sum()
}
