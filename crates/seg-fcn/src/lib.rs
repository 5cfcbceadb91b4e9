//! Fully convolutional segmentation networks: VGG16-FCN8s as in Long et al. (fc6 as a 7×7×4096
//! conv, fc7 as 1×1×4096, score layers on pool3 and pool4, learned 2×/2×/8× upsampling), its
//! reduced variant (fc6 3×3×1024, fc7 1×1×1024), and a small batch-norm FCN sized for the CPU
//! demo. Variable names follow torchvision's VGG16 keys (`features.N.weight`), so ImageNet
//! weights converted to safetensors load as they are.

mod pickle_scan;
pub mod small;
pub mod vgg;
pub mod weights;

use candle_nn::{VarBuilder, VarMap};
use seg_core::Backbone;

/// Which network to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    /// VGG16-FCN8s with fc6 7×7×4096 and fc7 1×1×4096 (134M parameters).
    Vgg16Fcn8s,
    /// VGG16-FCN8s with fc6 3×3×1024 and fc7 1×1×1024.
    Vgg16Fcn8sReduced,
    /// A small batch-norm FCN (stride 8, one dilated block) for the CPU demo.
    Small,
}

impl ModelName {
    pub const ALL: [&'static str; 3] = ["vgg16-fcn8s", "vgg16-fcn8s-reduced", "small"];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::Vgg16Fcn8s => "vgg16-fcn8s",
            ModelName::Vgg16Fcn8sReduced => "vgg16-fcn8s-reduced",
            ModelName::Small => "small",
        }
    }

    /// The network's output stride, known before it is built (crops must be multiples of it).
    pub fn stride(self) -> usize {
        match self {
            ModelName::Vgg16Fcn8s | ModelName::Vgg16Fcn8sReduced => vgg::STRIDE,
            ModelName::Small => small::STRIDE,
        }
    }
}

impl std::str::FromStr for ModelName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vgg16-fcn8s" => Ok(ModelName::Vgg16Fcn8s),
            "vgg16-fcn8s-reduced" => Ok(ModelName::Vgg16Fcn8sReduced),
            "small" => Ok(ModelName::Small),
            o => Err(format!(
                "unknown model `{o}`: expected one of {}",
                ModelName::ALL.join(", ")
            )),
        }
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a model with its variables under `vb` (the trainer passes `vb.pp("model")`).
pub fn build(
    name: ModelName,
    num_classes: usize,
    vb: VarBuilder<'_>,
    vars: &VarMap,
) -> candle_core::Result<Box<dyn Backbone>> {
    Ok(match name {
        ModelName::Vgg16Fcn8s => Box::new(vgg::Fcn8s::new(vgg::FcnCfg::full(num_classes), vb, vars)?),
        ModelName::Vgg16Fcn8sReduced => Box::new(vgg::Fcn8s::new(vgg::FcnCfg::reduced(num_classes), vb, vars)?),
        ModelName::Small => Box::new(small::SmallFcn::new(small::SmallCfg::demo(num_classes), vb, vars)?),
    })
}
