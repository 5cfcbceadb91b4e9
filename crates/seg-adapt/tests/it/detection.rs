//! The detection commands end to end on the quick embedded benchmark: `train-detector`,
//! `eval --task detection` (checkpoint and detections file agree), `inspect` of boxes, the
//! detection demo, and refusals that name the bad input.

use super::{err, ok, p, toy};

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let (_, _, cs) = seg_data::toy::paths(toy());
    let text = format!(
        "[model]\narch = \"small\"\nclasses = \"car\"\ninput = [128, 64]\n\n[method]\nkind = \"source-only\"\n\n\
         [data]\nsource_format = \"sim10k\"\nsource_root = {:?}\ntarget_root = {:?}\n\n\
         [trainer]\nsteps = 2\nbatch_size = 4\nlr = 0.01\nlog_every = 1\n",
        p(&seg_data::toy::sim10k_path(toy())),
        p(&cs)
    );
    let path = dir.join("det.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `seg-adapt eval --task detection --root ROOT` followed by `rest`.
fn eval_args<'a>(root: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", "--task", "detection", "--root", root];
    a.extend_from_slice(rest);
    a
}

#[test]
fn train_detector_then_eval_the_checkpoint_and_its_detections_file_alike() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let run = dir.path().join("run");
    let out = ok(&[
        "train-detector",
        p(&cfg),
        "--out",
        p(&run),
        "--set",
        "method.kind=da-maps",
        "--set",
        "trainer.steps=3",
    ]);
    assert!(out.contains("AP50 VOC07") && out.contains("car"), "{out}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // Three loss lines, then the evaluation's (as a segmentation run's).
    assert_eq!(metrics.lines().count(), 4);
    assert!(
        metrics.contains("domain_adv") && metrics.contains("det_loc"),
        "{metrics}"
    );
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 3, "{last}");
    assert!(last["eval"]["ap50"]["car"]["voc07"].is_number(), "{last}");
    assert_eq!(last["eval"]["dir"], "eval/step_000003", "{last}");
    // The images evaluated, as a segmentation run's line says them.
    assert!(last["eval"]["val"]["images"].as_u64().is_some_and(|n| n > 0), "{last}");
    assert_eq!(last["eval"]["val"]["digest"].as_str().map(str::len), Some(16), "{last}");
    for line in metrics.lines().take(3) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["lr"].is_number() && v["images_per_sec"].as_f64().unwrap() > 0.0,
            "{line}"
        );
    }
    let trained = json(&run.join("eval/step_000003/report.json"));
    assert!(run.join("eval/step_000003/pictures/detections.png").exists());
    let (_, _, cs) = seg_data::toy::paths(toy());
    // `eval --task detection` on val with `input` (`--checkpoint DIR` or `--pred FILE`).
    let eval = |name: &str, classes: &str, input: [&str; 2]| {
        let out = dir.path().join(name);
        let root = p(&cs);
        ok(&[
            "eval",
            "--task",
            "detection",
            "--classes",
            classes,
            "--root",
            root,
            "--split",
            "val",
            input[0],
            input[1],
            "--out",
            p(&out),
        ]);
        out
    };
    let dets = run.join("eval/step_000003/detections.json");
    // `predict` with the detector: one detections.json of every image, which scores as the
    // run's own evaluation did.
    let preds = dir.path().join("preds");
    let said = ok(&[
        "predict",
        "--checkpoint",
        p(&run),
        "--input",
        p(&cs.join("leftImg8bit/val")),
        "--out",
        p(&preds),
    ]);
    assert!(said.contains(" of 30 images to "), "{said}");
    let by_predict = eval("by-predict", "car", ["--pred", p(&preds.join("detections.json"))]);
    let car = |r: &serde_json::Value| r["ap50"]["car"]["voc07"].as_f64().unwrap();
    assert!((car(&json(&by_predict.join("report.json"))) - car(&trained)).abs() < 1e-6);
    let by_ckpt = eval("by-ckpt", "car", ["--checkpoint", p(&run)]);
    let by_file = eval("by-file", "car", ["--pred", p(&dets)]);
    // A car detector is scored on its own class by default, and never on all eight.
    let own = dir.path().join("own");
    ok(&[
        "eval",
        "--task",
        "detection",
        "--root",
        p(&cs),
        "--checkpoint",
        p(&run),
        "--out",
        p(&own),
    ]);
    assert_eq!(json(&own.join("report.json"))["ap50"], trained["ap50"]);
    let e = err(&[
        "eval",
        "--task",
        "detection",
        "--classes",
        "all",
        "--root",
        p(&cs),
        "--checkpoint",
        p(&run),
        "--out",
        p(&dir.path().join("x")),
    ]);
    assert!(e.contains("--classes car"), "{e}");
    let (a, b) = (json(&by_ckpt.join("report.json")), json(&by_file.join("report.json")));
    assert_eq!(a["ap50"], trained["ap50"]);
    assert_eq!(a["ap50"], b["ap50"]);
    assert!(a["ap50"]["car"]["voc07"].is_number() && a["images"].as_u64() == Some(30));
    // All eight classes by default; the classes without boxes in the split are null.
    let all = eval("all", "all", ["--pred", p(&dets)]);
    let v = json(&all.join("report.json"));
    assert_eq!(v["ap50"].as_object().unwrap().len(), 8);
    assert!(v["ap50"]["train"].is_null());
    assert_eq!(v["ap50"]["car"], a["ap50"]["car"]);
    // Resumed without CONFIG, the run folder's config.toml is the config (as for `train`).
    ok(&[
        "train-detector",
        "--out",
        p(&run),
        "--resume",
        "--set",
        "trainer.steps=4",
    ]);
    // The 3-step run's lines and evaluation, then step 4 and its evaluation.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "{metrics}");
    // Without config.toml the checkpoint's config is the run's, which a resume must agree with.
    let config = std::fs::read(run.join("config.toml")).unwrap();
    std::fs::remove_file(run.join("config.toml")).unwrap();
    let e = err(&[
        "train-detector",
        "--out",
        p(&run),
        "--resume",
        "--set",
        "trainer.lr=0.5",
    ]);
    assert!(e.contains("`trainer.lr` differs"), "{e}");
    assert!(!run.join("config.toml").exists(), "a refused resume writes nothing");
    // An edited config.toml does not change what is trained: it is named, and written back with
    // the checkpoint's config. The data may move (here: the target, by a link).
    let mut edited: toml::Value = toml::from_str(std::str::from_utf8(&config).unwrap()).unwrap();
    edited["trainer"]["lr"] = toml::Value::Float(0.5);
    std::fs::write(run.join("config.toml"), toml::to_string(&edited).unwrap()).unwrap();
    let moved = dir.path().join("moved-cityscapes");
    std::os::unix::fs::symlink(&cs, &moved).unwrap();
    let target = format!("data.target_root={:?}", p(&moved));
    let resumed = super::run(&[
        "train-detector",
        "--out",
        p(&run),
        "--resume",
        "--set",
        "trainer.steps=5",
        "--set",
        &target,
    ]);
    let said = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{said}");
    assert!(
        said.contains("config.toml: differs") && said.contains("`trainer.lr`"),
        "{said}"
    );
    let now: toml::Value = toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(now["trainer"]["lr"].as_float(), Some(0.01));
    assert_eq!(now["trainer"]["steps"].as_integer(), Some(5));
    assert_eq!(now["data"]["target_root"].as_str(), Some(p(&moved)));
    let e = err(&["train-detector", "--out", p(&dir.path().join("none")), "--resume"]);
    assert!(
        e.contains("nothing to resume") && e.contains("none does not exist"),
        "{e}"
    );
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let e = err(&["train-detector", "--out", p(&dir.path().join("empty")), "--resume"]);
    assert!(e.contains("no saved config to resume from"), "{e}");
    let e = err(&["train", "--out", p(&dir.path().join("none")), "--resume"]);
    assert!(
        e.contains("nothing to resume") && e.contains("none does not exist"),
        "{e}"
    );
    // Each task's resume refuses the other's run folder by name.
    let e = err(&["train", "--out", p(&run), "--resume"]);
    assert!(
        e.contains("is a detection run's folder") && e.contains("train-detector"),
        "{e}"
    );
    // A detector's checkpoint makes a detection run's folder, whatever config.toml says.
    let seg = dir.path().join("seg");
    std::fs::create_dir_all(&seg).unwrap();
    std::fs::copy(run.join("checkpoint.safetensors"), seg.join("checkpoint.safetensors")).unwrap();
    let (gta, _, _) = seg_data::toy::paths(toy());
    let mut resume = super::train_args(p(&seg), p(&gta), p(&cs), "source-only");
    resume.push("--resume");
    let e = err(&resume);
    assert!(
        e.contains("is a detection run's folder") && e.contains("train-detector"),
        "{e}"
    );
}

#[test]
fn detection_input_errors_name_the_entry_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = dir.path().join("r");
    // `train-detector` of the test config with each of `sets` as a `--set`: its error.
    let with_sets = |sets: &[&str]| {
        let mut a = vec!["train-detector", p(&cfg), "--out", p(&out)];
        a.extend(sets.iter().flat_map(|s| ["--set", *s]));
        err(&a)
    };
    for (set, named) in [
        ("trainer.stepz=3", "stepz"),
        ("method.kind=yolo", "yolo"),
        ("trainer.lr_power=nan", "trainer.lr_power"),
        ("trainer.lr=inf", "trainer.lr"),
        ("trainer.steps=0", "trainer.steps"),
        ("trainer.batch_size=100000000", "trainer.batch_size"),
        ("model.input=[6400000, 6400]", "model.input"),
        ("model.input=[128, 64, 5]", "model.input has 3 values"),
        ("model.widths=[1000000, 1000000, 16, 16, 16, 16]", "model.widths"),
        // The evaluation split is opened before training (it was found missing after it).
        ("data.target_val=nosuch", "nosuch"),
    ] {
        let e = with_sets(&[set]);
        assert!(e.contains(named), "{set}: {e}");
        assert!(!out.join("checkpoint.safetensors").exists(), "{set}");
    }
    // Under error_policy = "fail", a val image that is not there stops the run before its
    // first step (it stopped after the whole training), naming the file.
    let (_, _, cs) = seg_data::toy::paths(toy());
    let broken = dir.path().join("cs");
    super::matrix::copy_dir(&cs, &broken);
    let city = std::fs::read_dir(broken.join("leftImg8bit/val"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let gone = std::fs::read_dir(&city).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&gone).unwrap();
    let e = with_sets(&[&format!("data.target_root={:?}", p(&broken))]);
    assert!(
        e.contains(gone.file_name().unwrap().to_str().unwrap()) && e.contains("error_policy"),
        "{e}"
    );
    assert!(!out.join("checkpoint.safetensors").exists());
    for (maps, said) in [
        ("method.maps=[4]", "source maps are 0 to 3"),
        ("method.maps=[3, 3]", "names map 3 twice"),
    ] {
        let e = with_sets(&["method.kind=da-image", maps]);
        assert!(e.contains(said), "{maps}: {e}");
    }
    // A config of the other task says which it is.
    // A preset whose [method] holds settings too (the kind, not a setting, is what is wrong).
    let preset =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/gta5-cityscapes_dann_vgg16-fcn8s.toml");
    let e = err(&["train-detector", p(&preset), "--out", p(&out)]);
    assert!(
        e.contains("a segmentation config, which `seg-adapt train` takes"),
        "{e}"
    );
    let e = err(&["train-detector", super::base_config(), "--out", p(&out)]);
    assert!(
        e.contains("a segmentation config, which `seg-adapt train` takes"),
        "{e}"
    );
    let seg = dir.path().join("seg.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let without: Vec<&str> = text.lines().filter(|l| !l.starts_with("source_format")).collect();
    std::fs::write(&seg, without.join("\n")).unwrap();
    // Without data.source_format (Sim10k by default), its other keys say it is a detection
    // config; `train` says so too.
    let said = ok(&["check", p(&seg), "--time-steps", "0"]);
    assert!(said.contains("source: sim10k"), "{said}");
    let e = err(&["train", p(&seg), "--out", p(&out)]);
    assert!(
        e.contains("a detection config, which `seg-adapt train-detector` takes"),
        "{e}"
    );
    let e = with_sets(&["method.kind=adabn", "method.weight=1"]);
    assert!(
        e.contains("method.weight") && e.contains("`adabn` has no settings"),
        "{e}"
    );
    // A file's error gives the file's own line; a --set's names the --set.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&bad, text.replacen("[model]\n", "[model]\nbogus = 1\n", 1)).unwrap();
    let e = err(&["train-detector", p(&bad), "--out", p(&out)]);
    assert!(
        e.contains("bad.toml") && e.contains("line 2") && e.contains("bogus"),
        "{e}"
    );
    let e = with_sets(&["trainer.seed=-1"]);
    assert!(e.contains("--set trainer.seed=-1"), "{e}");
    // Of several --set, the one after which the config no longer reads is named alone.
    let e = with_sets(&["trainer.steps=2", "trainer.lr=abc", "trainer.seed=1"]);
    assert!(
        e.contains("--set trainer.lr=abc: ") && !e.contains("trainer.steps=2") && !e.contains("trainer.seed=1"),
        "{e}"
    );
    let e = with_sets(&["model.init_weights=w.pth"]);
    assert!(e.contains("init_weights and init_from are top-level keys"), "{e}");
    // Missing ImageNet weights: refused by `check` before it reads the data, saying where
    // torchvision's file comes from.
    let e = err(&[
        "check",
        p(&cfg),
        "--time-steps",
        "0",
        "--set",
        "model.arch=vgg300",
        "--set",
        "model.input=",
        "--set",
        "init_weights=nowhere/vgg16.pth",
    ]);
    assert!(
        e.contains("nowhere/vgg16.pth") && e.contains("download.pytorch.org/models/vgg16-397923af.pth"),
        "{e}"
    );
    // The small SSD's input size left in a config switched to SSD300 would be ignored: named.
    let e = with_sets(&["model.arch=vgg300"]);
    assert!(
        e.contains("model.input 128x64") && e.contains("--set model.input="),
        "{e}"
    );
    let e = with_sets(&["trainer.lr=nan"]);
    assert!(e.contains("--set trainer.lr=nan") && !e.contains("det.toml"), "{e}");
    let (_, _, cs) = seg_data::toy::paths(toy());
    let dets = dir.path().join("d.json");
    std::fs::write(
        &dets,
        r#"[{"image": "nowhere_000000_000019", "class": "car", "box": [0, 0, 4, 4], "score": 0.9}]"#,
    )
    .unwrap();
    let e = err(&[
        "eval",
        "--task",
        "detection",
        "--root",
        p(&cs),
        "--pred",
        p(&dets),
        "--out",
        p(&dir.path().join("e")),
    ]);
    assert!(e.contains("entry 0") && e.contains("nowhere_000000_000019"), "{e}");
    let help = ok(&["train-detector", "--help"]);
    for flag in ["--out", "--set", "--device"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn inspect_counts_boxes_of_both_formats() {
    let (_, _, cs) = seg_data::toy::paths(toy());
    let s = ok(&[
        "inspect",
        "--dataset",
        "sim10k",
        "--root",
        p(&seg_data::toy::sim10k_path(toy())),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["samples"], 160);
    assert!(v["boxes"]["car"].as_u64().unwrap() > 100, "{v}");
    assert!(v["boxes"]["motorcycle"].is_number() && v["problems"].is_array());
    let s = ok(&[
        "inspect",
        "--dataset",
        "cityscapes",
        "--task",
        "detection",
        "--root",
        p(&cs),
        "--split",
        "val",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["samples"], 30);
    assert!(
        v["boxes"]["car"].as_u64().unwrap() > 10 && v["boxes"]["person"].is_number(),
        "{v}"
    );
}

#[test]
fn detection_demo_quick_reports_every_arm() {
    if std::env::var("SEG_SKIP_SLOW").is_ok_and(|v| v == "1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = |seeds: &'static str, data_seed: &'static str| {
        [
            "demo",
            "--task",
            "detection",
            "--quick",
            "--out",
            p(dir.path()),
            "--seeds",
            seeds,
            "--pretrain-steps",
            "3",
            "--steps",
            "2",
            "--data-seed",
            data_seed,
        ]
    };
    let out = ok(&args("2", "0"));
    assert!(out.contains("car AP50") && out.contains("da-maps"), "{out}");
    assert!(
        out.contains("seeds above AdaBN") && out.contains("Verdicts against AdaBN"),
        "{out}"
    );
    let v = json(&dir.path().join("report.json"));
    assert_eq!(
        v["runs"].as_array().unwrap().len(),
        2 * seg_ssd::method::DET_METHOD_NAMES.len()
    );
    for m in seg_ssd::method::DET_METHOD_NAMES {
        assert!(v["summary"][m]["mean"].is_number(), "{m}: {v}");
        let run = dir.path().join(format!("runs/{m}/seed0"));
        let last = seg_metrics::html::last_eval_dir(&run);
        assert!(last.is_some_and(|d| d.join("detections.json").exists()), "{m}");
    }
    assert!(dir.path().join("runs/da-image/seed1/checkpoint.safetensors").exists());
    // The AdaBN arm keeps its detector as a run of method `adabn`, which `eval --checkpoint`
    // scores as the demo did.
    let adabn = dir.path().join("runs/adabn/seed0");
    let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(adabn.join("config.toml")).unwrap()).unwrap();
    assert_eq!(cfg["method"]["kind"].as_str(), Some("adabn"), "{cfg}");
    let eval_out = tempfile::tempdir().unwrap();
    let eval_out = eval_out.path();
    ok(&[
        "eval",
        "--task",
        "detection",
        "--root",
        cfg["data"]["target_root"].as_str().unwrap(),
        "--split",
        "val",
        "--checkpoint",
        p(&adabn),
        "--out",
        p(eval_out),
    ]);
    let e = err(&["train-detector", "--out", p(&adabn), "--resume"]);
    assert!(e.contains("not a run to resume"), "{e}");
    let car = |r: &std::path::Path| json(&r.join("report.json"))["ap50"]["car"]["voc07"].as_f64().unwrap();
    let adabn_eval = seg_metrics::html::last_eval_dir(&adabn).unwrap();
    assert!((car(eval_out) - car(&adabn_eval)).abs() < 1e-6);
    // Every trained arm of a seed continues from that seed's shared source-only pretraining.
    for m in ["source-only", "da-image", "da-maps", "oracle"] {
        let cfg = std::fs::read_to_string(dir.path().join(format!("runs/{m}/seed1/config.toml"))).unwrap();
        let cfg: toml::Value = toml::from_str(&cfg).unwrap();
        let from = std::path::PathBuf::from(cfg["init_from"].as_str().unwrap());
        assert!(from.ends_with("runs/pretrain/seed1"), "{m}: {}", from.display());
        assert_eq!(cfg["trainer"]["steps"].as_integer(), Some(2), "{m}");
    }
    let pre = std::fs::read_to_string(dir.path().join("runs/pretrain/seed1/config.toml")).unwrap();
    let pre: toml::Value = toml::from_str(&pre).unwrap();
    assert_eq!(pre["trainer"]["steps"].as_integer(), Some(3));
    assert!(pre.get("init_from").is_none(), "{pre}");
    // Paired per-seed differences, as in the segmentation report.
    let p = &v["paired"]["da-maps"]["vs_adabn"];
    assert_eq!(p["n"], 2);
    let mean = p["per_seed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[1].as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!((p["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(v["paired"]["source-only"]["vs_adabn"].is_null());
    super::check_page_in_chromium(&dir.path().join("report.html"));
    // The page's bar of each arm is its mean VOC07 AP, in percent as in the table.
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    for arm in v["summary"].as_object().unwrap().values() {
        let label = format!(">{:.1} %</text>", 100.0 * arm["mean"].as_f64().unwrap());
        assert!(page.contains(&label), "{label} not in the page");
    }
    // Run again, the finished runs, AdaBN's included, are reused as they are; on another
    // instance of the benchmark nothing is.
    ok(&args("2", "0"));
    let again = json(&dir.path().join("report.json"));
    let trained = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.as_object().unwrap().clone();
                r.remove("reused");
                serde_json::Value::Object(r)
            })
            .collect()
    };
    assert_eq!(trained(&v), trained(&again));
    assert!(
        again["runs"].as_array().unwrap().iter().all(|r| r["reused"] == true),
        "{again}"
    );
    let all = again["runs"].as_array().unwrap().len() as u64 + 2;
    assert_eq!(
        again["reused_runs"].as_u64(),
        Some(all),
        "the arms and two pretrainings"
    );
    ok(&args("1", "9"));
    let fresh = json(&dir.path().join("report.json"));
    for r in trained(&fresh) {
        assert_eq!(r["data_seed"], 9, "{r}");
        let before = trained(&v)
            .into_iter()
            .find(|b| b["method"] == r["method"] && b["seed"] == r["seed"])
            .unwrap();
        assert_ne!(before["init_digest"], r["init_digest"], "{r}");
    }
}

#[test]
fn every_detection_preset_loads_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/detection");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg =
            seg_adapt::cmd::detect::load_config(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains(&format!("_{}_", cfg.method.0.name())), "{name}");
        assert_eq!(cfg.model.arch, seg_ssd::SsdArch::Vgg300, "{name}");
        seen.push(cfg.method.0.name());
    }
    // Every method but AdaBN (SSD300 on VGG16 has no batch norm).
    for m in seg_ssd::method::DET_METHOD_NAMES.into_iter().filter(|m| *m != "adabn") {
        assert!(seen.contains(&m), "no preset for {m}");
    }
}

#[test]
fn a_bad_set_key_or_value_is_named_as_the_flag_it_came_from() {
    let preset = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/detection/sim10k-cityscapes_da-maps_ssd300.toml");
    let e = seg_adapt::cmd::detect::load_config(&preset, &["trainer.lr=0.01".into(), "trainer.bogus=1".into()])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--set trainer.bogus=1: unknown field `bogus`"), "{e}");
    // The file read cleanly: naming it would send the user to the wrong place.
    assert!(!e.contains("ssd300.toml"), "{e}");
    // A value the checks refuse names its flag only, not the others given with it.
    let e = seg_adapt::cmd::detect::load_config(&preset, &["trainer.steps=1".into(), "method.hidden=0".into()])
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.starts_with("--set method.hidden=0: ") && !e.contains("trainer.steps"),
        "{e}"
    );
}

#[test]
fn starting_from_a_detector_replaces_the_presets_imagenet_weights() {
    let preset = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/detection/sim10k-cityscapes_da-maps_ssd300.toml");
    let plain = seg_adapt::cmd::detect::load_config(&preset, &[]).unwrap();
    assert!(plain.init_weights.is_some() && plain.init_from.is_none());
    let from = seg_adapt::cmd::detect::load_config(&preset, &["init_from=runs/sim10k_source-only".into()]).unwrap();
    assert_eq!(
        from.init_from.as_deref(),
        Some(std::path::Path::new("runs/sim10k_source-only"))
    );
    assert!(from.init_weights.is_none());
    assert_eq!(from.model, plain.model);
}

#[test]
fn check_reads_a_detection_configs_splits_and_times_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = ok(&["check", p(&cfg), "--time-steps", "1"]);
    // Source-only reads no target train image, and neither does its check.
    assert!(!out.contains("target-train"), "{out}");
    let adabn = ok(&["check", p(&cfg), "--time-steps", "0", "--set", "method.kind=adabn"]);
    assert!(adabn.contains("target-train: cityscapes"), "{adabn}");
    for line in [
        "source: sim10k",
        "val: cityscapes",
        "timing: 1 training step on",
        "# not written above, at their defaults: data.error_policy = \"fail\"",
        "check passed",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    // A Sim10k image cut inside its scan would stop the run when drawn: named, and the check fails.
    let sim = dir.path().join("sim10k");
    super::matrix::copy_dir(&seg_data::toy::sim10k_path(toy()), &sim);
    let jpg = std::fs::read_dir(sim.join("VOC2012/JPEGImages"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(p(&seg_data::toy::sim10k_path(toy())), p(&sim));
    std::fs::write(&cfg, text).unwrap();
    let o = super::run(&["check", p(&cfg), "--time-steps", "0"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{stdout}");
    let name = jpg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stdout.contains(&name)
            && stdout.contains("truncated JPEG")
            && stdout.contains("[STOPS THE RUN (error_policy = \"fail\")]"),
        "{stdout}"
    );
    assert!(stderr.contains("would stop the detection run"), "{stderr}");
    // A starting run that is not there is refused before any file is read.
    let o = super::run(&["check", p(&cfg), "--time-steps", "0", "--set", "init_from=/nowhere"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        !o.status.success() && stderr.contains("/nowhere") && !stdout.contains(&name),
        "{stdout}\n{stderr}"
    );
    // Under `error_policy = "skip"` it is left out: the check passes, and a run leaves it out
    // of training, names it once and lists it in skipped.json and metrics.jsonl.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[data]\n", "[data]\nerror_policy = \"skip\"\n");
    std::fs::write(&cfg, text).unwrap();
    let out = ok(&["check", p(&cfg), "--time-steps", "0"]);
    assert!(
        out.contains("1 sample(s) left out of the run")
            && out.contains("[left out (error_policy = \"skip\")]")
            && out.contains("check passed"),
        "{out}"
    );
    // Without timing the run is still set up: what train-detector refuses before its first
    // step is refused here too.
    let e = err(&["check", p(&cfg), "--time-steps", "0", "--set", "init_from=/nowhere"]);
    assert!(e.contains("/nowhere") && e.contains("before its first step"), "{e}");
    let run = dir.path().join("run");
    let o = super::run(&["train-detector", p(&cfg), "--out", p(&run)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let id = name.trim_end_matches(".jpg");
    assert_eq!(stderr.matches(&format!("left out `{id}`")).count(), 1, "{stderr}");
    let skipped = json(&run.join("skipped.json"));
    assert_eq!(skipped["source"][0]["name"], id, "{skipped}");
    assert!(skipped["source"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("truncated JPEG"));
    assert_eq!(skipped["val"].as_array().map(Vec::len), Some(0), "{skipped}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["left_out"]["source"], 1, "{metrics}");
    // Resumed after the file was mended, the run would index another dataset than it started
    // with: refused, naming the sample.
    std::fs::write(&jpg, &bytes).unwrap();
    let e = err(&[
        "train-detector",
        p(&cfg),
        "--out",
        p(&run),
        "--resume",
        "--set",
        "trainer.steps=3",
    ]);
    assert!(
        e.contains("not those the run left out when it started") && e.contains(&format!("no longer: source `{id}`")),
        "{e}"
    );
    assert!(run.join("skipped.json").exists(), "the run's record stays");
}

#[test]
fn a_target_val_list_chooses_the_images_a_detection_run_and_its_evaluation_score() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (_, _, cs) = seg_data::toy::paths(toy());
    // AdaptSegNet's `cityscapes_list/val.txt` lines: `city/stem_leftImg8bit.png`.
    let mut lines: Vec<String> = std::fs::read_dir(cs.join("leftImg8bit/val"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|e| {
            let f = e.unwrap().path();
            let city = f.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
            format!("{city}/{}", f.file_name().unwrap().to_string_lossy())
        })
        .collect();
    lines.sort();
    lines.truncate(3);
    let list = dir.path().join("val.txt");
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let run = dir.path().join("run");
    let set = format!("data.target_val_list={:?}", p(&list));
    ok(&["train-detector", p(&cfg), "--out", p(&run), "--set", &set]);
    let trained = json(&run.join("eval/step_000002/report.json"));
    assert_eq!(trained["images"], 3, "{trained}");
    let out = dir.path().join("ev");
    ok(&eval_args(
        p(&cs),
        &["--checkpoint", p(&run), "--list", p(&list), "--out", p(&out)],
    ));
    let again = json(&out.join("report.json"));
    assert_eq!(
        (&again["images"], &again["ap50"]),
        (&trained["images"], &trained["ap50"])
    );
    // A detections file is scored against the whole split: --list is for a detector.
    let dets = run.join("eval/step_000002/detections.json");
    let ev2 = dir.path().join("ev2");
    let e = err(&eval_args(
        p(&cs),
        &["--pred", p(&dets), "--list", p(&list), "--out", p(&ev2)],
    ));
    assert!(e.contains("--list is not read here"), "{e}");
    // A Cityscapes-format source takes the same lines as its split list.
    let said = ok(&[
        "check",
        p(&cfg),
        "--time-steps",
        "0",
        "--set",
        "data.source_format=\"cityscapes\"",
        "--set",
        &format!("data.source_root={:?}", p(&cs)),
        "--set",
        "data.source_split=\"val\"",
        "--set",
        &format!("data.source_list={:?}", p(&list)),
    ]);
    assert!(
        said.contains("source: cityscapes val") && said.contains(": 3 samples"),
        "{said}"
    );
    // A line naming an image that is not on disk is a sample that does not load, as in the
    // segmentation readers: it stops the run, named with the list, or is left out under "skip".
    let missing = "lindau_999999_000019";
    std::fs::write(
        &list,
        format!("{}\nlindau/{missing}_leftImg8bit.png\n", lines.join("\n")),
    )
    .unwrap();
    let r2 = dir.path().join("r2");
    let e = err(&["train-detector", p(&cfg), "--out", p(&r2), "--set", &set]);
    assert!(
        e.contains(&format!("{missing}_leftImg8bit.png: image named by the split list"))
            && e.contains("val.txt not found"),
        "{e}"
    );
    let r3 = dir.path().join("r3");
    ok(&[
        "train-detector",
        p(&cfg),
        "--out",
        p(&r3),
        "--set",
        &set,
        "--set",
        "data.error_policy=\"skip\"",
    ]);
    let skipped = json(&r3.join("skipped.json"));
    assert_eq!(skipped["val"][0]["name"], missing, "{skipped}");
    assert_eq!(json(&r3.join("eval/step_000002/report.json"))["images"], 3);
}

#[test]
fn eval_of_a_detector_leaves_out_what_its_run_left_out() {
    // A val annotation saved with 8 bits: a run under `error_policy = "skip"` leaves it out,
    // and so does `eval --checkpoint` of that run (it stopped on the file).
    let dir = tempfile::tempdir().unwrap();
    let (_, _, toy_cs) = seg_data::toy::paths(toy());
    let cs = dir.path().join("cs");
    super::matrix::copy_dir(&toy_cs, &cs);
    let ann = std::fs::read_dir(cs.join("gtFine/val"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|f| f.to_string_lossy().ends_with("_gtFine_instanceIds.png"))
        .min()
        .unwrap();
    seg_labels::png_io::write_gray8(&ann, 2, 1, &[26, 7]).unwrap();
    let cfg = config(dir.path());
    let run = dir.path().join("run");
    let sets = [
        "--set".to_string(),
        format!("data.target_root={:?}", p(&cs)),
        "--set".to_string(),
        "data.error_policy=\"skip\"".to_string(),
    ];
    let mut a = vec!["train-detector", p(&cfg), "--out", p(&run)];
    a.extend(sets.iter().map(String::as_str));
    ok(&a);
    let trained = json(&run.join("eval/step_000002/report.json"));
    let out = dir.path().join("ev");
    ok(&eval_args(p(&cs), &["--checkpoint", p(&run), "--out", p(&out)]));
    let again = json(&out.join("report.json"));
    assert_eq!(
        (&again["images"], &again["ap50"]),
        (&trained["images"], &trained["ap50"])
    );
    assert!(
        again["source"]
            .as_str()
            .unwrap()
            .contains("1 image(s) that do not load were left out"),
        "{again}"
    );
}

#[test]
fn a_runs_detections_file_is_scored_with_a_word_on_the_images_the_run_left_out() {
    // A val image cut after its header: the run under `error_policy = "skip"` leaves it out;
    // its detections file, scored with --pred (headers only), counts it as an image without a
    // detection, and says so, pointing at `--checkpoint`.
    let dir = tempfile::tempdir().unwrap();
    let (_, _, toy_cs) = seg_data::toy::paths(toy());
    let cs = dir.path().join("cs");
    super::matrix::copy_dir(&toy_cs, &cs);
    let image = std::fs::read_dir(cs.join("leftImg8bit/val"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(&image, &bytes[..bytes.len() / 2]).unwrap();
    let cfg = config(dir.path());
    let run = dir.path().join("run");
    let target = format!("data.target_root={:?}", p(&cs));
    ok(&[
        "train-detector",
        p(&cfg),
        "--out",
        p(&run),
        "--set",
        &target,
        "--set",
        "data.error_policy=\"skip\"",
    ]);
    let trained = json(&run.join("eval/step_000002/report.json"));
    let dets = run.join("eval/step_000002/detections.json");
    let out = dir.path().join("ev");
    let o = super::run(&eval_args(p(&cs), &["--pred", p(&dets), "--out", p(&out)]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stem = image
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches("_leftImg8bit.png");
    assert!(
        stderr.contains("left 1 of these images out of its evaluation")
            && stderr.contains(&format!("first `{stem}`"))
            && stderr.contains("eval --checkpoint"),
        "{stderr}"
    );
    let scored = json(&out.join("report.json"));
    assert_eq!(
        scored["images"].as_u64(),
        trained["images"].as_u64().map(|n| n + 1),
        "{scored}"
    );
    assert!(scored["source"]
        .as_str()
        .unwrap()
        .contains("scored here as images without a detection"));
    // A detections file outside any run folder gets no such word.
    let copy = dir.path().join("dets.json");
    std::fs::copy(&dets, &copy).unwrap();
    let o = super::run(&eval_args(
        p(&cs),
        &["--pred", p(&copy), "--out", p(&dir.path().join("ev2"))],
    ));
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("left 1 of"));
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_detector_training_writes_a_checkpoint_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let run = dir.path().join("run");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train-detector",
            p(&cfg),
            "--out",
            p(&run),
            "--set",
            "trainer.steps=100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (code, stderr) = super::signalled_once_training(&args(&["--set", "trainer.batch_size=1"]), &run, libc::SIGTERM);
    assert_eq!(code, Some(130), "{stderr}");
    let at = seg_train::checkpoint::read_meta(&run.join("checkpoint.safetensors"))
        .unwrap()
        .step;
    assert!(
        at >= 1 && stderr.contains(&format!("interrupted at step {at}:")),
        "{at}: {stderr}"
    );
    let metrics = run.join("metrics.jsonl");
    // The log holds every step up to the checkpoint, once.
    let steps: Vec<u64> = seg_train::checkpoint::metric_lines(&metrics)
        .iter()
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=at as u64).collect::<Vec<_>>());
    // Resumed (to two steps past it), it goes on from there.
    let more = format!("trainer.steps={}", at + 2);
    let said = ok(&args(&["--set", "trainer.batch_size=1", "--set", &more, "--resume"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(said.contains("AP50"), "{said}");
    assert_eq!(
        seg_train::checkpoint::read_meta(&run.join("checkpoint.safetensors"))
            .unwrap()
            .step,
        at + 2
    );
}
