//! The method layer: what a training method owns and what the trainer asks of it.
//!
//! A [`Method`] owns its networks (the deployed backbone, and any other copy it needs), its own
//! modules and their variables, handed to the trainer as [`ParamSet`]s of `Var` handles (the
//! trainer never sorts variables by name). It sees whole batches ([`StepCx`]), so it decides
//! which network runs on which images, and returns named [`LossTerm`]s. It lists its
//! [`Stage`]s (a pretraining stage of its own modules, the training stage, a final batch-norm
//! re-estimation), and says which network is deployed: evaluated, checkpointed as `model.*` and
//! loaded by `predict`.

use candle_core::{Result, Tensor, Var};

use crate::batch::Batch;
use crate::model::{Backbone, GroupId, LossTerm, StepInfo};

/// Variables moved by one optimiser group, with the loss group that gives them their gradient.
#[derive(Debug, Clone)]
pub struct ParamSet {
    /// The optimiser group (its optimiser, learning rate and checkpointed state).
    pub group: GroupId,
    /// The loss group whose summed terms are differentiated for these variables. Usually
    /// `group`; a module trained by the segmenter's terms but stepped by its own optimiser
    /// (DSN's private encoders) names [`GroupId::SEGMENTER`] here.
    pub loss: GroupId,
    pub lr_mult: f64,
    /// `(checkpoint name, variable)`.
    pub vars: Vec<(String, Var)>,
}

/// One phase of a run, in the order [`Method::stages`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Steps on source batches only, before training, that train the method's own modules
    /// (the curriculum's regressors); the segmenter's learning-rate schedule has not started.
    Pretrain { steps: usize },
    /// The trainer's `steps` steps.
    Train,
    /// After the last step: the deployed network's batch-norm statistics re-estimated over
    /// target batches (AdaBN, Li et al. 2016).
    ReestimateBn,
}

/// What a method sees in one step.
pub struct StepCx<'a> {
    /// A labelled batch (source images, or the target's train labels for the oracle).
    pub source: &'a Batch,
    /// An unlabelled target batch, in the training stage of a method that asks for one.
    pub target: Option<&'a Batch>,
    /// The stage this step belongs to.
    pub stage: Stage,
    /// Position within the stage.
    pub step: StepInfo,
    /// Only target passes may update batch-norm running statistics (`trainer.bn_stats`).
    pub target_bn_only: bool,
}

impl StepCx<'_> {
    /// The source labels, or an error naming the batch's first sample.
    pub fn source_labels(&self) -> Result<&Tensor> {
        self.source.labels.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "source batch (first sample `{}`) has no labels",
                self.source.names.first().map_or("?", |s| s.as_str())
            ))
        })
    }

    /// The target batch, or an error (a method that asked for one always gets one).
    pub fn target(&self) -> Result<&Batch> {
        self.target
            .ok_or_else(|| candle_core::Error::Msg("this step has no target batch".into()))
    }
}

/// A training method: what the one step function (`seg_train::Stepper`) needs. See the
/// module documentation. Segmentation methods are [`SegMethod`]s (they deploy a
/// [`Backbone`]); detection methods deploy a detector and implement `seg_ssd`'s `DetMethod`.
pub trait Method: Send + Sync {
    /// The method's name (as in the config's `kind`).
    fn name(&self) -> &'static str;
    /// Every trainable variable the method's networks and modules own, by optimiser group
    /// (frozen copies under [`GroupId::FROZEN`]); each variable in exactly one set.
    fn parameters(&self) -> Vec<ParamSet>;
    /// The stages of a run, in order. Default: training only.
    fn stages(&self) -> Vec<Stage> {
        vec![Stage::Train]
    }
    /// Whether training steps need an unlabelled target batch.
    fn needs_target(&self) -> bool;
    /// Called once before the first step of a fresh run (not on resume), after every variable
    /// has its initial value (e.g. a second stream copies the first).
    fn start(&self) -> Result<()> {
        Ok(())
    }
    /// The loss terms of one step.
    fn losses(&self, cx: &StepCx<'_>) -> Result<Vec<LossTerm>>;
}

/// A segmentation method: a [`Method`] whose deployed network is a segmentation [`Backbone`].
pub trait SegMethod: Method {
    /// The network that is evaluated and deployed; its variables are the `model.*` ones.
    fn deployed(&self) -> &dyn Backbone;
}
