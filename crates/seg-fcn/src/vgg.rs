//! VGG16-FCN8s (Long, Shelhamer, Darrell). The VGG16 convolutions keep torchvision's indices
//! (`features.0` … `features.28`); fc6/fc7 are convolutions; scores on pool3, pool4 and fc7 are
//! fused with learned (bilinear-initialised) 2×, 2× and 8× upsampling. Stride 32: inputs must be
//! multiples of 32. Dropout after fc6/fc7 is left out (documented in ARCHITECTURE.md).

use candle_core::{Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use seg_core::{Backbone, FeatureTap, Features};
use seg_nn::layers::ConvCfg;
use seg_nn::{conv2d, max_pool2x2, Conv2d, ConvTranspose2d};

/// Size of fc6/fc7.
#[derive(Debug, Clone, Copy)]
pub struct FcnCfg {
    pub num_classes: usize,
    pub fc_channels: usize,
    pub fc6_kernel: usize,
}

impl FcnCfg {
    pub fn full(num_classes: usize) -> Self {
        Self {
            num_classes,
            fc_channels: 4096,
            fc6_kernel: 7,
        }
    }

    /// Multiply-adds of one forward pass of the convolutions (VGG16, fc6, fc7, scores and
    /// the three upsamplings) on an `h × w` image, counted as direct convolutions (the work
    /// PyTorch's oneDNN kernels do); a training step costs about three times this (forward,
    /// input gradient, weight gradient), less conv1_1's unneeded input gradient.
    pub fn forward_macs(&self, h: usize, w: usize) -> u64 {
        self.forward_macs_with(h, w, false)
    }

    /// [`Self::forward_macs`] as performed: with `winograd`, the 3×3 convolutions that
    /// `seg_kernels::winograd::applies` to cost 16 multiply-adds per 2×2 output tile and channel
    /// pair instead of 36.
    pub fn forward_macs_with(&self, h: usize, w: usize, winograd: bool) -> u64 {
        // A 3×3 convolution with padding 1 on a `ho × wo` input (same size out).
        let conv3 = |cin: usize, cout: usize, ho: usize, wo: usize| -> u64 {
            let g = seg_kernels::Geom::conv((1, cin, ho, wo), (cout, cin, 3, 3), 1, 1, 1);
            match g {
                Ok(g) if winograd && seg_kernels::winograd::applies(&g) => {
                    (cin * cout * 16 * ho.div_ceil(2) * wo.div_ceil(2)) as u64
                }
                _ => (cin * cout * 9 * ho * wo) as u64,
            }
        };
        let mut macs = 0u64;
        let (mut c, mut s) = (3usize, 1usize);
        let mut at = [0u64; 6]; // pixels at stride 1, 2, 4, 8, 16, 32
        for l in VGG16 {
            match l {
                Some((_, cin, cout)) => {
                    macs += conv3(cin, cout, h / s, w / s);
                    c = cout;
                }
                None => s *= 2,
            }
        }
        for (i, a) in at.iter_mut().enumerate() {
            *a = ((h >> i) * (w >> i)) as u64;
        }
        let (fc, k, n) = (self.fc_channels as u64, self.fc6_kernel as u64, self.num_classes as u64);
        macs += if k == 3 {
            conv3(c, self.fc_channels, h >> 5, w >> 5)
        } else {
            at[5] * c as u64 * fc * k * k
        };
        macs += at[5] * (fc * fc + fc * n); // fc7, score_fr
        macs += at[4] * 512 * n + at[3] * 256 * n; // score_pool4, score_pool3
                                                   // Transposed convs: each input pixel spreads n×n×k×k.
        macs += at[5] * n * n * 16 + at[4] * n * n * 16 + at[3] * n * n * 256;
        macs
    }

    pub fn reduced(num_classes: usize) -> Self {
        Self {
            num_classes,
            fc_channels: 1024,
            fc6_kernel: 3,
        }
    }
}

/// VGG16 conv layout: (torchvision index, in, out); a `None` marks a 2×2 max pool (SSD300
/// uses the first 17 entries, up to conv5_3).
pub const VGG16: [Option<(usize, usize, usize)>; 18] = [
    Some((0, 3, 64)),
    Some((2, 64, 64)),
    None,
    Some((5, 64, 128)),
    Some((7, 128, 128)),
    None,
    Some((10, 128, 256)),
    Some((12, 256, 256)),
    Some((14, 256, 256)),
    None,
    Some((17, 256, 512)),
    Some((19, 512, 512)),
    Some((21, 512, 512)),
    None,
    Some((24, 512, 512)),
    Some((26, 512, 512)),
    Some((28, 512, 512)),
    None,
];

pub struct Fcn8s {
    cfg: FcnCfg,
    features: Vec<Option<Conv2d>>,
    fc6: Conv2d,
    fc7: Conv2d,
    score_fr: Conv2d,
    score_pool4: Conv2d,
    score_pool3: Conv2d,
    upscore2: ConvTranspose2d,
    upscore_pool4: ConvTranspose2d,
    upscore8: ConvTranspose2d,
}

const TAPS: [FeatureTap; 6] = [
    FeatureTap::Conv1,
    FeatureTap::Pool3,
    FeatureTap::Pool4,
    FeatureTap::Conv5,
    FeatureTap::Fc7,
    FeatureTap::Logits,
];

impl Fcn8s {
    pub fn new(cfg: FcnCfg, vb: VarBuilder<'_>, vars: &VarMap) -> Result<Self> {
        let pad1 = ConvCfg {
            padding: 1,
            ..Default::default()
        };
        let features = VGG16
            .iter()
            .map(|l| {
                l.map(|(i, cin, cout)| conv2d(cin, cout, 3, pad1, vb.pp(format!("features.{i}"))))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let fc = cfg.fc_channels;
        let fc6 = conv2d(
            512,
            fc,
            cfg.fc6_kernel,
            ConvCfg {
                padding: cfg.fc6_kernel / 2,
                ..Default::default()
            },
            vb.pp("fc6"),
        )?;
        let fc7 = conv2d(fc, fc, 1, ConvCfg::default(), vb.pp("fc7"))?;
        let zero = ConvCfg {
            init_std: Some(0.0),
            ..Default::default()
        };
        let small = ConvCfg {
            init_std: Some(1e-3),
            ..Default::default()
        };
        let c = cfg.num_classes;
        Ok(Self {
            cfg,
            features,
            fc6,
            fc7,
            score_fr: conv2d(fc, c, 1, small, vb.pp("score_fr"))?,
            score_pool4: conv2d(512, c, 1, zero, vb.pp("score_pool4"))?,
            score_pool3: conv2d(256, c, 1, zero, vb.pp("score_pool3"))?,
            upscore2: ConvTranspose2d::bilinear(c, 2, vb.pp("upscore2"), vars)?,
            upscore_pool4: ConvTranspose2d::bilinear(c, 2, vb.pp("upscore_pool4"), vars)?,
            upscore8: ConvTranspose2d::bilinear(c, 8, vb.pp("upscore8"), vars)?,
        })
    }

    /// From conv5 (conv5_3 after ReLU) to logits, with pool3/pool4 for the skips.
    fn head(&self, conv5: &Tensor, pool3: &Tensor, pool4: &Tensor) -> Result<Tensor> {
        let pool5 = max_pool2x2(conv5)?;
        let fc6 = self.fc6.forward_relu(&pool5)?;
        let fc7 = self.fc7.forward_relu(&fc6)?;
        self.scores(&fc7, pool3, pool4)
    }

    fn scores(&self, fc7: &Tensor, pool3: &Tensor, pool4: &Tensor) -> Result<Tensor> {
        let up2 = self.upscore2.forward(&self.score_fr.forward(fc7)?)?;
        let fuse4 = (up2 + self.score_pool4.forward(pool4)?)?;
        let up4 = self.upscore_pool4.forward(&fuse4)?;
        let fuse3 = (up4 + self.score_pool3.forward(pool3)?)?;
        self.upscore8.forward(&fuse3)
    }
}

/// VGG16-FCN8s's output stride (five 2×2 pools).
pub(crate) const STRIDE: usize = 32;

impl Backbone for Fcn8s {
    fn forward_taps(&self, images: &Tensor, _train: bool, taps: &[FeatureTap]) -> Result<Features> {
        let mut f = Features::default();
        let mut x = images.clone();
        let mut pools = 0;
        for (i, layer) in self.features.iter().enumerate() {
            match layer {
                Some(conv) => {
                    x = conv.forward_relu(&x)?;
                    if i == 1 {
                        f.maps.insert(FeatureTap::Conv1, x.clone());
                    }
                    if i == 16 {
                        f.maps.insert(FeatureTap::Conv5, x.clone());
                    }
                }
                None => {
                    pools += 1;
                    if pools == 5 {
                        break;
                    }
                    x = max_pool2x2(&x)?;
                    match pools {
                        3 => {
                            f.maps.insert(FeatureTap::Pool3, x.clone());
                        }
                        4 => {
                            f.maps.insert(FeatureTap::Pool4, x.clone());
                        }
                        _ => {}
                    }
                }
            }
        }
        let conv5 = f.get(FeatureTap::Conv5)?.clone();
        let pool5 = max_pool2x2(&conv5)?;
        let fc7 = self.fc7.forward_relu(&self.fc6.forward_relu(&pool5)?)?;
        let logits = self.scores(&fc7, f.get(FeatureTap::Pool3)?, f.get(FeatureTap::Pool4)?)?;
        f.maps.insert(FeatureTap::Fc7, fc7);
        f.maps.insert(FeatureTap::Logits, logits);
        seg_nn::precision::leave(f, taps)
    }

    fn forward_from(&self, feats: &Features, tap: FeatureTap, replaced: &Tensor, _train: bool) -> Result<Tensor> {
        let (p3, p4) = (feats.get(FeatureTap::Pool3)?, feats.get(FeatureTap::Pool4)?);
        let logits = match tap {
            FeatureTap::Conv5 => self.head(replaced, p3, p4)?,
            FeatureTap::Fc7 => self.scores(replaced, p3, p4)?,
            other => candle_core::bail!("vgg16-fcn8s cannot resume from tap `{}`", other.name()),
        };
        seg_nn::precision::to_f32(&logits)
    }

    fn stride(&self) -> usize {
        STRIDE
    }

    fn taps(&self) -> &'static [FeatureTap] {
        &TAPS
    }

    fn tap_channels(&self, tap: FeatureTap) -> Option<usize> {
        Some(match tap {
            FeatureTap::Conv1 => 64,
            FeatureTap::Pool3 => 256,
            FeatureTap::Pool4 | FeatureTap::Conv5 => 512,
            FeatureTap::Fc7 => self.cfg.fc_channels,
            FeatureTap::Logits => self.cfg.num_classes,
        })
    }

    fn tap_stride(&self, tap: FeatureTap) -> Option<usize> {
        Some(match tap {
            FeatureTap::Conv1 | FeatureTap::Logits => 1,
            FeatureTap::Pool3 => 8,
            FeatureTap::Pool4 | FeatureTap::Conv5 => 16,
            FeatureTap::Fc7 => STRIDE,
        })
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn has_batch_norm(&self) -> bool {
        false
    }

    fn set_bn_momentum(&self, _momentum: Option<f64>, _reset: bool) -> Result<()> {
        Ok(())
    }
}
