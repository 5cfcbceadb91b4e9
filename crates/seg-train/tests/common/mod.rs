//! What the training-core test binaries share: the quick embedded benchmark and a tiny run of
//! the small model over it.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use seg_core::Domain;
use seg_data::{open_dataset, Augment, DatasetName, DatasetOptions, Loader};
use seg_train::{TrainSetup, TrainerConfig};

pub(crate) fn toy() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        seg_data::toy::generate(d.path(), 11, seg_data::toy::Preset::Quick).unwrap();
        d
    })
    .path()
}

pub(crate) fn setup(run_dir: &Path, steps: usize, lr: f64, resume: bool) -> TrainSetup {
    let device = Device::Cpu;
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 3, DType::F32, &device);
    let backbone = seg_fcn::build(seg_fcn::ModelName::Small, 19, vb.pp("model"), &vars).unwrap();
    let opts = DatasetOptions {
        require_labels: true,
        ..Default::default()
    };
    let ds = Arc::new(open_dataset(DatasetName::Gta5, &toy().join("gta5"), "all", opts).unwrap());
    let aug = Augment {
        crop: Some([32, 32]),
        scale_range: [0.8, 1.2],
        ..Default::default()
    };
    let config = TrainerConfig {
        steps,
        batch_size: 2,
        lr,
        checkpoint_every: 2,
        log_every: 1,
        seed: 5,
        ..Default::default()
    };
    TrainSetup {
        run_dir: run_dir.to_path_buf(),
        source: Loader::new(ds, 2, aug, 5, Domain::Source, device.clone()),
        config,
        config_toml: String::from("# test"),
        method: Box::new(
            seg_methods::FeatureAlignment::new(
                "source-only",
                backbone,
                seg_nn::vars::trainable_under(&vars, "model"),
                None,
                &vars,
                false,
            )
            .unwrap(),
        ),
        vars,
        target: None,
        eval: None,
        device,
        resume,
        progress: false,
        final_bn: None,
        left_out: Default::default(),
    }
}
