//! Two-stream networks with regularised, unshared weights (Rozantsev, Salzmann, Fua, TPAMI
//! 2019). A source stream and a target stream of the same model; the target stream starts as
//! a copy of the source one and is the deployed network. The source stream learns the task on
//! source labels; per layer `j` a regulariser `exp(‖a_j·w_s + b_j − w_t‖²) − 1` with learned
//! scalars `a_j`, `b_j` (init 1 and 0) keeps the target weights a linear function of the
//! source ones, and a kernel MMD between the streams' last features aligns their outputs.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use seg_core::{Backbone, FeatureTap, GroupId, LossTerm, Method, ParamSet, SegMethod, Stage, StepCx};
use seg_nn::cross_entropy_ignore;

use crate::feature_alignment::{seg_labels_ignore, train_then_reestimate};
use seg_heads::error::{check_range, require_tap, HeadError};
use seg_nn::vars::{copy_network, trainable_under};

const METHOD: &str = "two-stream";

/// The optimiser group of the per-layer scalars `a_j`, `b_j` (`[trainer.groups.two-stream]`).
pub const TWO_STREAM_GROUP: GroupId = GroupId("two-stream");

/// Hyperparameters ("paper" = Rozantsev et al.'s value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwoStreamConfig {
    /// Weight of the summed weight regularisers. Default 1 (ours).
    pub reg_weight: f64,
    /// Divide each layer's squared norm by its number of weights before the exponential (for
    /// layers so large that the plain norm would overflow `exp`; the gradient then shrinks with
    /// the layer's size). Default false (paper: the plain norm).
    pub per_weight: bool,
    /// Weight of the MMD between the streams' last features. Default 1 (ours).
    pub mmd_weight: f64,
    /// The last features' tap. Default `fc7`.
    pub tap: FeatureTap,
    /// Feature cells per domain drawn into the MMD (evenly spaced). Default 256 (ours).
    pub mmd_cells: usize,
    /// Learning-rate multiplier of `a_j`, `b_j` over `trainer.head_lr`. Default 1.
    pub lr_mult: f64,
}

impl Default for TwoStreamConfig {
    fn default() -> Self {
        Self {
            reg_weight: 1.0,
            per_weight: false,
            mmd_weight: 1.0,
            tap: FeatureTap::Fc7,
            mmd_cells: 256,
            lr_mult: 1.0,
        }
    }
}

impl TwoStreamConfig {
    pub fn validate(&self) -> std::result::Result<(), HeadError> {
        check_range(METHOD, "reg_weight", self.reg_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "mmd_weight", self.mmd_weight, 0.0, f64::MAX)?;
        check_range(METHOD, "lr_mult", self.lr_mult, 0.0, f64::MAX)?;
        if self.mmd_cells < 2 {
            return Err(HeadError::invalid(METHOD, "mmd_cells", "must be at least 2"));
        }
        Ok(())
    }
}

/// One layer's weights in both streams: `(source, target)` pairs (weight and bias).
struct Layer {
    pairs: Vec<(Var, Var)>,
}

/// `exp(s) − 1` of `s = ‖a·w_s + b − w_t‖²` (divided by the weight count with `per_weight`)
/// for one layer, with `a`, `b` scalar tensors.
pub fn layer_regulariser(pairs: &[(Tensor, Tensor)], a: &Tensor, b: &Tensor, per_weight: bool) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut count = 0usize;
    for (ws, wt) in pairs {
        let d = ws.broadcast_mul(a)?.broadcast_add(b)?.sub(wt)?;
        let s = d.sqr()?.sum_all()?;
        count += ws.elem_count();
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    let s = match total {
        Some(t) => t,
        None => return Tensor::zeros((), candle_core::DType::F32, a.device()),
    };
    let s = if per_weight { (s / count.max(1) as f64)? } else { s };
    s.exp()? - 1.0
}

/// Biased squared MMD between the rows of `x` (`n×d`) and `y` (`m×d`) with a sum of Gaussian
/// kernels at bandwidths 1/4, 1 and 4 times the mean squared distance between all rows
/// (detached).
pub fn mmd2(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let z = Tensor::cat(&[x, y], 0)?;
    let sq = z.sqr()?.sum_keepdim(1)?;
    let d2 = sq.broadcast_add(&sq.t()?)?.sub(&(z.matmul(&z.t()?)? * 2.0)?)?.relu()?;
    let scale = d2.detach().mean_all()?.maximum(1e-6)?;
    let mut k: Option<Tensor> = None;
    for m in [0.25, 1.0, 4.0] {
        let km = d2.broadcast_div(&(&scale * m)?)?.neg()?.exp()?;
        k = Some(match k {
            Some(k) => (k + km)?,
            None => km,
        });
    }
    let k = k.expect("three bandwidths");
    let n = x.dim(0)?;
    let m = y.dim(0)?;
    let kxx = k.narrow(0, 0, n)?.narrow(1, 0, n)?.mean_all()?;
    let kyy = k.narrow(0, n, m)?.narrow(1, n, m)?.mean_all()?;
    let kxy = k.narrow(0, 0, n)?.narrow(1, n, m)?.mean_all()?;
    (kxx + kyy)? - (kxy * 2.0)?
}

/// Up to `cells` evenly spaced cells of an `N×C×h×w` map as rows (`cells×C`).
fn cells_of(x: &Tensor, cells: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let rows = x.permute((0, 2, 3, 1))?.contiguous()?.reshape((n * h * w, c))?;
    let total = n * h * w;
    if total <= cells {
        return Ok(rows);
    }
    let idx: Vec<u32> = (0..cells).map(|i| (i * total / cells) as u32).collect();
    let idx = Tensor::from_vec(idx, cells, x.device())?;
    rows.index_select(&idx, 0)
}

/// See the module documentation. The target stream is the model (`model.*`, deployed); the
/// source stream is `source_stream.*`, copied from it when a run starts; `<prefix>.a` and
/// `<prefix>.b` hold one scalar per layer.
///
/// Terms (segmenter's loss group): `seg` (source stream on source labels), `stream_reg`
/// (`reg_weight ·` Σ_j regulariser_j), `mmd` (`mmd_weight ·` MMD² of the last features).
pub struct TwoStream {
    cfg: TwoStreamConfig,
    target: Box<dyn Backbone>,
    source: Box<dyn Backbone>,
    layers: Vec<Layer>,
    a: Var,
    b: Var,
    params: Vec<ParamSet>,
    vars: VarMap,
}

impl TwoStream {
    /// `target` is the model (variables `model.*`), `source` another copy of it with variables
    /// `source_stream.*`; every trainable variable of one must have its counterpart in the
    /// other.
    pub fn new(
        cfg: &TwoStreamConfig,
        target: Box<dyn Backbone>,
        model_vars: Vec<(String, Var)>,
        source: Box<dyn Backbone>,
        vars: &VarMap,
        vb: VarBuilder<'_>,
    ) -> std::result::Result<Self, HeadError> {
        cfg.validate()?;
        require_tap(target.as_ref(), METHOD, cfg.tap)?;
        let source_vars = trainable_under(vars, "source_stream");
        let by_name: BTreeMap<&str, &Var> = source_vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let mut grouped: BTreeMap<String, Layer> = BTreeMap::new();
        for (name, vt) in &model_vars {
            let rest = name.strip_prefix("model.").unwrap_or(name);
            let other = format!("source_stream.{rest}");
            let vs = by_name.get(other.as_str()).ok_or_else(|| {
                HeadError::invalid(
                    METHOD,
                    "model",
                    format!("the second stream has no `{other}` for `{name}`: no per-layer access to this model"),
                )
            })?;
            if vs.shape() != vt.shape() {
                return Err(HeadError::invalid(
                    METHOD,
                    "model",
                    format!("`{other}` and `{name}` differ in shape"),
                ));
            }
            let layer = rest.rsplit_once('.').map_or(rest, |(l, _)| l).to_string();
            grouped
                .entry(layer)
                .or_insert(Layer { pairs: Vec::new() })
                .pairs
                .push(((*vs).clone(), vt.clone()));
        }
        if grouped.is_empty() || source_vars.len() != model_vars.len() {
            return Err(HeadError::invalid(
                METHOD,
                "model",
                "the two streams do not have the same variables",
            ));
        }
        let layers: Vec<Layer> = grouped.into_values().collect();
        let prefix = vb.prefix();
        let l = layers.len();
        let a = vb
            .get_with_hints(l, "a", Init::Const(1.0))
            .map_err(HeadError::build(METHOD))?;
        let b = vb
            .get_with_hints(l, "b", Init::Const(0.0))
            .map_err(HeadError::build(METHOD))?;
        let own = trainable_under(vars, &prefix);
        let find = |t: &Tensor| {
            own.iter()
                .find(|(_, v)| v.as_tensor().id() == t.id())
                .map(|(_, v)| v.clone())
        };
        let (a, b) = match (find(&a), find(&b)) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(HeadError::invalid(
                    METHOD,
                    "a",
                    "the per-layer scalars were not created",
                ))
            }
        };
        let params = vec![
            ParamSet {
                group: GroupId::SEGMENTER,
                loss: GroupId::SEGMENTER,
                lr_mult: 1.0,
                vars: model_vars.into_iter().chain(source_vars).collect(),
            },
            ParamSet {
                group: TWO_STREAM_GROUP,
                loss: GroupId::SEGMENTER,
                lr_mult: cfg.lr_mult,
                vars: own,
            },
        ];
        Ok(Self {
            cfg: cfg.clone(),
            target,
            source,
            layers,
            a,
            b,
            params,
            vars: vars.clone(),
        })
    }

    /// Σ_j of the layer regularisers at the current weights.
    pub fn regulariser(&self) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (j, layer) in self.layers.iter().enumerate() {
            let a = self.a.as_tensor().narrow(0, j, 1)?.reshape(())?;
            let b = self.b.as_tensor().narrow(0, j, 1)?.reshape(())?;
            let pairs: Vec<(Tensor, Tensor)> = layer
                .pairs
                .iter()
                .map(|(s, t)| (s.as_tensor().clone(), t.as_tensor().clone()))
                .collect();
            let r = layer_regulariser(&pairs, &a, &b, self.cfg.per_weight)?;
            total = Some(match total {
                Some(t) => (t + r)?,
                None => r,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => Tensor::zeros((), candle_core::DType::F32, self.a.device()),
        }
    }

    /// Number of regularised layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }
}

impl Method for TwoStream {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn parameters(&self) -> Vec<ParamSet> {
        self.params.clone()
    }

    fn stages(&self) -> Vec<Stage> {
        train_then_reestimate(Vec::new(), self.target.as_ref())
    }

    fn needs_target(&self) -> bool {
        true
    }

    fn start(&self) -> Result<()> {
        copy_network(&self.vars, "model", "source_stream")
    }

    fn losses(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>> {
        let labels = cx.source_labels()?;
        let tgt = cx.target()?;
        let fs = self.source.forward_taps(&cx.source.images, true, &[self.cfg.tap])?;
        let seg = cross_entropy_ignore(fs.logits()?, labels, seg_labels_ignore())?;
        let ft = self.target.forward_taps(&tgt.images, true, &[self.cfg.tap])?;
        let xs = cells_of(fs.get(self.cfg.tap)?, self.cfg.mmd_cells)?;
        let xt = cells_of(ft.get(self.cfg.tap)?, self.cfg.mmd_cells)?;
        let mmd = (mmd2(&xs, &xt)? * self.cfg.mmd_weight)?;
        let reg = (self.regulariser()? * self.cfg.reg_weight)?;
        Ok(vec![
            LossTerm::new("seg", seg, GroupId::SEGMENTER),
            LossTerm::new("stream_reg", reg, GroupId::SEGMENTER),
            LossTerm::new("mmd", mmd, GroupId::SEGMENTER),
        ])
    }
}

impl SegMethod for TwoStream {
    fn deployed(&self) -> &dyn Backbone {
        self.target.as_ref()
    }
}
