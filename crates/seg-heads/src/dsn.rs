//! Domain Separation Networks (Bousmalis et al., NIPS 2016) for segmentation. The backbone is
//! the shared encoder: its `fc7` map is the shared representation. Each domain has a private
//! encoder (strided convolutions on the image down to the same grid and width); a shared
//! decoder reconstructs each image from shared + private features; a difference loss pushes the
//! shared and private representations of a domain towards orthogonality; a similarity loss
//! makes the shared representations of the two domains indistinguishable to a domain
//! discriminator behind gradient reversal (the paper's DANN variant of the similarity loss).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use seg_core::{AdaptationHead, Backbone, FeatureTap, GroupId, HeadInput, HeadParams, LossTerm};
use seg_nn::layers::ConvCfg;
use seg_nn::{bce_with_logits, conv2d, lambda_schedule, resize_bilinear, Conv2d};

use crate::discriminator::{CellDiscriminator, DiscriminatorSpec};
use crate::error::{check_range, require_tap, HeadError};
use crate::grl::grad_reverse;
use crate::ops::pool_to;

const METHOD: &str = "dsn";

/// The optimiser group of the private encoders and the decoder (`[trainer.groups.dsn]`); they
/// take their gradient from the segmenter's loss group (reconstruction and difference terms).
pub const DSN_GROUP: GroupId = GroupId("dsn");

/// DSN's hyperparameters ("paper" = Bousmalis et al.'s value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DsnConfig {
    /// The shared representation's tap. Default `fc7` (ours; the paper's shared code is the
    /// encoder's last layer).
    pub tap: FeatureTap,
    /// Width of the private encoders' and the decoder's hidden convolutions. Default 8 (ours).
    pub width: usize,
    /// Weight `alpha` of the scale-invariant reconstruction loss. Default 0.1 (ours; DSN chose
    /// its weights per task).
    pub recon_weight: f64,
    /// Weight `beta` of the difference loss. Default 0.05 (ours; DSN chose its weights per task).
    pub diff_weight: f64,
    /// Ceiling `gamma` of the similarity loss's gradient reversal weight, ramped as DANN's.
    /// Default 1 (ours; DSN chose its weights per task).
    pub sim_weight: f64,
    /// Steepness of the ramp. Default 10 (DANN's).
    pub gamma: f64,
    /// Hidden width of the per-cell domain discriminator. Default 64 (ours).
    pub disc_hidden: usize,
    /// Learning-rate multiplier of the private encoders and decoder over `trainer.head_lr`
    /// (optimiser group `dsn`, `[trainer.groups.dsn]`). Default 1.
    pub private_lr_mult: f64,
    /// The decoder reconstructs the image average-pooled by this factor (ours, for the CPU
    /// demo: 2 quarters the decoder's cost; paper 1). Default 2.
    pub recon_pool: usize,
}

impl Default for DsnConfig {
    fn default() -> Self {
        Self {
            tap: FeatureTap::Fc7,
            width: 8,
            recon_weight: 0.1,
            diff_weight: 0.05,
            sim_weight: 1.0,
            gamma: 10.0,
            disc_hidden: 64,
            private_lr_mult: 1.0,
            recon_pool: 2,
        }
    }
}

impl DsnConfig {
    pub fn validate(&self) -> std::result::Result<(), HeadError> {
        for (field, value) in [
            ("width", self.width),
            ("disc_hidden", self.disc_hidden),
            ("recon_pool", self.recon_pool),
        ] {
            if value == 0 {
                return Err(HeadError::invalid(METHOD, field, "0 must be at least 1"));
            }
        }
        check_range(METHOD, "recon_weight", self.recon_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "diff_weight", self.diff_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "sim_weight", self.sim_weight, 0.0, f64::MAX)?;
        crate::error::check_gamma(METHOD, self.gamma)?;
        check_range(METHOD, "private_lr_mult", self.private_lr_mult, 0.0, f64::MAX)
    }
}

/// Scale-invariant mean squared error (Eigen et al., used by DSN): per image,
/// `mean(d²) - mean(d)²` with `d = x - x̂`, averaged over the batch. Zero when the two differ by
/// a constant.
pub fn scale_invariant_mse(x: &Tensor, recon: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let d = (x - recon)?.reshape((n, ()))?;
    let sq = d.sqr()?.mean(D::Minus1)?;
    let m = d.mean(D::Minus1)?.sqr()?;
    (sq - m)?.mean_all()
}

/// DSN's difference loss on two `N×C×h×w` maps, each grid cell a sample: both are centred (the
/// mean over cells subtracted per channel) and each cell's vector scaled to unit length, then
/// the squared Frobenius norm of `Hs^T Hp / cells` (ours: divided by the cell count, so the
/// value does not grow with batch and crop). Zero when every channel of one is orthogonal to
/// every channel of the other.
pub fn difference_loss(shared: &Tensor, private: &Tensor) -> Result<Tensor> {
    let rows = |x: &Tensor| -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let m = x.permute((0, 2, 3, 1))?.contiguous()?.reshape((n * h * w, c))?;
        let m = m.broadcast_sub(&m.mean_keepdim(0)?)?;
        let norm = (m.sqr()?.sum_keepdim(1)? + 1e-6)?.sqrt()?;
        m.broadcast_div(&norm)
    };
    let hs = rows(shared)?;
    let hp = rows(private)?;
    let cells = hs.dim(0)? as f64;
    let corr = (hs.t()?.matmul(&hp)? / cells)?;
    corr.sqr()?.sum_all()
}

/// Strided 3×3 convolutions from the image down to the shared map's grid (`log2(stride)` of
/// them) and a 1×1 projection to its width.
struct PrivateEncoder {
    convs: Vec<Conv2d>,
    proj: Conv2d,
}

impl PrivateEncoder {
    fn new(stride: usize, width: usize, c_out: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let downs = stride.max(1).trailing_zeros() as usize;
        let cfg = ConvCfg {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let mut convs = Vec::new();
        let mut c = 3;
        for i in 0..downs {
            convs.push(conv2d(c, width, 3, cfg, vb.pp(format!("conv{}", i + 1)))?);
            c = width;
        }
        let proj = conv2d(c, c_out, 1, ConvCfg::default(), vb.pp("proj"))?;
        Ok(Self { convs, proj })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for c in &self.convs {
            x = c.forward(&x)?.relu()?;
        }
        seg_nn::precision::to_f32(&self.proj.forward(&x)?)
    }
}

/// Shared + private features back to an image: 1×1 to `width`, bilinear upsampling to the
/// image size, two 3×3 convolutions.
struct Decoder {
    inp: Conv2d,
    mid: Conv2d,
    out: Conv2d,
}

impl Decoder {
    fn new(c_in: usize, width: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let k3 = ConvCfg {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            inp: conv2d(c_in, width, 1, ConvCfg::default(), vb.pp("inp"))?,
            mid: conv2d(width, width, 3, k3, vb.pp("mid"))?,
            out: conv2d(width, 3, 3, k3, vb.pp("out"))?,
        })
    }

    fn forward(&self, code: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let x = self.inp.forward(code)?.relu()?;
        let x = resize_bilinear(&x, h, w)?;
        let x = self.mid.forward(&x)?.relu()?;
        seg_nn::precision::to_f32(&self.out.forward(&x)?)
    }
}

/// The DSN head. Variables under its builder: `private_source`, `private_target` (the private
/// encoders), `decoder`, and `disc` (the similarity discriminator).
///
/// Terms (all in the segmenter's loss group except `sim_disc`):
/// - `recon`: `alpha ·` scale-invariant MSE of both domains' reconstructions;
/// - `difference`: `beta ·` difference loss of shared vs private, both domains;
/// - `sim_disc` (discriminator): BCE of the discriminator on detached shared maps;
/// - `sim_adv`: the same through gradient reversal with `gamma · lambda_p`.
pub struct DsnHead {
    cfg: DsnConfig,
    private_source: PrivateEncoder,
    private_target: PrivateEncoder,
    decoder: Decoder,
    disc: CellDiscriminator,
    private_prefix: Vec<String>,
    disc_prefix: String,
}

impl DsnHead {
    pub fn new(cfg: &DsnConfig, backbone: &dyn Backbone, vb: VarBuilder<'_>) -> std::result::Result<Self, HeadError> {
        cfg.validate()?;
        let c = require_tap(backbone, METHOD, cfg.tap)?;
        // The private encoders halve the image until they reach the tap's grid.
        let stride = backbone.tap_stride(cfg.tap).unwrap_or_else(|| backbone.stride());
        if !stride.is_power_of_two() {
            return Err(HeadError::invalid(
                METHOD,
                "tap",
                format!(
                    "`{}` is at stride {stride} in this model, not a power of two (the private encoders halve the image until they reach it)",
                    cfg.tap.name()
                ),
            ));
        }
        let build = HeadError::build(METHOD);
        let ps = vb.pp("private_source");
        let pt = vb.pp("private_target");
        let dec = vb.pp("decoder");
        let private_prefix = vec![ps.prefix(), pt.prefix(), dec.prefix()];
        let (private_source, private_target, decoder) = (|| {
            Ok::<_, candle_core::Error>((
                PrivateEncoder::new(stride, cfg.width, c, ps)?,
                PrivateEncoder::new(stride, cfg.width, c, pt)?,
                Decoder::new(c, cfg.width, dec)?,
            ))
        })()
        .map_err(build)?;
        let dvb = vb.pp("disc");
        let disc_prefix = dvb.prefix();
        let spec = DiscriminatorSpec {
            hidden: cfg.disc_hidden,
            init_std: 0.0,
            dropout: 0.0,
        };
        let disc = CellDiscriminator::new(c, &spec, dvb).map_err(HeadError::build(METHOD))?;
        Ok(Self {
            cfg: cfg.clone(),
            private_source,
            private_target,
            decoder,
            disc,
            private_prefix,
            disc_prefix,
        })
    }

    fn domain_loss(&self, s: &Tensor, t: &Tensor) -> Result<Tensor> {
        let ls = bce_with_logits(&self.disc.forward(s)?, 1.0)?;
        let lt = bce_with_logits(&self.disc.forward(t)?, 0.0)?;
        (ls + lt)? * 0.5
    }
}

impl AdaptationHead for DsnHead {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn taps(&self) -> Vec<FeatureTap> {
        vec![self.cfg.tap]
    }

    fn param_groups(&self) -> Vec<HeadParams> {
        let mut out: Vec<HeadParams> = self
            .private_prefix
            .iter()
            .map(|p| HeadParams {
                prefix: p.clone(),
                group: DSN_GROUP,
                loss: GroupId::SEGMENTER,
                lr_mult: self.cfg.private_lr_mult,
            })
            .collect();
        out.push(HeadParams::new(self.disc_prefix.clone(), GroupId::DISCRIMINATOR, 1.0));
        out
    }

    fn losses(&self, input: &HeadInput<'_>) -> Result<Vec<LossTerm>> {
        let hs = input.source.get(self.cfg.tap)?;
        let ht = input.target.get(self.cfg.tap)?;
        let ps = self.private_source.forward(input.source_images)?;
        let pt = self.private_target.forward(input.target_images)?;
        let p = self.cfg.recon_pool;
        let small = |x: &Tensor| -> Result<Tensor> {
            let (_, _, h, w) = x.dims4()?;
            if p > 1 && h % p == 0 && w % p == 0 {
                pool_to(x, h / p, w / p)
            } else {
                Ok(x.clone())
            }
        };
        let (xs, xt) = (small(input.source_images)?, small(input.target_images)?);
        let (_, _, h, w) = xs.dims4()?;
        let rs = self.decoder.forward(&(hs + &ps)?, h, w)?;
        let (_, _, th, tw) = xt.dims4()?;
        let rt = self.decoder.forward(&(ht + &pt)?, th, tw)?;
        let recon = (scale_invariant_mse(&xs, &rs)? + scale_invariant_mse(&xt, &rt)?)?;
        let diff = (difference_loss(hs, &ps)? + difference_loss(ht, &pt)?)?;
        let lambda = self.cfg.sim_weight * lambda_schedule(input.step.progress(), self.cfg.gamma);
        let sim_disc = self.domain_loss(&hs.detach(), &ht.detach())?;
        let sim_adv = self.domain_loss(&grad_reverse(hs, lambda)?, &grad_reverse(ht, lambda)?)?;
        Ok(vec![
            LossTerm::new("recon", (recon * self.cfg.recon_weight)?, GroupId::SEGMENTER),
            LossTerm::new("difference", (diff * self.cfg.diff_weight)?, GroupId::SEGMENTER),
            LossTerm::new("sim_disc", sim_disc, GroupId::DISCRIMINATOR),
            LossTerm::new("sim_adv", sim_adv, GroupId::SEGMENTER),
        ])
    }
}
