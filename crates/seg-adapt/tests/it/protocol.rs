//! The adaptation protocol: a run starts from another run's model (`--init-from`), adaptation
//! runs end with AdaBN's batch-norm statistics over the same target batches, and a head's own
//! passes through the backbone never move the test-time statistics.

use std::path::Path;

use candle_core::{DType, Device};
use seg_adapt::cmd::demo::{demo_config, methods, Phase, Phases, PRETRAIN};
use seg_adapt::config::RunConfig;
use seg_data::toy::Preset;
use seg_methods::MethodConfig;

use crate::{err, ok, p, toy};

const PHASES: Phases = Phases { pretrain: 2, adapt: 2 };

/// A small, fast run of the quick benchmark (the demo's settings, smaller batches and crops).
fn config(method: &str, phase: Phase, init: &Path) -> RunConfig {
    let mut cfg = demo_config(toy(), Preset::Quick, method, 3, PHASES, phase, init).unwrap();
    cfg.trainer.batch_size = 2;
    cfg.augment.crop = Some([64, 64]);
    cfg.eval.adabn_batches = 3;
    if let MethodConfig::San(c) = &mut cfg.method {
        c.width = 4;
        c.disc_hidden = 8;
    }
    cfg
}

/// `(name, values)` of a checkpoint's tensors whose names contain `part`, sorted by name.
fn tensors(run: &Path, part: &str) -> Vec<(String, Vec<f32>)> {
    let ck = seg_train::checkpoint::load(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let mut v: Vec<_> = ck
        .tensors
        .iter()
        .filter(|(k, _)| k.contains(part))
        .map(|(k, t)| {
            let t = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
            (k.clone(), t.to_vec1::<f32>().unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn init_from_copies_the_model_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let cfg = config("source-only", Phase::Pretrain, &first);
    seg_adapt::run::train(&cfg, &first, &Device::Cpu, false, false).unwrap();

    // The arm's model starts as the first run's: weights and batch-norm statistics.
    let arm = config("dann", Phase::Arm, &first);
    assert_eq!(arm.model.init_from.as_deref(), Some(first.as_path()));
    let setup = seg_adapt::run::build_setup(&arm, &dir.path().join("arm"), &Device::Cpu, false, false).unwrap();
    let want: Vec<_> = tensors(&first, "model.")
        .into_iter()
        .filter(|(k, _)| k.starts_with("model."))
        .collect();
    assert!(want.iter().any(|(k, _)| k.contains("running_mean")));
    {
        let data = setup.vars.data().lock().unwrap();
        for (name, values) in &want {
            let got = data[name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(&got, values, "{name}");
        }
        // The head starts fresh.
        assert!(data.keys().any(|k| k.starts_with("head.")));
    }

    // Another model is refused before training, naming both.
    let mut other = arm.clone();
    other.model.name = seg_fcn::ModelName::Vgg16Fcn8sReduced;
    let e = format!(
        "{:#}",
        seg_adapt::run::build_setup(&other, &dir.path().join("other"), &Device::Cpu, false, false)
            .err()
            .unwrap()
    );
    assert!(e.contains("`small`") && e.contains("`vgg16-fcn8s-reduced`"), "{e}");
    assert!(e.contains("first"), "{e}");

    // The command line says the same, and a folder without a checkpoint is named.
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    let out = dir.path().join("cli");
    let mut args = crate::train_args(p(&out), p(&gta), p(&cs), "dann");
    args.extend(["--init-from", p(&first)]);
    ok(&args);
    let nowhere = dir.path().join("nowhere");
    let out = dir.path().join("cli-nowhere");
    let mut args = crate::train_args(p(&out), p(&gta), p(&cs), "dann");
    args.extend(["--init-from", p(&nowhere)]);
    let e = err(&args);
    assert!(e.contains("nowhere") && e.contains("--init-from"), "{e}");

    // A preset's ImageNet weights give way to --init-from (the presets all name them).
    let out = dir.path().join("preset-then-init-from");
    let mut args = crate::train_args(p(&out), p(&gta), p(&cs), "dann");
    args.extend([
        "--set",
        "model.init_weights=weights/vgg16-397923af.pth",
        "--init-from",
        p(&first),
    ]);
    ok(&args);

    // A resumed run keeps its saved config: only trainer.steps may change.
    args.push("--resume");
    ok(&args);
    let resumed = args.clone();
    // The saved config spelt another way is the same config; a group's real change is named.
    let mut restated = args.clone();
    restated.extend(["--set", "trainer.groups.discriminator.optimizer.beta2=0.99"]);
    ok(&restated);
    restated.extend(["--set", "trainer.groups.discriminator.optimizer.weight_decay=0.01"]);
    let e = err(&restated);
    assert!(
        e.contains("`trainer.groups.discriminator.optimizer.weight_decay`"),
        "{e}"
    );
    args.extend(["--seed", "9"]);
    let e = err(&args);
    assert!(e.contains("trainer.seed") && e.contains("--resume"), "{e}");
    // The start may have moved, but a run of another model named as the start on resume is
    // refused, naming both (config.toml would record it as this run's start).
    let ck = seg_train::checkpoint::load(&first.join(seg_train::checkpoint::FILE), &Device::Cpu).unwrap();
    let mut meta = ck.meta.clone();
    meta.config = meta
        .config
        .replace("name = \"small\"", "name = \"vgg16-fcn8s-reduced\"");
    assert_ne!(meta.config, ck.meta.config);
    let vgg = dir.path().join("vgg");
    std::fs::create_dir_all(&vgg).unwrap();
    let tensors: Vec<_> = ck.tensors.into_iter().collect();
    seg_train::checkpoint::save(&vgg.join(seg_train::checkpoint::FILE), &tensors, &meta).unwrap();
    let mut other_start = resumed.clone();
    other_start.extend(["--set", crate::leak(format!("model.init_from={}", p(&vgg)))]);
    let e = err(&other_start);
    assert!(
        e.contains("that run trained model `vgg16-fcn8s-reduced`, this run is model `small`"),
        "{e}"
    );
    // Its weights all come from its own checkpoint: the run it started from may be gone.
    std::fs::remove_dir_all(&first).unwrap();
    // Resuming a finished run does nothing more: no second evaluation logged, the same mIoU.
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let said = ok(&resumed);
    assert!(said.contains("target val mIoU") && said.contains(" %"), "{said}");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics);
    // Killed after its last checkpoint but before its evaluation was logged: it evaluates.
    let text = String::from_utf8(metrics).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"eval\"")).collect();
    std::fs::write(out.join("metrics.jsonl"), kept.join("\n") + "\n").unwrap();
    let said = ok(&resumed);
    assert!(said.contains(" %"), "{said}");
    let again = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(again.matches("\"eval\"").count(), 1, "{again}");
    // Resuming towards fewer steps than the run has done is refused, its config left as it was.
    let config = std::fs::read(out.join("config.toml")).unwrap();
    let mut fewer = resumed.clone();
    fewer[5] = "1";
    let e = err(&fewer);
    assert!(
        e.contains("past the 1 step asked for") && e.contains("--steps (trainer.steps) of at least 3"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), config);
    // The config a resume must agree with is the checkpoint's: config.toml lost, a changed
    // flag is still refused; config.toml edited, the checkpoint's is used and the edit named.
    std::fs::remove_file(out.join("config.toml")).unwrap();
    let mut batch = resumed.clone();
    batch.extend(["--set", "trainer.batch_size=1"]);
    let e = err(&batch);
    assert!(
        e.contains("`trainer.batch_size`") && e.contains("its checkpoint was trained with"),
        "{e}"
    );
    ok(&resumed);
    let text = std::fs::read_to_string(out.join("config.toml")).unwrap();
    std::fs::write(
        out.join("config.toml"),
        text.replacen("batch_size = 2", "batch_size = 3", 1),
    )
    .unwrap();
    let o = crate::run(&["train", "--out", p(&out), "--resume"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("differs from the config the checkpoint was trained with (`trainer.batch_size`)"),
        "{stderr}"
    );
    assert!(std::fs::read_to_string(out.join("config.toml"))
        .unwrap()
        .contains("batch_size = 2\n"));
    // Without CONFIG, config.toml's step count extends the run, as --steps does; settings that
    // do not change what is trained may change; a config.toml that no longer reads is named.
    let text = std::fs::read_to_string(out.join("config.toml")).unwrap();
    std::fs::write(out.join("config.toml"), text.replacen("steps = 3", "steps = 4", 1)).unwrap();
    let said = ok(&["train", "--out", p(&out), "--resume"]);
    assert!(said.contains(": step 4 of 4 in"), "{said}");
    let mut speed = resumed.clone();
    speed[5] = "5";
    speed.extend([
        "--set",
        "trainer.prefetch=0",
        "--set",
        "eval.batch_size=1",
        "--set",
        "trainer.log_every=2",
    ]);
    ok(&speed);
    // Data moved: a resume names where it is now.
    let moved = dir.path().join("moved-gta5");
    std::os::unix::fs::symlink(&gta, &moved).unwrap();
    let mut relocated = resumed.clone();
    relocated[5] = "6";
    relocated.extend(["--set", crate::leak(format!("data.source_root={}", p(&moved)))]);
    ok(&relocated);
    // A resume refused once the checkpoint is read (here: the source lost an image) leaves
    // config.toml as it was, so that the next resume is not sent to the refused data.
    let fewer = dir.path().join("fewer-gta5");
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(fewer.join(sub)).unwrap();
        for e in std::fs::read_dir(gta.join(sub)).unwrap().skip(1) {
            let e = e.unwrap();
            std::os::unix::fs::symlink(e.path(), fewer.join(sub).join(e.file_name())).unwrap();
        }
    }
    let before = std::fs::read(out.join("config.toml")).unwrap();
    let mut refused = resumed.clone();
    refused[5] = "7";
    refused.extend(["--set", crate::leak(format!("data.source_root={}", p(&fewer)))]);
    let e = err(&refused);
    assert!(e.contains("loader position"), "{e}");
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), before);
    // A finished run resumed with a free setting changed has nothing to do, and its
    // config.toml stays the checkpoint's.
    ok(&["train", "--out", p(&out), "--resume", "--set", "trainer.log_every=5"]);
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), before);
    // config.toml replaced by the other task's: the checkpoint says whose run it is.
    std::fs::write(
        out.join("config.toml"),
        "[data]\nsource_format = \"sim10k\"\nsource_root = \"x\"\ntarget_root = \"y\"\n",
    )
    .unwrap();
    ok(&["train", "--out", p(&out), "--resume"]);
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), before);
    std::fs::write(out.join("config.toml"), "lr = = x\n").unwrap();
    let o = crate::run(&["train", "--out", p(&out), "--resume"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success()
            && stderr.contains("config.toml: invalid config")
            && stderr.contains("the config the checkpoint was trained with is used"),
        "{stderr}"
    );
    // Written again (the run goes on, here with nothing left to do): the checkpoint's config.
    let back = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(back.contains("[trainer]") && back.contains("steps = 6"), "{back}");
}

#[test]
fn adaptation_runs_end_with_adabns_statistics() {
    // Re-estimating an adaptation run's statistics as AdaBN does changes nothing: the run already
    // ended with exactly those statistics, from the same target batches.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("dann");
    let cfg = config("dann", Phase::Pretrain, &run);
    seg_adapt::run::train(&cfg, &run, &Device::Cpu, false, false).unwrap();
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    seg_adapt::run::adabn_from(&cfg, &run, &again, &Device::Cpu).unwrap();
    let (ours, adabn) = (tensors(&run, "running_"), tensors(&again, "running_"));
    assert!(!ours.is_empty());
    assert_eq!(ours, adabn);
}

#[test]
fn head_passes_never_move_the_running_statistics() {
    // SAN sends generated features through fc7 in training mode; DANN makes no pass of its own.
    // After one step from the same model and batches, both must hold the same statistics.
    let dir = tempfile::tempdir().unwrap();
    let stats = |method: &str| {
        let run = dir.path().join(method);
        let mut cfg = config(method, Phase::Pretrain, &run);
        cfg.trainer.steps = 3;
        let setup = seg_adapt::run::build_setup(&cfg, &run, &Device::Cpu, false, false).unwrap();
        seg_train::Trainer::new(setup).unwrap().run_until(1).unwrap();
        tensors(&run, "running_")
    };
    let (san, dann) = (stats("san"), stats("dann"));
    let model =
        |v: Vec<(String, Vec<f32>)>| -> Vec<_> { v.into_iter().filter(|(k, _)| k.starts_with("model.")).collect() };
    assert_eq!(model(san), model(dann));
}

#[test]
fn every_preset_in_configs_loads_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        cfg.method
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // VGG16-FCN8s: output stride 32.
        cfg.validate(32).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.contains(&format!("_{}_", cfg.method.name())),
            "{name}: the file name names another method than `{}`",
            cfg.method.name()
        );
        seen.push((cfg.data.source_dataset.to_string(), cfg.method.name()));
    }
    // One preset per method for each synthetic source; AdaBN has none: VGG16-FCN8s has no batch
    // norm to re-estimate (the small model has, and the demo runs it).
    for m in seg_methods::METHOD_NAMES.into_iter().filter(|m| *m != "adabn") {
        for src in ["gta5", "synthia"] {
            assert!(seen.iter().any(|(s, n)| s == src && *n == m), "no {src} preset for {m}");
        }
    }
}

#[test]
fn set_overrides_any_key_and_names_a_bad_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let cfg = RunConfig::load(&dir.join("gta5-cityscapes_dann_vgg16-fcn8s.toml")).unwrap();
    let c = cfg.with_set("trainer.lr=0.5").unwrap();
    assert_eq!(c.trainer.lr, 0.5);
    let c = cfg.with_set("augment.crop=[512, 256]").unwrap();
    assert_eq!(c.augment.crop, Some([512, 256]));
    let c = cfg.with_set("trainer.groups.discriminator.lr=1e-4").unwrap();
    assert_eq!(c.trainer.groups["discriminator"].lr, Some(1e-4));
    // A key taken out must be a setting too: a typo is named, not passed over.
    assert!(cfg
        .with_set("model.init_weights=")
        .unwrap()
        .model
        .init_weights
        .is_none());
    let e = format!("{:#}", cfg.with_set("trainer.lr_powr=").unwrap_err());
    assert!(e.contains("lr_powr"), "{e}");
    let e = format!("{:#}", cfg.with_set("bogus.key=").unwrap_err());
    assert!(e.contains("bogus"), "{e}");
    let c = cfg.with_set("method.kind=advent").unwrap();
    assert_eq!(c.method, "advent".parse::<MethodConfig>().unwrap());
    // A value of the wrong type in [method] is named by its key (the reader points at the
    // section's header).
    let text = cfg.with_set("method.kind=dann").unwrap().to_toml().unwrap();
    let text: Vec<&str> = text
        .lines()
        .map(|l| if l.starts_with("hidden =") { "hidden = 2.5" } else { l })
        .collect();
    let e = format!("{:#}", RunConfig::parse(&text.join("\n")).unwrap_err());
    assert!(e.contains("method.hidden: invalid type: floating point `2.5`"), "{e}");
    // A kind without settings refuses a key as the others refuse an unknown one.
    let adabn = cfg.with_set("method.kind=adabn").unwrap();
    let e = format!("{:#}", adabn.with_set("method.hidden=3").unwrap_err());
    assert!(
        e.contains("method.hidden") && e.contains("`adabn` has no settings"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        RunConfig::parse(
            &adabn
                .to_toml()
                .unwrap()
                .replace("kind = \"adabn\"", "kind = \"source-only\"\nfoo = 1")
        )
        .unwrap_err()
    );
    assert!(
        e.contains("method.foo") && e.contains("`source-only` has no settings"),
        "{e}"
    );
    // An optimiser table is amended field by field; another kind starts from its defaults, and
    // a group's table amends the group's default optimiser.
    let c = cfg.with_set("trainer.optimizer.momentum=0.5").unwrap();
    assert_eq!(
        c.trainer.optimizer,
        seg_nn::OptimizerConfig::Sgd {
            momentum: 0.5,
            weight_decay: 5e-4
        }
    );
    let c = cfg.with_set("trainer.optimizer.kind=adam").unwrap();
    assert_eq!(
        c.trainer.optimizer,
        seg_nn::OptimizerConfig::fresh(seg_nn::OptimizerKind::Adam)
    );
    let c = cfg
        .with_set("trainer.groups.discriminator.optimizer.beta1=0.5")
        .unwrap();
    let (disc, _) = c.trainer.group_settings("discriminator").unwrap();
    assert_eq!(
        disc,
        c.trainer
            .head_optimizer
            .amended(&seg_nn::OptimizerPatch {
                beta1: Some(0.5),
                ..Default::default()
            })
            .unwrap()
    );
    let e = cfg.with_set("trainer.optimizer.beta2=0.9").unwrap_err().to_string();
    assert!(e.contains("trainer.optimizer: `beta2` is not a setting of sgd"), "{e}");
    let c = cfg.with_set("data.source_root=/elsewhere/gta5").unwrap();
    assert_eq!(c.data.source_root, Path::new("/elsewhere/gta5"));
    // `KEY=` takes the key out: no ImageNet weights, the model starts from random ones.
    assert!(cfg.model.init_weights.is_some());
    assert_eq!(cfg.with_set("model.init_weights=").unwrap().model.init_weights, None);
    assert!(format!("{:#}", cfg.with_set("data.source_root=").unwrap_err()).contains("source_root"));
    let c = cfg.with_set("eval.protocol=16").unwrap();
    assert_eq!(c.eval.protocol, seg_labels::Protocol::Classes16);
    let e = format!("{:#}", cfg.with_set("eval.protocol=17").unwrap_err());
    assert!(e.contains("expected 19, 16 or 13") && !e.contains("line"), "{e}");
    for (bad, names) in [
        ("method.hiden=3", "hiden"),
        ("trainer.steps=abc", "trainer.steps"),
        ("trainer.nope=1", "nope"),
        ("trainer.lr", "trainer.lr"),
    ] {
        let e = format!("{:#}", cfg.with_set(bad).unwrap_err());
        assert!(e.contains(names), "{bad}: {e}");
    }
}

#[test]
fn devices_are_typed_with_an_ordinal() {
    use seg_adapt::run::DeviceName;
    assert_eq!("cpu".parse::<DeviceName>(), Ok(DeviceName::Cpu));
    assert_eq!("cuda".parse::<DeviceName>(), Ok(DeviceName::Cuda(0)));
    assert_eq!("cuda:3".parse::<DeviceName>(), Ok(DeviceName::Cuda(3)));
    assert_eq!(DeviceName::Cuda(3).to_string(), "cuda:3");
    for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"] {
        let e = bad.parse::<DeviceName>().unwrap_err();
        assert!(e.contains(bad.trim()), "{e}");
    }
}

/// `configs/demo/` holds the demo's settings (seed 0, `seg-adapt demo`'s default output folder):
/// `pretrain.toml` and one preset per arm, each equal to what the demo runs, so
/// `seg-adapt train configs/demo/dann.toml --out runs/dann` repeats one arm of the table.
/// `UPDATE_PRESETS=1` rewrites them from the demo's code.
#[test]
fn demo_presets_are_the_demos_settings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo");
    let data = Path::new("runs/demo/data");
    let init = Path::new("runs/demo/runs").join(PRETRAIN).join("seed0");
    let mut presets = vec![(PRETRAIN.to_string(), "source-only", Phase::Pretrain)];
    presets.extend(methods().into_iter().map(|m| (m.to_string(), m, Phase::Arm)));
    let update = std::env::var("UPDATE_PRESETS").is_ok_and(|v| v == "1");
    for (name, method, phase) in presets {
        let want = demo_config(data, Preset::Default, method, 0, Phases::DEFAULT, phase, &init).unwrap();
        let file = dir.join(format!("{name}.toml"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, want.to_toml().unwrap()).unwrap();
        }
        let got = RunConfig::load(&file).unwrap_or_else(|e| panic!("{e:#} (UPDATE_PRESETS=1 writes it)"));
        assert_eq!(
            got,
            want,
            "{} differs from the demo's settings (UPDATE_PRESETS=1 rewrites it)",
            file.display()
        );
    }
}
