//! SSD detectors. [`SsdArch::Vgg300`] is SSD300 as the reference implementations define it:
//! VGG16 conv1_1…conv5_3 (torchvision's `features.{i}` names, so ImageNet weights load; pool3
//! in ceil mode), conv4_3 L2-normalised with a learned scale (init 20), pool5 3×3/1 pad 1,
//! fc6 a 3×3 convolution with dilation 6 to 1024 channels, fc7 1×1 to 1024, the four extra
//! blocks (1×1 256 → 3×3/2 512, 1×1 128 → 3×3/2 256, twice 1×1 128 → 3×3 valid 256); six source
//! maps 38, 19, 10, 5, 3, 1 (512, 1024, 512, 256, 256, 256 channels) with 4, 6, 6, 6, 4, 4 boxes
//! per cell; one 3×3 convolution per map for offsets (`loc.{k}`) and one for class logits
//! (`conf.{k}`, background first). fc6/fc7 are trained from scratch (torchvision's VGG16 has
//! fully connected fc6/fc7; the SSD authors' subsampled conversion is not reproduced).
//!
//! [`SsdArch::Small`] is a batch-norm SSD for the CPU demo: six stride-2 3×3 conv + BN + ReLU
//! blocks, the last four the source maps (strides 8, 16, 32, 64), with the same heads.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use seg_detect::ClassSet;
use seg_nn::layers::ConvCfg;
use seg_nn::{conv2d, BatchNorm2d, Conv2d};

use crate::layers::{max_pool2x2_ceil, max_pool3x3_s1_p1, L2Norm};
use crate::priors::PriorSpec;

/// Which SSD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SsdArch {
    /// SSD300 on VGG16 (300×300 input, 8,732 default boxes).
    Vgg300,
    /// The demo's small batch-norm SSD.
    Small,
}

/// The detector's settings (`[model]` of a detection run).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, from = "SsdConfigAsWritten")]
pub struct SsdConfig {
    pub arch: SsdArch,
    /// Classes detected (`car` for Sim10k → Cityscapes, or `all` eight).
    pub classes: ClassSet,
    /// Input `[width, height]` of the small SSD (SSD300 is always 300×300). Default 256×128.
    pub input: [usize; 2],
    /// Channel widths of the small SSD's six blocks.
    pub widths: [usize; 6],
}

/// `[model]` as a file or `--set` writes it: SSD300 left at the small SSD's default input reads
/// as the 300×300 it runs at, so that the config printed, saved and compared on resume says so
/// (runs saved before say 256×128 and read the same).
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SsdConfigAsWritten {
    arch: SsdArch,
    classes: ClassSet,
    input: [usize; 2],
    widths: [usize; 6],
}

impl Default for SsdConfigAsWritten {
    fn default() -> Self {
        let d = SsdConfig::default();
        Self {
            arch: d.arch,
            classes: d.classes,
            input: d.input,
            widths: d.widths,
        }
    }
}

impl From<SsdConfigAsWritten> for SsdConfig {
    fn from(w: SsdConfigAsWritten) -> Self {
        let small = SsdConfig::default();
        let input = match w.arch {
            SsdArch::Vgg300 if w.input == small.input => [300, 300],
            _ => w.input,
        };
        Self {
            arch: w.arch,
            classes: w.classes,
            input,
            widths: w.widths,
        }
    }
}

impl Default for SsdConfig {
    fn default() -> Self {
        Self {
            arch: SsdArch::Small,
            classes: ClassSet::Car,
            input: [256, 128],
            widths: [16, 32, 48, 64, 64, 64],
        }
    }
}

/// VGG16's convolutions (torchvision index, in, out) and pools (`None`), up to conv5_3 (pool3
/// runs in ceil mode here; pool5 is replaced by SSD's 3×3/1).
const VGG16: &[Option<(usize, usize, usize)>] = seg_fcn::vgg::VGG16.split_at(17).0;

/// torchvision's index of conv4_3, the first source map.
const CONV4_3: usize = 21;

impl SsdConfig {
    pub fn vgg300(classes: ClassSet) -> Self {
        Self {
            arch: SsdArch::Vgg300,
            classes,
            input: [300, 300],
            ..Default::default()
        }
    }

    /// Classes including background.
    pub fn num_classes(&self) -> usize {
        self.classes.indices().len() + 1
    }

    /// Input `(width, height)`.
    pub fn input_size(&self) -> (usize, usize) {
        match self.arch {
            SsdArch::Vgg300 => (300, 300),
            SsdArch::Small => (self.input[0], self.input[1]),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        // SSD300's size and widths are fixed: a setting of the small SSD's would be ignored.
        if self.arch == SsdArch::Vgg300 {
            let small = Self::default();
            if self.input != small.input && self.input != [300, 300] {
                let [w, h] = self.input;
                return Err(format!(
                    "model.input {w}x{h}: SSD300 on VGG16 always takes 300x300; model.input is the small SSD's (arch = \"small\"): leave it out (`--set model.input=`)"
                ));
            }
            if self.widths != small.widths {
                return Err("model.widths: SSD300 on VGG16 has VGG16's widths; model.widths is the small SSD's: leave it out (`--set model.widths=`)".into());
            }
        }
        if self.arch == SsdArch::Small {
            let [w, h] = self.input;
            if w < 64 || h < 64 || w % 64 != 0 || h % 64 != 0 || w > 2048 || h > 2048 {
                return Err(format!(
                    "model.input {w}x{h}: width and height must be multiples of 64, from 64 to 2048"
                ));
            }
            if self.widths.contains(&0) {
                return Err("model.widths: every width must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The default boxes of this detector.
    pub fn prior_spec(&self) -> PriorSpec {
        match self.arch {
            SsdArch::Vgg300 => PriorSpec::ssd300(),
            SsdArch::Small => {
                let (w, h) = self.input_size();
                let s = h as f32;
                PriorSpec {
                    image: (w, h),
                    maps: [8, 16, 32, 64].iter().map(|st| (h / st, w / st)).collect(),
                    steps: vec![8.0, 16.0, 32.0, 64.0],
                    min_sizes: vec![0.08 * s, 0.18 * s, 0.36 * s, 0.62 * s],
                    max_sizes: vec![0.18 * s, 0.36 * s, 0.62 * s, 0.9 * s],
                    aspect_ratios: vec![vec![2.0], vec![2.0, 3.0], vec![2.0, 3.0], vec![2.0]],
                    clip: true,
                }
            }
        }
    }
}

enum Trunk {
    Vgg {
        features: Vec<Option<Conv2d>>,
        l2norm: L2Norm,
        fc6: Conv2d,
        fc7: Conv2d,
        extras: Vec<Conv2d>,
    },
    Small {
        blocks: Vec<(Conv2d, BatchNorm2d)>,
    },
}

/// One forward pass: the source maps (for domain branches), offsets `N×P×4` and class logits
/// `N×P×C`, in the default boxes' order.
pub struct SsdOut {
    pub sources: Vec<Tensor>,
    pub loc: Tensor,
    pub conf: Tensor,
}

/// An SSD detector; see the module documentation.
pub struct Ssd {
    cfg: SsdConfig,
    spec: PriorSpec,
    priors: Vec<[f32; 4]>,
    trunk: Trunk,
    loc: Vec<Conv2d>,
    conf: Vec<Conv2d>,
}

impl Ssd {
    /// Builds the detector's variables under `vb`; batch-norm statistics go to `vars`.
    pub fn new(cfg: &SsdConfig, vb: VarBuilder<'_>, vars: &VarMap) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let k3 = ConvCfg {
            padding: 1,
            ..Default::default()
        };
        let (trunk, channels) = match cfg.arch {
            SsdArch::Vgg300 => {
                let features = VGG16
                    .iter()
                    .map(|l| {
                        l.map(|(i, cin, cout)| conv2d(cin, cout, 3, k3, vb.pp(format!("features.{i}"))))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?;
                let fc6 = conv2d(
                    512,
                    1024,
                    3,
                    ConvCfg {
                        padding: 6,
                        dilation: 6,
                        ..Default::default()
                    },
                    vb.pp("fc6"),
                )?;
                let fc7 = conv2d(1024, 1024, 1, ConvCfg::default(), vb.pp("fc7"))?;
                let s2 = ConvCfg {
                    padding: 1,
                    stride: 2,
                    ..Default::default()
                };
                let plan: [(usize, usize, usize, ConvCfg); 8] = [
                    (1024, 256, 1, ConvCfg::default()),
                    (256, 512, 3, s2),
                    (512, 128, 1, ConvCfg::default()),
                    (128, 256, 3, s2),
                    (256, 128, 1, ConvCfg::default()),
                    (128, 256, 3, ConvCfg::default()),
                    (256, 128, 1, ConvCfg::default()),
                    (128, 256, 3, ConvCfg::default()),
                ];
                let extras = plan
                    .iter()
                    .enumerate()
                    .map(|(i, &(cin, cout, k, c))| conv2d(cin, cout, k, c, vb.pp(format!("extras.{i}"))))
                    .collect::<Result<Vec<_>>>()?;
                let l2norm = L2Norm::new(512, vb.pp("l2norm"))?;
                (
                    Trunk::Vgg {
                        features,
                        l2norm,
                        fc6,
                        fc7,
                        extras,
                    },
                    vec![512, 1024, 512, 256, 256, 256],
                )
            }
            SsdArch::Small => {
                let w = cfg.widths;
                let s2 = ConvCfg {
                    padding: 1,
                    stride: 2,
                    bias: false,
                    ..Default::default()
                };
                let mut blocks = Vec::new();
                let mut cin = 3;
                for (i, &cout) in w.iter().enumerate() {
                    let vbb = vb.pp(format!("block{}", i + 1));
                    blocks.push((
                        conv2d(cin, cout, 3, s2, vbb.pp("conv"))?,
                        BatchNorm2d::new(cout, vbb.pp("bn"), vars)?,
                    ));
                    cin = cout;
                }
                (Trunk::Small { blocks }, vec![w[2], w[3], w[4], w[5]])
            }
        };
        let spec = cfg.prior_spec();
        let nc = cfg.num_classes();
        let mut loc = Vec::new();
        let mut conf = Vec::new();
        for (k, &c) in channels.iter().enumerate() {
            let a = spec.boxes_per_cell(k);
            loc.push(conv2d(c, a * 4, 3, k3, vb.pp(format!("loc.{k}")))?);
            conf.push(conv2d(c, a * nc, 3, k3, vb.pp(format!("conf.{k}")))?);
        }
        Ok(Self {
            cfg: cfg.clone(),
            priors: spec.priors(),
            spec,
            trunk,
            loc,
            conf,
        })
    }

    pub fn config(&self) -> &SsdConfig {
        &self.cfg
    }

    pub fn prior_spec(&self) -> &PriorSpec {
        &self.spec
    }

    /// Default boxes `(cx, cy, w, h)`, unit coordinates.
    pub fn priors(&self) -> &[[f32; 4]] {
        &self.priors
    }

    /// Channels of each source map.
    pub fn source_channels(&self) -> Vec<usize> {
        self.loc.iter().map(|l| l.weight().dim(1).unwrap_or(0)).collect()
    }

    pub fn has_batch_norm(&self) -> bool {
        matches!(self.trunk, Trunk::Small { .. })
    }

    /// Sets every batch-norm layer's running-statistics rule (see `seg_nn::BatchNorm2d`).
    pub fn set_bn_momentum(&self, momentum: Option<f64>, reset: bool) -> Result<()> {
        if let Trunk::Small { blocks } = &self.trunk {
            for (_, bn) in blocks {
                bn.set_momentum(momentum, reset)?;
            }
        }
        Ok(())
    }

    /// The source maps of `x` (`N×3×H×W`, the configured input size).
    pub fn sources(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        if (w, h) != self.cfg.input_size() {
            candle_core::bail!(
                "the detector takes {}x{} inputs, got {w}x{h}",
                self.cfg.input_size().0,
                self.cfg.input_size().1
            );
        }
        match &self.trunk {
            Trunk::Vgg {
                features,
                l2norm,
                fc6,
                fc7,
                extras,
            } => {
                let mut out = Vec::with_capacity(6);
                let mut x = x.clone();
                let mut pools = 0;
                for (layer, plan) in features.iter().zip(VGG16.iter().copied()) {
                    match (layer, plan) {
                        (Some(c), Some((index, _, _))) => {
                            x = c.forward_relu(&x)?;
                            if index == CONV4_3 {
                                out.push(l2norm.forward(&x)?);
                            }
                        }
                        _ => {
                            pools += 1;
                            x = if pools == 3 {
                                max_pool2x2_ceil(&x)?
                            } else {
                                seg_nn::max_pool2x2(&x)?
                            };
                        }
                    }
                }
                x = max_pool3x3_s1_p1(&x)?;
                x = fc6.forward_relu(&x)?;
                x = fc7.forward_relu(&x)?;
                out.push(x.clone());
                for (i, e) in extras.iter().enumerate() {
                    x = e.forward_relu(&x)?;
                    if i % 2 == 1 {
                        out.push(x.clone());
                    }
                }
                Ok(out)
            }
            Trunk::Small { blocks } => {
                let mut out = Vec::with_capacity(4);
                let mut x = x.clone();
                for (i, (c, bn)) in blocks.iter().enumerate() {
                    x = bn.forward_t(&c.forward(&x)?, train)?.relu()?;
                    if i >= 2 {
                        out.push(x.clone());
                    }
                }
                Ok(out)
            }
        }
    }

    /// Offsets and class logits from source maps.
    pub fn heads(&self, sources: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let nc = self.cfg.num_classes();
        let mut locs = Vec::with_capacity(sources.len());
        let mut confs = Vec::with_capacity(sources.len());
        for (k, s) in sources.iter().enumerate() {
            let n = s.dim(0)?;
            let l = self.loc[k].forward(s)?.permute((0, 2, 3, 1))?.contiguous()?;
            locs.push(l.reshape((n, (), 4))?);
            let c = self.conf[k].forward(s)?.permute((0, 2, 3, 1))?.contiguous()?;
            confs.push(c.reshape((n, (), nc))?);
        }
        Ok((Tensor::cat(&locs, 1)?, Tensor::cat(&confs, 1)?))
    }

    /// The whole forward pass.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<SsdOut> {
        let sources = self.sources(x, train)?;
        let (loc, conf) = self.heads(&sources)?;
        Ok(SsdOut { sources, loc, conf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssd300_refuses_the_small_ssds_settings_it_would_ignore() {
        let mut cfg = SsdConfig::vgg300(ClassSet::Car);
        assert!(cfg.validate().is_ok());
        cfg.input = [256, 128];
        assert!(cfg.validate().is_ok(), "the default, as saved configs hold it");
        cfg.input = [512, 512];
        let e = cfg.validate().unwrap_err();
        assert!(e.contains("model.input 512x512") && e.contains("300x300"), "{e}");
        cfg.input = [300, 300];
        cfg.widths[0] = 32;
        assert!(cfg.validate().unwrap_err().contains("model.widths"));
    }

    #[test]
    fn ssd300_reads_and_prints_as_the_300x300_it_runs_at() {
        let read = |text: &str| toml::from_str::<SsdConfig>(text).unwrap();
        // Left out, or as runs saved before wrote it: 300x300 (and so both compare equal).
        for text in ["arch = \"vgg300\"", "arch = \"vgg300\"\ninput = [256, 128]"] {
            let cfg = read(text);
            assert_eq!(cfg.input, [300, 300], "{text}");
            assert_eq!(cfg, SsdConfig::vgg300(ClassSet::Car));
            assert!(toml::to_string(&cfg).unwrap().contains("input = [300, 300]"));
        }
        // Another size stays what was written, for `validate` to refuse by name.
        assert_eq!(read("arch = \"vgg300\"\ninput = [512, 512]").input, [512, 512]);
        // The small SSD's default is its own.
        assert_eq!(read("arch = \"small\"").input, [256, 128]);
        let e = toml::from_str::<SsdConfig>("arch = \"small\"\nwidth = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `width`"), "{e}");
    }
}
