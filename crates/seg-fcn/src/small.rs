//! A small batch-norm FCN for the CPU demo: five 3×3 conv-BN-ReLU blocks with three 2×2 pools
//! (stride 8, the last block dilated), a 1×1 "fc7" block, a 1×1 classifier, and a bilinear
//! upsample to the input size. It exposes conv1, pool3, conv5, fc7 and logits (no pool4).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use seg_core::{Backbone, FeatureTap, Features};
use seg_nn::layers::ConvCfg;
use seg_nn::{conv2d, max_pool2x2, resize_bilinear, BatchNorm2d, Conv2d};

/// Widths of the small FCN.
#[derive(Debug, Clone, Copy)]
pub struct SmallCfg {
    pub num_classes: usize,
    pub widths: [usize; 5],
    pub fc7: usize,
}

impl SmallCfg {
    pub fn demo(num_classes: usize) -> Self {
        Self {
            num_classes,
            widths: [16, 24, 32, 48, 48],
            fc7: 64,
        }
    }
}

struct Block {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Block {
    fn new(cin: usize, cout: usize, k: usize, dilation: usize, vb: VarBuilder<'_>, vars: &VarMap) -> Result<Self> {
        let cfg = ConvCfg {
            padding: dilation * (k / 2),
            dilation,
            bias: false,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(cin, cout, k, cfg, vb.pp("conv"))?,
            bn: BatchNorm2d::new(cout, vb.pp("bn"), vars)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(x)?, train)?.relu()
    }
}

pub struct SmallFcn {
    cfg: SmallCfg,
    blocks: Vec<Block>,
    fc7: Block,
    classifier: Conv2d,
}

const TAPS: [FeatureTap; 5] = [
    FeatureTap::Conv1,
    FeatureTap::Pool3,
    FeatureTap::Conv5,
    FeatureTap::Fc7,
    FeatureTap::Logits,
];

impl SmallFcn {
    pub fn new(cfg: SmallCfg, vb: VarBuilder<'_>, vars: &VarMap) -> Result<Self> {
        let w = cfg.widths;
        let blocks = vec![
            Block::new(3, w[0], 3, 1, vb.pp("block1"), vars)?,
            Block::new(w[0], w[1], 3, 1, vb.pp("block2"), vars)?,
            Block::new(w[1], w[2], 3, 1, vb.pp("block3"), vars)?,
            Block::new(w[2], w[3], 3, 1, vb.pp("block4"), vars)?,
            Block::new(w[3], w[4], 3, 2, vb.pp("block5"), vars)?,
        ];
        let fc7 = Block::new(w[4], cfg.fc7, 1, 1, vb.pp("fc7"), vars)?;
        let classifier = conv2d(cfg.fc7, cfg.num_classes, 1, ConvCfg::default(), vb.pp("classifier"))?;
        Ok(Self {
            cfg,
            blocks,
            fc7,
            classifier,
        })
    }

    fn head(&self, conv5: &Tensor, train: bool, size: (usize, usize)) -> Result<(Tensor, Tensor)> {
        let fc7 = self.fc7.forward(conv5, train)?;
        let logits = resize_bilinear(&self.classifier.forward(&fc7)?, size.0, size.1)?;
        Ok((fc7, logits))
    }
}

/// The small FCN's output stride (the last block dilated rather than strided).
pub(crate) const STRIDE: usize = 8;

impl Backbone for SmallFcn {
    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[FeatureTap]) -> Result<Features> {
        let (_, _, h, w) = images.dims4()?;
        let mut f = Features::default();
        let c1 = self.blocks[0].forward(images, train)?;
        f.maps.insert(FeatureTap::Conv1, c1.clone());
        let x = self.blocks[1].forward(&max_pool2x2(&c1)?, train)?;
        let x = self.blocks[2].forward(&max_pool2x2(&x)?, train)?;
        let p3 = max_pool2x2(&x)?;
        f.maps.insert(FeatureTap::Pool3, p3.clone());
        let x = self.blocks[3].forward(&p3, train)?;
        let c5 = self.blocks[4].forward(&x, train)?;
        let (fc7, logits) = self.head(&c5, train, (h, w))?;
        f.maps.insert(FeatureTap::Conv5, c5);
        f.maps.insert(FeatureTap::Fc7, fc7);
        f.maps.insert(FeatureTap::Logits, logits);
        seg_nn::precision::leave(f, taps)
    }

    fn forward_from(&self, feats: &Features, tap: FeatureTap, replaced: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = feats.logits()?.dims4()?;
        let logits = match tap {
            FeatureTap::Conv5 => self.head(replaced, train, (h, w))?.1,
            FeatureTap::Fc7 => resize_bilinear(&self.classifier.forward(replaced)?, h, w)?,
            other => candle_core::bail!("the small model cannot resume from tap `{}`", other.name()),
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
        let w = self.cfg.widths;
        match tap {
            FeatureTap::Conv1 => Some(w[0]),
            FeatureTap::Pool3 => Some(w[2]),
            FeatureTap::Pool4 => None,
            FeatureTap::Conv5 => Some(w[4]),
            FeatureTap::Fc7 => Some(self.cfg.fc7),
            FeatureTap::Logits => Some(self.cfg.num_classes),
        }
    }

    fn tap_stride(&self, tap: FeatureTap) -> Option<usize> {
        match tap {
            FeatureTap::Conv1 | FeatureTap::Logits => Some(1),
            FeatureTap::Pool3 | FeatureTap::Conv5 | FeatureTap::Fc7 => Some(STRIDE),
            FeatureTap::Pool4 => None,
        }
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn has_batch_norm(&self) -> bool {
        true
    }

    fn set_bn_momentum(&self, momentum: Option<f64>, reset: bool) -> Result<()> {
        for b in self.blocks.iter().chain(std::iter::once(&self.fc7)) {
            b.bn.set_momentum(momentum, reset)?;
        }
        Ok(())
    }
}
