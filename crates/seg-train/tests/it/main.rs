//! Training-core tests on a tiny run of the small model over the quick embedded benchmark:
//! resume reaches the same weights as an uninterrupted run, checkpoints refuse truncated and
//! foreign files, and a non-finite loss stops the run and keeps the last good checkpoint.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use seg_data::{open_dataset, Augment, DatasetName, DatasetOptions};
use seg_train::{TrainSetup, Trainer};

#[path = "../common/mod.rs"]
mod common;
use common::{setup, toy};

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = seg_train::checkpoint::load(path, &Device::Cpu).unwrap();
    let mut v: Vec<_> = ck
        .tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    Trainer::new(setup(a.path(), 5, 0.01, false)).unwrap().run().unwrap();
    Trainer::new(setup(b.path(), 5, 0.01, false))
        .unwrap()
        .run_until(3)
        .unwrap();
    // A line past the checkpoint (as a crash between log and checkpoint would leave).
    seg_labels::fsutil::append_line(&b.path().join("metrics.jsonl"), r#"{"step":4,"lr":0}"#).unwrap();
    Trainer::new(setup(b.path(), 5, 0.01, true)).unwrap().run().unwrap();
    let (wa, wb) = (
        weights(&a.path().join("checkpoint.safetensors")),
        weights(&b.path().join("checkpoint.safetensors")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert_eq!(va, vb, "{na} differs after resume");
    }
    let log_a = std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap();
    let log_b = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.split("\"images_per_sec\"").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&log_a), strip(&log_b));
}

/// [`setup`] with an evaluation every 2 steps on 4 source images (what is evaluated does not
/// matter here, only that it is).
fn setup_evaluating(run_dir: &Path, steps: usize, resume: bool) -> TrainSetup {
    let mut s = setup(run_dir, steps, 0.01, resume);
    s.config.eval_every = 2;
    s.config_toml = "[trainer]\neval_every = 2\n".into();
    let list = run_dir.with_extension("list");
    std::fs::write(&list, "00001.png\n00002.png\n00003.png\n00004.png\n").unwrap();
    let opts = DatasetOptions {
        require_labels: true,
        list: Some(list),
        ..Default::default()
    };
    let ds = open_dataset(DatasetName::Gta5, &toy().join("gta5"), "all", opts).unwrap();
    let eval = seg_train::EvalSetup {
        augment: Augment {
            base_scale: 0.25,
            ..Default::default()
        },
        device: Device::Cpu,
        batch_size: 2,
        keep_samples: 0,
    };
    s.eval = Some((ds, eval, seg_labels::Protocol::Classes19));
    s
}

#[test]
fn a_run_stopped_during_an_evaluation_evaluates_again_when_resumed() {
    // The checkpoint of step 2 is written before step 2's evaluation: a kill during the
    // evaluation leaves the checkpoint and no logged result.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ra, rb) = (a.path().join("run"), b.path().join("run"));
    Trainer::new(setup_evaluating(&ra, 4, false)).unwrap().run().unwrap();
    Trainer::new(setup_evaluating(&rb, 4, false))
        .unwrap()
        .run_until(2)
        .unwrap();
    // What a kill during step 2's evaluation leaves: no result logged, no evaluation folder.
    let cut = |run: &Path| {
        let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let kept: String = log
            .lines()
            .filter(|l| !l.contains("\"eval\""))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(run.join("metrics.jsonl"), kept).unwrap();
        std::fs::remove_dir_all(run.join("eval")).unwrap();
    };
    cut(&rb);
    Trainer::new(setup_evaluating(&rb, 4, true)).unwrap().run().unwrap();
    let evals = |run: &Path| -> Vec<String> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"eval\""))
            .map(|l| l.replace(&run.display().to_string(), "RUN"))
            .collect()
    };
    assert_eq!(evals(&ra).len(), 2, "steps 2 and 4");
    assert_eq!(evals(&ra), evals(&rb));
    for step in ["step_000002", "step_000004"] {
        let report = |run: &Path| std::fs::read(run.join("eval").join(step).join("report.json")).unwrap();
        assert_eq!(report(&ra), report(&rb), "{step}");
    }
    // A resume that changes eval_every (2 to 3) still evaluates the step that had one due.
    let c = tempfile::tempdir().unwrap();
    let rc = c.path().join("run");
    Trainer::new(setup_evaluating(&rc, 4, false))
        .unwrap()
        .run_until(2)
        .unwrap();
    cut(&rc);
    let mut resumed = setup_evaluating(&rc, 4, true);
    resumed.config.eval_every = 3;
    resumed.config_toml = "[trainer]\neval_every = 3\n".into();
    Trainer::new(resumed).unwrap().run().unwrap();
    let steps: Vec<u64> = evals(&rc)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [2, 3, 4]);
    let report = |run: &Path| std::fs::read(run.join("eval/step_000002/report.json")).unwrap();
    assert_eq!(report(&ra), report(&rc));
}

#[test]
fn truncated_and_foreign_checkpoints_are_refused() {
    let a = tempfile::tempdir().unwrap();
    Trainer::new(setup(a.path(), 2, 0.01, false)).unwrap().run().unwrap();
    let ck = a.path().join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    let t = a.path().join("truncated.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let e = seg_train::checkpoint::load(&t, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("truncated.safetensors") && e.contains("truncated"), "{e}");
    // In words, not the reader's names for its errors.
    assert!(
        e.contains("cut short") && !e.contains("MetadataIncompleteBuffer"),
        "{e}"
    );
    std::fs::write(&t, &bytes[..12]).unwrap();
    let e = seg_train::checkpoint::load(&t, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("truncated") && !e.contains("Header"), "{e}");
    let f = a.path().join("foreign.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert(
        "w".to_string(),
        candle_core::Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, &f).unwrap();
    let e = seg_train::checkpoint::load(&f, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("not a seg-adapt checkpoint"), "{e}");
    // torchvision's weights passed as a checkpoint are named for what they are.
    let pth = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seg-fcn/tests/fixtures/vgg16-first-layer.pth");
    for e in [
        seg_train::checkpoint::load(&pth, &Device::Cpu)
            .err()
            .unwrap()
            .to_string(),
        seg_train::checkpoint::read_meta(&pth).err().unwrap().to_string(),
    ] {
        assert!(e.contains("a PyTorch file") && e.contains("init_weights"), "{e}");
    }
    // Resuming from a truncated checkpoint leaves it untouched.
    std::fs::write(&ck, &bytes[..bytes.len() - 7]).unwrap();
    let err = Trainer::new(setup(a.path(), 4, 0.01, true))
        .unwrap()
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint.safetensors"), "{err}");
    assert_eq!(std::fs::read(&ck).unwrap(), &bytes[..bytes.len() - 7]);
}

#[test]
fn non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let a = tempfile::tempdir().unwrap();
    let err = Trainer::new(setup(a.path(), 40, 1e12, false))
        .unwrap()
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at step") && (err.contains("NaN") || err.contains("inf")),
        "{err}"
    );
    assert!(err.contains("checkpoint"), "{err}");
}

#[test]
fn non_finite_weights_are_never_checkpointed_and_bad_rates_never_train() {
    let a = tempfile::tempdir().unwrap();
    Trainer::new(setup(a.path(), 2, 0.01, false)).unwrap().run().unwrap();
    let ck = a.path().join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    let meta = seg_train::checkpoint::load(&ck, &Device::Cpu).unwrap().meta;
    for bad in [f32::NAN, f32::INFINITY] {
        let w = candle_core::Tensor::new(&[1f32, bad], &Device::Cpu).unwrap();
        let e = seg_train::checkpoint::save(&ck, &[("model.w".into(), w)], &meta)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint.safetensors") && e.contains("`model.w`"), "{e}");
        assert_eq!(
            std::fs::read(&ck).unwrap(),
            bytes,
            "the checkpoint already there is kept"
        );
        // One written elsewhere with such values is refused when restored (eval, predict,
        // resume), before any variable changes.
        let vars = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, candle_core::DType::F32, &Device::Cpu);
        let mine = vb.pp("model").get(2, "w").unwrap();
        let other = vb.pp("model").get(2, "v").unwrap();
        let written = seg_train::checkpoint::Checkpoint {
            meta: meta.clone(),
            tensors: [
                (
                    "model.v".to_string(),
                    candle_core::Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap(),
                ),
                (
                    "model.w".to_string(),
                    candle_core::Tensor::new(&[1f32, bad], &Device::Cpu).unwrap(),
                ),
            ]
            .into_iter()
            .collect(),
            path: ck.clone(),
        };
        let before = (mine.to_vec1::<f32>().unwrap(), other.to_vec1::<f32>().unwrap());
        let e = written.restore_prefix(&vars, "model").unwrap_err().to_string();
        assert!(
            e.contains("checkpoint.safetensors") && e.contains("`model.w`") && e.contains("NaN"),
            "{e}"
        );
        assert_eq!(
            before,
            (mine.to_vec1::<f32>().unwrap(), other.to_vec1::<f32>().unwrap())
        );
    }
    // A learning rate or decay power that is not a finite non-negative number is refused
    // before the first step (a NaN rate trained on and saved NaN weights).
    for (lr, power) in [(f64::NAN, 0.9), (-1.0, 0.9), (0.01, f64::NAN), (0.01, -2.0)] {
        let mut s = setup(a.path(), 2, lr, true);
        s.config.lr_power = power;
        let e = Trainer::new(s).err().unwrap().to_string();
        assert!(e.contains("trainer.lr"), "{e}");
    }
    assert_eq!(std::fs::read(&ck).unwrap(), bytes);
}

/// The loss of each logged step of a run's `metrics.jsonl`.
fn seg_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["losses"]["seg"].as_f64())
        .collect()
}

/// bf16 mixed precision (on the CPU: bf16 activations inside the network, every convolution's
/// product computed in f32 on the widened operands and rounded) trains the small model as f32
/// does: after 6 steps the losses differ by a few per cent at most, and the weights stay f32.
#[test]
fn bf16_mixed_precision_trains_within_a_few_per_cent_of_f32() {
    let runs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (run, precision) in runs.iter().zip([seg_nn::Precision::F32, seg_nn::Precision::Bf16]) {
        let mut s = setup(run.path(), 6, 0.01, false);
        s.config.precision = precision;
        s.config.checkpoint_every = 0;
        Trainer::new(s).unwrap().run().unwrap();
    }
    let (f32_losses, bf16_losses) = (seg_losses(runs[0].path()), seg_losses(runs[1].path()));
    assert_eq!(f32_losses.len(), 6);
    assert_eq!(bf16_losses.len(), 6);
    assert_ne!(f32_losses, bf16_losses, "the bf16 path must change the arithmetic");
    for (step, (a, b)) in f32_losses.iter().zip(&bf16_losses).enumerate() {
        assert!(
            b.is_finite() && (a - b).abs() <= 0.03 * a,
            "step {}: f32 {a}, bf16 {b}",
            step + 1
        );
    }
    let ck = seg_train::checkpoint::load(&runs[1].path().join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    assert!(
        ck.tensors.values().all(|t| t.dtype() == DType::F32),
        "master weights stay f32"
    );
}

#[test]
fn a_resume_is_refused_when_the_training_splits_leave_out_other_samples() {
    use seg_train::checkpoint::{same_left_out_as_recorded, write_left_out, LeftOutByRole, SKIPPED};
    let dir = tempfile::tempdir().unwrap();
    let l = |name: &str| seg_labels::LeftOut {
        name: name.into(),
        image: format!("images/{name}.png").into(),
        reason: "unreadable".into(),
    };
    let at_start: LeftOutByRole = [("source".to_string(), vec![l("a")]), ("val".to_string(), vec![l("v")])].into();
    // A run started before anything was left out has no record: none is the record.
    same_left_out_as_recorded(dir.path(), &LeftOutByRole::new(), "val").unwrap();
    write_left_out(dir.path(), &at_start).unwrap();
    same_left_out_as_recorded(dir.path(), &at_start, "val").unwrap();
    // Val is read at evaluation only: a mended val file does not stop a resume.
    let val_mended: LeftOutByRole = [("source".to_string(), vec![l("a")])].into();
    same_left_out_as_recorded(dir.path(), &val_mended, "val").unwrap();
    let other: LeftOutByRole = [("source".to_string(), vec![l("b")])].into();
    let e = same_left_out_as_recorded(dir.path(), &other, "val").unwrap_err();
    assert!(e.contains("now also: source `b`; no longer: source `a`"), "{e}");
    // Nothing left out now: the record goes.
    write_left_out(dir.path(), &LeftOutByRole::new()).unwrap();
    assert!(!dir.path().join(SKIPPED).exists());
}

#[test]
fn a_run_folder_another_process_is_setting_up_is_named_as_in_use() {
    use seg_train::checkpoint::take_run_folder;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // The first run holds the lock and has written its config, not yet a checkpoint.
    let first = seg_labels::fsutil::lock_dir(&run).unwrap();
    std::fs::write(run.join("config.toml"), "").unwrap();
    for resume in [false, true] {
        let e = take_run_folder(&run, resume).map(drop).unwrap_err();
        assert!(e.contains("in use by another seg-adapt process"), "{e}");
    }
    // Before its config is written too.
    std::fs::remove_file(run.join("config.toml")).unwrap();
    let e = take_run_folder(&run, true).map(drop).unwrap_err();
    assert!(e.contains("in use by another seg-adapt process"), "{e}");
    // Once it has ended, a folder it left is judged on its files.
    std::fs::write(run.join("config.toml"), "").unwrap();
    drop(first);
    let e = take_run_folder(&run, false).map(drop).unwrap_err();
    assert!(e.contains("already holds config.toml"), "{e}");
    // A set-up stopped while writing leaves a temporary file; a run from step 0 starts clear
    // of it (it stayed beside the new run's files).
    std::fs::remove_file(run.join("config.toml")).unwrap();
    std::fs::write(run.join(".config.toml.7764.tmp"), "").unwrap();
    let lock = take_run_folder(&run, false).unwrap();
    assert!(!run.join(".config.toml.7764.tmp").exists());
    drop(lock);
}

#[cfg(unix)]
#[test]
fn a_left_out_file_whose_name_is_not_utf8_is_recorded_lossily() {
    use seg_train::checkpoint::{same_left_out_as_recorded, write_left_out, LeftOutByRole, SKIPPED};
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let image = std::path::Path::new("images").join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    let left: LeftOutByRole = [(
        "source".to_string(),
        vec![seg_labels::LeftOut {
            name: "caf\u{fffd}".into(),
            image,
            reason: "image is 64x32 but its label is 66x32".into(),
        }],
    )]
    .into();
    write_left_out(dir.path(), &left).unwrap();
    let text = std::fs::read_to_string(dir.path().join(SKIPPED)).unwrap();
    assert!(text.contains("images/caf\u{fffd}.png"), "{text}");
    // The record reads back, and a resume that leaves out the same sample goes ahead.
    same_left_out_as_recorded(dir.path(), &left, "val").unwrap();
}

#[test]
fn a_checkpoint_of_a_build_whose_methods_computed_otherwise_is_named_on_resume() {
    let a = tempfile::tempdir().unwrap();
    Trainer::new(setup(a.path(), 2, 0.01, false)).unwrap().run().unwrap();
    let ck = a.path().join("checkpoint.safetensors");
    let meta = seg_train::checkpoint::read_meta(&ck).unwrap();
    assert_eq!(meta.methods_version, seg_core::METHODS_VERSION);
    assert_eq!(meta.other_methods_warning(&ck), None);
    // A checkpoint written before the version was recorded reads as version 1.
    let mut json = serde_json::to_value(&meta).unwrap();
    json.as_object_mut().unwrap().remove("methods_version");
    let old: seg_train::CheckpointMeta = serde_json::from_value(json).unwrap();
    assert_eq!(old.methods_version, 1);
    let w = old.other_methods_warning(&ck).unwrap();
    assert!(
        w.contains("checkpoint.safetensors") && w.contains("methods version 1"),
        "{w}"
    );
}

/// Ground truth already converted to train ids, read as the label ids GTA5 holds, scores 0 for
/// every class from traffic light on: the evaluation says why, as `check` does.
#[test]
fn an_evaluation_on_train_id_ground_truth_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = seg_labels::png_io::RgbImage {
        width: 8,
        height: 8,
        data: vec![90; 8 * 8 * 3],
    };
    seg_labels::png_io::write_rgb(&root.join("images/00001.png"), &image).unwrap();
    let ids: Vec<u8> = (0..64).map(|i| [0, 1, 13, 255][i % 4]).collect();
    seg_labels::png_io::write_gray8(&root.join("labels/00001.png"), 8, 8, &ids).unwrap();
    let opts = DatasetOptions {
        require_labels: true,
        ..Default::default()
    };
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 3, DType::F32, &Device::Cpu);
    let backbone = seg_fcn::build(seg_fcn::ModelName::Small, 19, vb.pp("model"), &vars).unwrap();
    let setup = seg_train::EvalSetup {
        augment: Augment::default(),
        device: Device::Cpu,
        batch_size: 1,
        keep_samples: 0,
    };
    let warned = |ds: &seg_data::Dataset| {
        let ev = seg_train::evaluate(backbone.as_ref(), ds, &setup).unwrap();
        ev.warnings().iter().any(|w| w.contains("look like train ids"))
    };
    let ds = open_dataset(DatasetName::Gta5, root, "all", opts.clone()).unwrap();
    assert!(warned(&ds));
    // The toy benchmark's GTA5 labels are label ids: no warning.
    let toy_ds = open_dataset(DatasetName::Gta5, &toy().join("gta5"), "all", opts)
        .unwrap()
        .head(2);
    assert!(!warned(&toy_ds));
}

#[test]
fn a_metrics_log_with_bytes_that_are_not_utf8_is_still_trimmed_to_the_checkpoint() {
    // A line of other bytes (an edit, a disk error) spoils that line only: the steps past the
    // checkpoint still go, the run's own lines stay, and what is appended next starts a line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = Vec::new();
    for step in 1..=4 {
        log.extend_from_slice(format!("{{\"step\":{step},\"lr\":0.01}}\n").as_bytes());
    }
    log.extend_from_slice(b"x\xffx\n{\"step\":5,\"lr\":0.01}\n\xfe\xfe");
    std::fs::write(&path, &log).unwrap();
    assert_eq!(seg_train::checkpoint::metric_lines(&path).len(), 5);
    seg_train::checkpoint::trim_metrics(&path, 3).unwrap();
    let kept = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        kept,
        "{\"step\":1,\"lr\":0.01}\n{\"step\":2,\"lr\":0.01}\n{\"step\":3,\"lr\":0.01}\n"
    );
}
