//! Feature alignment, the step most methods share: one backbone runs on the source batch (task
//! cross-entropy) and, when there is a head, on the target batch; the head adds its terms on
//! the two passes' feature taps. Source-only, the oracle and AdaBN are this step without a
//! head (they differ in data and stages); DANN, FCNs in the Wild, Cross-City, SAN, AdaptSegNet,
//! MinEnt, AdvEnt and DSN are it with theirs.

use candle_core::{Result, Var};
use candle_nn::VarMap;
use seg_core::{AdaptationHead, Backbone, GroupId, HeadInput, LossTerm, Method, ParamSet, SegMethod, Stage, StepCx};
use seg_nn::cross_entropy_ignore;
use seg_nn::vars::trainable_under;

use seg_heads::error::HeadError;

/// `before`, then the training stage, then AdaBN's re-estimation of the deployed network's
/// batch-norm statistics when it has batch norm (every adapting method ends so).
pub(crate) fn train_then_reestimate(mut before: Vec<Stage>, deployed: &dyn Backbone) -> Vec<Stage> {
    before.push(Stage::Train);
    if deployed.has_batch_norm() {
        before.push(Stage::ReestimateBn);
    }
    before
}

/// Source cross-entropy (and a head's terms): see the module documentation.
pub struct FeatureAlignment {
    name: &'static str,
    backbone: Box<dyn Backbone>,
    head: Option<Box<dyn AdaptationHead>>,
    params: Vec<ParamSet>,
    stages: Vec<Stage>,
}

impl FeatureAlignment {
    /// `model_vars` are the backbone's trainable variables; the head's are looked up in `vars`
    /// under the prefixes it reports, once, here. With `reestimate_bn` the run ends with AdaBN's
    /// re-estimation of the batch-norm statistics (ignored for a model without batch norm).
    pub fn new(
        name: &'static str,
        backbone: Box<dyn Backbone>,
        model_vars: Vec<(String, Var)>,
        head: Option<Box<dyn AdaptationHead>>,
        vars: &VarMap,
        reestimate_bn: bool,
    ) -> std::result::Result<Self, HeadError> {
        let mut params = vec![ParamSet {
            group: GroupId::SEGMENTER,
            loss: GroupId::SEGMENTER,
            lr_mult: 1.0,
            vars: model_vars,
        }];
        if let Some(h) = &head {
            for p in h.param_groups() {
                let found = trainable_under(vars, &p.prefix);
                if found.is_empty() {
                    return Err(HeadError::invalid(name, "parameters", "the head created no variables"));
                }
                params.push(ParamSet {
                    group: p.group,
                    loss: p.loss,
                    lr_mult: p.lr_mult,
                    vars: found,
                });
            }
        }
        let stages = if reestimate_bn {
            train_then_reestimate(Vec::new(), backbone.as_ref())
        } else {
            vec![Stage::Train]
        };
        Ok(Self {
            name,
            backbone,
            head,
            params,
            stages,
        })
    }
}

impl Method for FeatureAlignment {
    fn name(&self) -> &'static str {
        self.name
    }

    fn parameters(&self) -> Vec<ParamSet> {
        self.params.clone()
    }

    fn stages(&self) -> Vec<Stage> {
        self.stages.clone()
    }

    fn needs_target(&self) -> bool {
        self.head.is_some()
    }

    fn losses(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>> {
        let labels = cx.source_labels()?;
        let bb = self.backbone.as_ref();
        let bn = bb.has_batch_norm();
        let taps = self.head.as_ref().map(|h| h.taps()).unwrap_or_default();
        if self.head.is_some() && cx.target_bn_only && bn {
            bb.set_bn_momentum(Some(0.0), false)?;
        }
        let src_f = bb.forward_taps(&cx.source.images, true, &taps)?;
        let task_weight = self.head.as_ref().map_or(1.0, |h| h.source_task_weight());
        let seg = cross_entropy_ignore(src_f.logits()?, labels, seg_labels_ignore())?;
        let seg = if task_weight == 1.0 { seg } else { (seg * task_weight)? };
        let mut terms = vec![LossTerm::new("seg", seg, GroupId::SEGMENTER)];
        match &self.head {
            Some(head) => {
                let tgt = cx.target()?;
                if bn {
                    bb.set_bn_momentum(Some(0.1), false)?;
                }
                let tgt_f = bb.forward_taps(&tgt.images, true, &taps)?;
                if cx.target_bn_only && bn {
                    // Passes a head makes on its own (SAN's generated features through fc7)
                    // must not move the target statistics.
                    bb.set_bn_momentum(Some(0.0), false)?;
                }
                let input = HeadInput {
                    backbone: bb,
                    source_images: &cx.source.images,
                    target_images: &tgt.images,
                    source: &src_f,
                    source_labels: labels,
                    target: &tgt_f,
                    step: cx.step,
                };
                terms.extend(head.losses(&input)?);
            }
            None if bn => bb.set_bn_momentum(Some(0.1), false)?,
            None => {}
        }
        Ok(terms)
    }
}

impl SegMethod for FeatureAlignment {
    fn deployed(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }
}

/// The ignore label as the cross-entropy takes it.
pub(crate) fn seg_labels_ignore() -> u32 {
    seg_core::IGNORE as u32
}
