//! End-to-end tests of the `seg-adapt` binary on the quick embedded benchmark: the commands a
//! user runs, and the errors bad input must give before any work starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[cfg(feature = "cuda")]
mod cuda;
mod detection;
mod determinism;
mod matrix;
mod protocol;
mod tidy;

/// The binary under test; `SEG_ADAPT_BIN` points elsewhere when the tests run on another
/// machine than the one that built them (the GPU check).
fn bin() -> PathBuf {
    std::env::var_os("SEG_ADAPT_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_seg-adapt")), PathBuf::from)
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("SEG_ADAPT_LOG", "warn")
        .output()
        .expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn toy() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        ok(&[
            "gen-toy",
            "--out",
            d.path().to_str().unwrap(),
            "--preset",
            "quick",
            "--seed",
            "1",
        ]);
        d
    })
    .path()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A test's owned string with the life of the test process (for argument lists).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The tests' base run config: the small model on GTA5-format source and Cityscapes-format
/// target, batch 2, 64×64 crops, 3 steps; the roots come from `--set`.
fn base_config() -> &'static str {
    static FILE: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            let f = d.path().join("small.toml");
            std::fs::write(
                &f,
                "[data]\nsource_dataset = \"gta5\"\nsource_root = \"\"\ntarget_dataset = \"cityscapes\"\ntarget_root = \"\"\n\n\
                 [model]\nname = \"small\"\n\n[method]\nkind = \"source-only\"\n\n\
                 [augment]\ncrop = [64, 64]\n\n[trainer]\nsteps = 3\nbatch_size = 2\n",
            )
            .unwrap();
            let s = f.to_str().unwrap().to_string();
            (d, s)
        })
        .1
}

/// `train` on the base config with these roots and method; more `--set`s may follow.
fn train_args<'a>(out: &'a str, gta: &'a str, cs: &'a str, method: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        base_config(),
        "--method",
        method,
        "--steps",
        "3",
        "--set",
        leak(format!("data.source_root={gta}")),
        "--set",
        leak(format!("data.target_root={cs}")),
        "--out",
        out,
    ]
}

#[test]
fn inspect_json_counts_the_generated_labels() {
    let out = ok(&[
        "inspect",
        "--dataset",
        "cityscapes",
        "--root",
        p(&toy().join("cityscapes")),
        "--split",
        "val",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["samples"], 30);
    assert_eq!(v["class_pixels"].as_object().unwrap().len(), 19);
    assert!(v["class_pixels"]["road"].as_u64().unwrap() > 0);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn inspect_of_a_split_without_labels_says_so() {
    // Cityscapes' train split as adaptation reads it: camera images, no gtFine.
    let dir = tempfile::tempdir().unwrap();
    let cs = dir.path().join("cityscapes");
    matrix::copy_dir(
        &toy().join("cityscapes/leftImg8bit/train"),
        &cs.join("leftImg8bit/train"),
    );
    let args = [
        "inspect",
        "--dataset",
        "cityscapes",
        "--root",
        p(&cs),
        "--split",
        "train",
    ];
    let text = ok(&args);
    assert!(
        text.contains("no labels in this split") && !text.contains("road"),
        "{text}"
    );
    let mut json = args.to_vec();
    json.push("--json");
    let v: serde_json::Value = serde_json::from_str(&ok(&json)).unwrap();
    assert_eq!(v["labelled"], 0);
    assert!(v["usable"].as_u64().unwrap() > 0);
}

#[test]
fn options_the_task_or_dataset_does_not_read_are_refused() {
    let (gta, cs, out) = (
        toy().join("gta5"),
        toy().join("cityscapes"),
        tempfile::tempdir().unwrap(),
    );
    let cases = [
        ("inspect --dataset gta5 --root GTA --split val", "--split"),
        ("inspect --dataset cityscapes --root CS --classes car", "--classes"),
        (
            "inspect --dataset cityscapes --task detection --root CS --size-policy skip",
            "--size-policy",
        ),
        ("eval --pred CS --root CS --out OUT --classes car", "--classes"),
        (
            "eval --task detection --pred CS --root CS --out OUT --protocol 16",
            "--protocol",
        ),
        (
            "eval --task detection --pred CS --root CS --out OUT --missing-as-wrong",
            "--missing-as-wrong",
        ),
        (
            "eval --checkpoint CS --root CS --out OUT --pred-format trainids",
            "--pred-format",
        ),
        ("inspect --dataset gta5 --root GTA --device cuda", "--device"),
        ("--device cuda:1 gen-toy --out OUT", "--device"),
        ("eval --pred CS --root CS --out OUT --device cuda", "--device"),
        (
            "eval --task detection --pred CS --root CS --out OUT --device cuda",
            "--device",
        ),
    ];
    for (line, flag) in cases {
        let args: Vec<&str> = line
            .split(' ')
            .map(|w| match w {
                "GTA" => p(&gta),
                "CS" => p(&cs),
                "OUT" => p(out.path()),
                w => w,
            })
            .collect();
        let e = err(&args);
        assert!(e.contains(&format!("{flag} is not read here")), "{line}: {e}");
    }
    assert!(!out.path().join("report.json").exists());
}

/// `eval` of the run in `run` on the Cityscapes root `root`, into `out`.
fn checkpoint_eval<'a>(run: &'a Path, root: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec!["eval", "--checkpoint", p(run), "--root", p(root), "--out", p(out)]
}

fn predict_args<'a>(run: &'a Path, input: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec!["predict", "--checkpoint", p(run), "--input", p(input), "--out", p(out)]
}

#[test]
fn train_eval_predict_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    // A run evaluated under the 16-class protocol (as SYNTHIA's presets are): `eval
    // --checkpoint` takes the run's protocol unless told otherwise.
    let mut train = train_args(p(&run_dir), p(&gta), p(&cs), "dann");
    train.extend(["--set", "eval.protocol=16"]);
    let out = ok(&train);
    assert!(out.contains("target val mIoU"), "{out}");
    for f in ["config.toml", "checkpoint.safetensors", "metrics.jsonl"] {
        assert!(run_dir.join(f).exists(), "{f}");
    }
    let ev = dir.path().join("eval");
    let table = ok(&checkpoint_eval(&run_dir, &cs, &ev));
    assert!(table.contains("mIoU"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["protocol"], "16");
    // Written again into the same folder without pictures, the earlier pictures go with the
    // earlier report.
    assert!(ev.join("pictures/sheet.png").exists());
    let ev0 = dir.path().join("eval0");
    matrix::copy_dir(&ev, &ev0);
    std::fs::write(ev0.join("pictures/holiday.png"), b"mine").unwrap();
    let mut a = checkpoint_eval(&run_dir, &cs, &ev0);
    a.extend(["--samples", "0"]);
    ok(&a);
    let left: Vec<_> = std::fs::read_dir(ev0.join("pictures"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["holiday.png"], "the user's own picture stays");
    // A folder holding a user's own report.md (no report.json beside it) is not written into.
    let mine = dir.path().join("notes");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("report.md"), "# my notes\n").unwrap();
    let e = err(&checkpoint_eval(&run_dir, &cs, &mine));
    assert!(e.contains("holds a report.md that no evaluation wrote"), "{e}");
    assert_eq!(std::fs::read_to_string(mine.join("report.md")).unwrap(), "# my notes\n");
    let preds = dir.path().join("pred");
    let val_images = cs.join("leftImg8bit/val");
    ok(&predict_args(&run_dir, &val_images, &preds));
    let ev2 = dir.path().join("eval2");
    ok(&[
        "eval",
        "--pred",
        p(&preds),
        "--root",
        p(&cs),
        "--protocol",
        "16",
        "--out",
        p(&ev2),
    ]);
    let report2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev2.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["miou"], report2["miou"],
        "checkpoint evaluation and prediction-folder evaluation agree"
    );
    let e = err(&[
        "eval",
        "--pred",
        p(&preds),
        "--root",
        p(&cs),
        "--out",
        p(&preds.join("report")),
    ]);
    assert!(e.contains("inside --pred"), "{e}");
    let e = err(&checkpoint_eval(&run_dir, &cs, &run_dir));
    assert!(e.contains("is a run's or a demo's folder"), "{e}");
    // Nor into the run's own evaluations, which metrics.jsonl points at.
    let own = std::fs::read_dir(run_dir.join("eval"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let e = err(&checkpoint_eval(&run_dir, &cs, &own));
    assert!(e.contains("is inside the evaluations of the run"), "{e}");
    // Predictions alike (they replaced the run's evaluation files).
    for out in [&run_dir, &own] {
        let e = err(&predict_args(&run_dir, &val_images, out));
        assert!(e.contains("write the predictions into a folder of its own"), "{e}");
    }
    // And a run, a detector's run or a demo there, which the run's page would take for its own.
    let inner = own.join("mine");
    for args in [
        vec!["train", base_config(), "--out", p(&inner)],
        vec!["train-detector", base_config(), "--out", p(&inner)],
        vec!["demo", "--quick", "--out", p(&inner)],
    ] {
        let e = err(&args);
        assert!(
            e.contains("is inside the evaluations of the run") && e.contains("write the "),
            "{args:?}: {e}"
        );
    }
    assert!(!inner.exists());
    // Beside the run's evaluations (`..` read by name), or under a folder holding only a
    // user's config.toml, an evaluation is written.
    ok(&checkpoint_eval(&run_dir, &cs, &run_dir.join("eval/../eval-b")));
    assert!(run_dir.join("eval-b/report.json").exists());
    let exp = dir.path().join("exp");
    std::fs::create_dir_all(&exp).unwrap();
    std::fs::write(exp.join("config.toml"), "# mine\n").unwrap();
    ok(&checkpoint_eval(&run_dir, &cs, &exp.join("eval/a")));
    // The run's checkpoint file names the run as its folder does.
    let ev3 = dir.path().join("eval3");
    ok(&checkpoint_eval(&run_dir.join("checkpoint.safetensors"), &cs, &ev3));
    let report3: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev3.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["miou"], report3["miou"]);

    // A folder of odd inputs: a linked image is predicted; two inputs with one output name
    // are refused before anything is written; an --out inside --input is refused.
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let image = std::fs::read_dir(cs.join("leftImg8bit/val"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    std::os::unix::fs::symlink(&image, odd.join("linked.png")).unwrap();
    let predict = |input: &Path, out: &Path| -> Vec<String> {
        [
            "predict",
            "--checkpoint",
            p(&run_dir),
            "--input",
            p(input),
            "--out",
            p(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = predict(&odd, &dir.path().join("odd-out"));
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("wrote 1 prediction to"), "{out}");
    assert!(dir.path().join("odd-out/linked_labelIds.png").exists());
    // A user's photos: JPEGs, any case of the extension.
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let jpegs = seg_data::toy::sim10k_path(toy()).join("VOC2012/JPEGImages");
    let jpeg = std::fs::read_dir(&jpegs).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&jpeg, photos.join("photo.JPG")).unwrap();
    let args = predict(&photos, &dir.path().join("photos-out"));
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("wrote 1 prediction to"), "{out}");
    let pred = seg_labels::png_io::read_size(&dir.path().join("photos-out/photo_labelIds.png")).unwrap();
    assert_eq!(pred, seg_labels::png_io::read_size(&jpeg).unwrap());
    std::fs::copy(&image, odd.join("a.png")).unwrap();
    std::fs::copy(&image, odd.join("a_leftImg8bit.png")).unwrap();
    let args = predict(&odd, &dir.path().join("odd-out2"));
    let e = err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        e.contains("a.png") && e.contains("a_leftImg8bit.png") && e.contains("rename one"),
        "{e}"
    );
    assert!(!dir.path().join("odd-out2").exists());
    let args = predict(&odd, &odd.join("preds"));
    let e = err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("inside --input"), "{e}");
}

#[test]
fn split_lists_choose_the_target_images_of_a_run_and_of_its_evaluation() {
    // AdaptSegNet's `cityscapes_list/*.txt`: `city/stem_leftImg8bit.png` per line.
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    let listed = |split: &str, n: usize| -> PathBuf {
        let base = cs.join("leftImg8bit").join(split);
        let mut lines: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(&base)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        lines.sort();
        lines.truncate(n);
        let f = dir.path().join(format!("{split}.txt"));
        std::fs::write(&f, lines.join("\n") + "\n").unwrap();
        f
    };
    let (train_list, val_list) = (listed("train", 6), listed("val", 3));
    let run_dir = dir.path().join("run");
    let mut train = train_args(p(&run_dir), p(&gta), p(&cs), "dann");
    train.extend([
        "--set",
        leak(format!("data.target_train_list={}", p(&train_list))),
        "--set",
        leak(format!("data.target_val_list={}", p(&val_list))),
    ]);
    ok(&train);
    let images = |report: &Path| -> u64 {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
        v["images"].as_u64().unwrap()
    };
    assert_eq!(images(&run_dir.join("eval/step_000003/report.json")), 3);
    // The val list cut between sessions: the resumed run goes on (training is the same) and
    // says its curve now mixes two sets of images.
    let kept = std::fs::read_to_string(&val_list).unwrap();
    std::fs::write(
        &val_list,
        kept.lines().take(2).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let o = run(&["train", "--out", p(&run_dir), "--resume", "--steps", "4"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.contains("now holds 2 images where the run's evaluations so far had 3"),
        "{stderr}"
    );
    assert_eq!(images(&run_dir.join("eval/step_000004/report.json")), 2);
    std::fs::write(&val_list, kept).unwrap();
    let ev = dir.path().join("eval");
    let mut a = checkpoint_eval(&run_dir, &cs, &ev);
    a.extend(["--list", p(&val_list)]);
    ok(&a);
    assert_eq!(images(&ev.join("report.json")), 3);
    // A prediction folder is evaluated on the whole split, as the official evaluator does.
    let e = err(&[
        "eval",
        "--pred",
        p(&ev),
        "--root",
        p(&cs),
        "--list",
        p(&val_list),
        "--out",
        p(&dir.path().join("e2")),
    ]);
    assert!(e.contains("--list is not read here"), "{e}");
    // A line naming an image that is not there stops the evaluation, naming the file.
    let mut text = std::fs::read_to_string(&val_list).unwrap();
    text.push_str("lindau/lindau_999999_000019_leftImg8bit.png\n");
    std::fs::write(&val_list, text).unwrap();
    let e = err(&a);
    assert!(
        e.contains("lindau_999999_000019_leftImg8bit.png") && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn eval_of_a_checkpoint_scores_the_images_the_run_scored() {
    // A val label of another size than its image: a run under `resize-label-nearest` scores it,
    // and so does `eval --checkpoint` of that run (it left the pair out, another number).
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), dir.path().join("cs"));
    matrix::copy_dir(&toy().join("cityscapes"), &cs);
    let label = std::fs::read_dir(cs.join("gtFine/val"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_gtFine_labelIds.png"))
        .unwrap();
    let l = seg_labels::png_io::read_label(&label, seg_labels::LabelEncoding::Ids8).unwrap();
    let (w, h) = (l.width / 2, l.height / 2);
    let half: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .map(|(y, x)| l.data[(2 * y * l.width + 2 * x) as usize] as u8)
        .collect();
    seg_labels::png_io::write_gray8(&label, w, h, &half).unwrap();
    // Its instanceIds halved too, as a label of that size would come: resized with the label.
    let instances = label.with_file_name(
        label
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("_labelIds", "_instanceIds"),
    );
    let i = seg_labels::png_io::read_label(&instances, seg_labels::LabelEncoding::Instance16).unwrap();
    let half: Vec<u16> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .map(|(y, x)| i.data[(2 * y * i.width + 2 * x) as usize])
        .collect();
    seg_labels::png_io::write_gray16(&instances, w, h, &half).unwrap();
    let run_dir = dir.path().join("run");
    let mut a = train_args(p(&run_dir), p(&gta), p(&cs), "source-only");
    a.extend(["--set", "data.size_policy=\"resize-label-nearest\""]);
    ok(&a);
    let json = |f: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap() };
    let trained = json(&run_dir.join("eval/step_000003/report.json"));
    let ev = dir.path().join("ev");
    ok(&checkpoint_eval(&run_dir, &cs, &ev));
    let again = json(&ev.join("report.json"));
    assert_eq!(again["images"], trained["images"]);
    assert_eq!(again["miou"], trained["miou"]);
    // Every val image has its instances, the resized one too: the instance-level scores.
    assert!(trained["instances"].as_u64().is_some_and(|n| n > 0), "{trained}");
    assert!(trained["mean_category_iou"].is_f64(), "{trained}");
    assert_eq!(again["mean_iiou"], trained["mean_iiou"]);
    assert_eq!(again["instances"], trained["instances"]);
}

#[test]
fn bad_input_is_refused_before_training_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    let e = err(&train_args(p(&out), p(&gta), p(&cs), "magic"));
    assert!(e.contains("magic") && e.contains("dann"), "{e}");
    let e = err(&train_args(p(&out), p(&gta), p(&dir.path().join("nowhere")), "dann"));
    assert!(e.contains("nowhere"), "{e}");
    // A tap the model lacks is refused before the data are opened.
    let nowhere = dir.path().join("nowhere");
    let mut a = train_args(p(&out), p(&nowhere), p(&cs), "dann");
    a.extend(["--set", "method.tap=pool4"]);
    let e = err(&a);
    assert!(e.contains("pool4") && !e.contains("nowhere"), "{e}");
    let mut a = train_args(p(&out), p(&gta), p(&cs), "source-only");
    a.extend(["--set", "augment.crop=[60, 60]"]);
    let e = err(&a);
    assert!(e.contains("multiples of the network's stride"), "{e}");
    a.extend(["--set", "augment.crop=[512, 512]"]);
    let e = err(&a);
    assert!(
        e.contains("augment.crop = [512, 512] is larger than every source image") && e.contains("the widest"),
        "{e}"
    );
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[data]\nsource_dataset = \"gta5\"\nsource_rot = \"x\"\n").unwrap();
    let e = err(&["train", p(&cfg), "--out", p(&out)]);
    assert!(e.contains("source_rot") && e.contains("bad.toml"), "{e}");
    // Values no run can train with name their key: a NaN rate saved NaN weights, an infinite
    // scale aborted on a 100 GB allocation, a zero std made every input NaN.
    for (set, key) in [
        ("trainer.lr=nan", "trainer.lr"),
        ("trainer.lr=-1.0", "trainer.lr"),
        ("trainer.lr_power=nan", "trainer.lr_power"),
        ("trainer.groups.segmenter.lr=inf", "trainer.groups.segmenter.lr"),
        ("trainer.optimizer.momentum=1.5", "trainer.optimizer.momentum"),
        ("trainer.prefetch=1000000", "trainer.prefetch"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("augment.base_scale=inf", "augment.base_scale"),
        ("augment.base_scale=100.0", "augment.base_scale"),
        ("augment.scale_range=[0.5, 50.0]", "augment.scale_range"),
        ("augment.std=[0.0, 0.0, 0.0]", "augment.std"),
        ("augment.mean=[nan, 0.0, 0.0]", "augment.mean"),
        // Sizes that aborted on their allocation.
        ("trainer.batch_size=100000000", "trainer.batch_size"),
        ("trainer.target_batch_size=100000000", "trainer.target_batch_size"),
        ("method.hidden=1000000000", "method.hidden"),
        // A fixed-length array with more values kept the first ones without a word.
        ("augment.crop=[64, 64, 99]", "augment.crop has 3 values where 2"),
        ("augment.mean=[0.5, 0.5, 0.5, 7.0]", "augment.mean has 4 values"),
        // An empty path names its key, and a method setting out of range is refused before
        // any file is read.
        ("data.source_root=\"\"", "data.source_root = \"\""),
        ("data.target_val_split=\"\"", "data.target_val_split"),
        ("method.hidden=0", "hidden"),
        // Types in a config's words, not Rust's.
        ("trainer.steps=-5", "expected a whole number of at least 0"),
    ] {
        let mut a = train_args(p(&out), p(&gta), p(&cs), "dann");
        a.extend(["--set", set]);
        let e = err(&a);
        assert!(e.contains(key), "{set}: {e}");
    }
    // A method setting out of range is refused before any data is read: the missing source
    // folder is never reached.
    let nowhere = dir.path().join("nowhere-src");
    let mut a = train_args(p(&out), p(&nowhere), p(&cs), "dann");
    a.extend(["--set", "method.hidden=0"]);
    let e = err(&a);
    assert!(e.contains("hidden") && !e.contains("nowhere-src"), "{e}");
    // The batch too large for its crop is named: here the target's.
    let mut a = train_args(p(&out), p(&gta), p(&cs), "dann");
    a.extend([
        "--set",
        "augment.crop=[2048, 1024]",
        "--set",
        "trainer.target_batch_size=683",
    ]);
    let e = err(&a);
    assert!(e.contains("lower trainer.target_batch_size"), "{e}");
    assert!(!out.join("checkpoint.safetensors").exists());
    // The OS's reason is said once (each error kept it in its message and as its source too).
    let mut a = train_args(p(&out), p(&gta), p(&cs), "source-only");
    a.extend(["--set", "data.source_list=/nonexistent-list.txt"]);
    let e = err(&a);
    assert!(e.contains("cannot read split list"), "{e}");
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    // A run refused after claiming its folder (here, for its data) leaves no folder behind.
    assert!(!out.exists(), "a refused run left {}", out.display());
    // A finished run is never trained over from step 0: its checkpoint, config and metrics stay.
    ok(&train_args(p(&out), p(&gta), p(&cs), "source-only"));
    let kept: Vec<Vec<u8>> = ["checkpoint.safetensors", "config.toml", "metrics.jsonl"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let e = err(&train_args(p(&out), p(&gta), p(&cs), "dann"));
    assert!(e.contains("already holds a run") && e.contains("--resume"), "{e}");
    // A folder another process is writing is refused, even with --resume.
    let held = seg_labels::fsutil::lock_dir(&out).unwrap();
    let mut a = train_args(p(&out), p(&gta), p(&cs), "source-only");
    a.push("--resume");
    let e = err(&a);
    assert!(e.contains("in use by another seg-adapt process"), "{e}");
    drop(held);
    // A config.toml of the user's in --out is not replaced by a run from step 0.
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("config.toml"), "# my notes\n").unwrap();
    let e = err(&train_args(p(&mine), p(&gta), p(&cs), "source-only"));
    assert!(e.contains("already holds config.toml"), "{e}");
    // Nor is a page of the user's, or a dataset a run is pointed into by mistake.
    let page = dir.path().join("page");
    std::fs::create_dir_all(&page).unwrap();
    std::fs::write(page.join("report.html"), "mine").unwrap();
    let e = err(&train_args(p(&page), p(&gta), p(&cs), "source-only"));
    assert!(e.contains("holds no run but other files (`report.html`"), "{e}");
    let e = err(&train_args(p(&cs), p(&gta), p(&cs), "source-only"));
    assert!(e.contains("a run starts in a new or empty folder"), "{e}");
    assert!(
        !cs.join(".lock").exists(),
        "a refused run leaves no lock in a folder not its own"
    );
    assert_eq!(std::fs::read_to_string(page.join("report.html")).unwrap(), "mine");
    assert_eq!(
        std::fs::read_to_string(mine.join("config.toml")).unwrap(),
        "# my notes\n"
    );
    // A run stopped before its first checkpoint resumes from step 0; an empty folder has
    // nothing to resume.
    let early = dir.path().join("early");
    ok(&train_args(p(&early), p(&gta), p(&cs), "source-only"));
    std::fs::remove_file(early.join("checkpoint.safetensors")).unwrap();
    let mut a = train_args(p(&early), p(&gta), p(&cs), "source-only");
    a.push("--resume");
    ok(&a);
    assert!(early.join("checkpoint.safetensors").exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut a = train_args(p(&empty), p(&gta), p(&cs), "source-only");
    a.push("--resume");
    let e = err(&a);
    assert!(e.contains("nothing to resume"), "{e}");
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "the user's folder stays, empty"
    );
    // A demo refused for its arguments leaves nothing in its folder.
    let d = dir.path().join("demo");
    let e = err(&["demo", "--seeds", "0", "--out", p(&d)]);
    assert!(e.contains("--seeds"), "{e}");
    assert!(!d.join("demo-task.txt").exists());
    for (f, bytes) in ["checkpoint.safetensors", "config.toml", "metrics.jsonl"]
        .iter()
        .zip(&kept)
    {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), bytes, "{f}");
    }
}

#[test]
fn output_into_a_closed_pipe_ends_without_a_panic() {
    // The reader is gone before the command prints (`seg-adapt inspect ... | head -0`).
    let mut child = std::process::Command::new(bin())
        .args(["inspect", "--dataset", "gta5", "--root", p(&toy().join("gta5"))])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Output onto a full disk is an error line and a failed exit, not a panic; help too is
    // not a success that said nothing.
    let onto_full_disk = |args: &[&str]| {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = std::process::Command::new(bin())
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !o.status.success() && stderr.contains("No space left on device"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    onto_full_disk(&["inspect", "--dataset", "gta5", "--root", p(&toy().join("gta5"))]);
    onto_full_disk(&["train", "--help"]);
    assert!(ok(&["train", "--help"]).contains("--resume"));
    // An error onto a full standard error: a failed exit, not a panic's 101.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = std::process::Command::new(bin())
        .args(["check", "/nonexistent-config.toml"])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn demo_quick_reports_every_method() {
    if std::env::var("SEG_SKIP_SLOW").is_ok_and(|v| v == "1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo = [
        "demo",
        "--quick",
        "--out",
        p(dir.path()),
        "--seeds",
        "2",
        "--pretrain-steps",
        "2",
        "--steps",
        "2",
    ];
    let out = ok(&demo);
    assert!(out.contains("source-only") && out.contains("cross-city"), "{out}");
    assert!(out.contains("seeds above AdaBN"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2 * seg_adapt::cmd::demo::methods().len());
    for m in seg_adapt::cmd::demo::methods() {
        assert!(v["summary"][m]["mean"].is_number(), "{m}");
    }
    // Paired differences per seed, with a 95% interval around their mean.
    let dann = &v["paired"]["dann"]["vs_adabn"];
    assert_eq!(dann["n"], 2);
    let per_seed = dann["per_seed"].as_array().unwrap();
    let mean = per_seed.iter().map(|d| d[1].as_f64().unwrap()).sum::<f64>() / 2.0;
    assert!((dann["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    let ci = dann["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= mean && mean <= ci[1].as_f64().unwrap());
    assert!(v["paired"]["adabn"]["vs_adabn"].is_null());
    assert_eq!(v["paired"]["adabn"]["vs_source_only"]["n"], 2);
    // Every arm, the oracle included, started from the seed's pretraining run.
    assert!(dir.path().join("runs/pretrain/seed1/checkpoint.safetensors").exists());
    let arm = std::fs::read_to_string(dir.path().join("runs/dann/seed1/config.toml")).unwrap();
    assert!(arm.contains("init_from") && arm.contains("pretrain"), "{arm}");
    let oracle = std::fs::read_to_string(dir.path().join("runs/oracle/seed1/config.toml")).unwrap();
    assert!(oracle.contains("init_from") && oracle.contains("steps = 2"), "{oracle}");
    assert!(dir.path().join("comparison.png").exists());
    // The official evaluator's other means come with each arm (the benchmark has instance
    // maps), and the demo's report shows them.
    for r in runs {
        for k in ["mean_category_iou", "mean_iiou", "mean_category_iiou"] {
            assert!(r[k].is_number(), "{k}: {r}");
        }
        assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| method | category mIoU % | iIoU % | category iIoU % |"),
        "{md}"
    );
    assert!(!md.contains("Evaluation warnings"), "{md}");
    check_page_in_chromium(&dir.path().join("report.html"));
    assert!(dir.path().join("runs/dann/seed0/report.html").exists());
    // Run again, every finished run is reused as it is (its recorded time included), and the
    // benchmark, whole, is not written again.
    let o = run(&demo);
    assert!(o.status.success());
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(!said.contains("writing the embedded benchmark"), "{said}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let runs = again["runs"].as_array().unwrap();
    assert!(runs.iter().all(|r| r["reused"] == true), "{again}");
    let as_trained = |r: &serde_json::Value| {
        serde_json::Value::Object(
            r.as_object()
                .unwrap()
                .clone()
                .into_iter()
                .filter(|(k, _)| k != "reused")
                .collect(),
        )
    };
    assert_eq!(
        runs.iter().map(as_trained).collect::<Vec<_>>(),
        v["runs"].as_array().unwrap().iter().map(as_trained).collect::<Vec<_>>()
    );
    // The report says what the reused runs cost, not only the short wall time of this one.
    assert_eq!(
        again["reused_runs"].as_u64(),
        Some(runs.len() as u64 + 2),
        "the arms and two pretrainings"
    );
    let seconds: f64 = runs.iter().map(|r| r["seconds"].as_f64().unwrap()).sum();
    assert!(again["reused_runs_seconds"].as_f64().unwrap() >= seconds);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains(&format!("reused {} of its {} runs", runs.len() + 2, runs.len() + 2)),
        "{md}"
    );
}

#[test]
fn the_new_methods_train_on_every_source_format_and_deploy_the_evaluated_network() {
    if std::env::var("SEG_SKIP_SLOW").is_ok_and(|v| v == "1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gta, synthia, cs) = seg_data::toy::paths(toy());
    let sources = [("gta5", &gta), ("synthia", &synthia), ("cityscapes", &cs)];
    for m in [
        "dsn",
        "curriculum",
        "two-stream",
        "adaptsegnet",
        "advent-minent",
        "advent",
    ] {
        for (name, root) in sources {
            let run_dir = dir.path().join(format!("{m}-{name}"));
            let mut args = train_args(p(&run_dir), p(root), p(&cs), m);
            args[5] = "2"; // --steps
            args.extend(["--set", leak(format!("data.source_dataset={name}"))]);
            let out = ok(&args);
            assert!(out.contains("target val mIoU"), "{m} on {name}: {out}");
            // The deployed network is the one `eval` rebuilds from the checkpoint: the same
            // mIoU as the run's own last evaluation.
            let ev = run_dir.join("eval-again");
            ok(&["eval", "--checkpoint", p(&run_dir), "--root", p(&cs), "--out", p(&ev)]);
            let again: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ev.join("report.json")).unwrap()).unwrap();
            let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
            let last = metrics
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v["eval"]["miou"].as_f64())
                .unwrap();
            assert_eq!(again["miou"].as_f64().unwrap(), last, "{m} on {name}");
        }
    }
}

/// Checks a report page: every embedded picture is a PNG, every chart has marks, and headless
/// Chromium renders it to a non-blank screenshot without a console message. Under CI (`CI`
/// set) Chromium must be installed (`.ci/run` installs it); elsewhere the rendering is skipped
/// with a note when it is missing.
fn check_page_in_chromium(page: &Path) {
    let html = std::fs::read_to_string(page).unwrap();
    let imgs = html.matches("<img").count();
    assert!(imgs >= 1, "no picture in {}", page.display());
    // "iVBORw0KGgo" is the PNG signature in base64.
    assert_eq!(html.matches("src=\"data:image/png;base64,iVBORw0KGgo").count(), imgs);
    let charts: Vec<&str> = html.split("<svg class=\"chart\"").skip(1).collect();
    assert!(charts.len() >= 2, "{} charts", charts.len());
    for c in &charts {
        let body = &c[..c.find("</svg>").unwrap()];
        assert!(
            body.contains("class=\"mark\"") && !body.contains("no data"),
            "an empty chart: {body:.200}"
        );
    }
    assert!(html.contains(" %</td>"), "mIoU shown with its unit");
    let found = ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(chromium) = found else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is missing (.ci/run installs it from Debian's packages)"
        );
        eprintln!("note: Chromium not installed; the page was checked without rendering it");
        return;
    };
    // Beside the page would put a file the demo does not write into its folder.
    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("screenshot.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    assert!(
        !log.contains("CONSOLE(") && !log.contains("Failed to load resource"),
        "console messages: {log}"
    );
    let img = seg_labels::png_io::read_rgb(&shot).unwrap();
    let mut colors: Vec<[u8; 3]> = img.data.chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
    colors.sort_unstable();
    colors.dedup();
    assert!(
        colors.len() > 50,
        "a nearly blank screenshot ({} colours)",
        colors.len()
    );
}

#[test]
fn commands_writing_into_one_folder_refuse_one_another() {
    // An evaluation, a prediction or a benchmark written into a folder another process holds
    // would mix the two commands' files (a report of one beside the pictures of the other).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let held = seg_labels::fsutil::lock_dir(&out).unwrap();
    let cs = dir.path().join("cs");
    let missing = dir.path().join("run");
    for args in [
        vec!["eval", "--root", p(&cs), "--pred", p(&cs), "--out", p(&out)],
        vec![
            "eval",
            "--task",
            "detection",
            "--root",
            p(&cs),
            "--pred",
            p(&cs),
            "--out",
            p(&out),
        ],
        vec![
            "predict",
            "--checkpoint",
            p(&missing),
            "--input",
            p(&cs),
            "--out",
            p(&out),
        ],
        vec!["gen-toy", "--out", p(&out), "--preset", "quick"],
    ] {
        let e = err(&args);
        assert!(e.contains("in use by another seg-adapt process"), "{args:?}: {e}");
    }
    drop(held);
    // A demo holds its benchmark's folder too, and is refused while another process holds it.
    for task in ["segmentation", "detection"] {
        let demo = dir.path().join(task);
        let data = seg_labels::fsutil::lock_dir(&demo.join("data")).unwrap();
        let e = err(&["demo", "--quick", "--task", task, "--out", p(&demo)]);
        assert!(e.contains("data is in use by another seg-adapt process"), "{e}");
        drop(data);
        // Nor does anything else write into a demo's folder, such as an arm it has not reached.
        let arm = demo.join("runs/dann/seed0");
        for args in [
            vec!["eval", "--root", p(&cs), "--pred", p(&cs), "--out", p(&arm)],
            vec!["train", base_config(), "--out", p(&arm)],
        ] {
            let e = err(&args);
            assert!(e.contains("is inside the demo in"), "{args:?}: {e}");
        }
        assert!(!arm.exists());
    }
    // Free again, a refused evaluation leaves no folder behind.
    let e = err(&["eval", "--root", p(&cs), "--pred", p(&cs), "--out", p(&out)]);
    assert!(!e.contains("in use"), "{e}");
    assert!(!out.exists());
}

/// A child process killed when dropped (a test that fails midway leaves no run behind).
#[cfg(unix)]
pub(crate) struct Reaped(pub Option<std::process::Child>);

#[cfg(unix)]
impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `seg-adapt args` and, once its run folder's `metrics.jsonl` logs its first step (the
/// training loop runs), sends it `signal`; its exit code and standard error.
#[cfg(unix)]
pub(crate) fn signalled_once_training(args: &[String], run: &Path, signal: libc::c_int) -> (Option<i32>, String) {
    let child = Command::new(bin())
        .args(args)
        .env("SEG_ADAPT_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(Some(child));
    let metrics = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|t| t.contains("\"step\":1,")) {
        assert!(started.elapsed().as_secs() < 300, "the run never logged a step");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pid = child.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: signals the child this test started and still holds (not yet waited for).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_training_writes_the_checkpoint_of_the_step_under_way() {
    // With no periodic checkpoint, Ctrl-C used to lose every step. Now the step under way
    // finishes, its checkpoint is written and the command exits 130 (many steps: the signal
    // lands long before the last).
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    let cut = dir.path().join("cut");
    let mut args: Vec<String> = train_args(p(&cut), p(&gta), p(&cs), "dann")
        .iter()
        .map(|s| s.to_string())
        .collect();
    args[5] = "100000".into();
    for set in [
        "augment.crop=[32,32]",
        "trainer.batch_size=1",
        "trainer.log_every=1",
        "trainer.checkpoint_every=0",
    ] {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    let (code, stderr) = signalled_once_training(&args, &cut, libc::SIGINT);
    assert_eq!(code, Some(130), "{stderr}");
    let at = seg_train::checkpoint::read_meta(&cut.join("checkpoint.safetensors"))
        .unwrap()
        .step;
    assert!(at >= 1, "{at}");
    assert!(
        stderr.contains(&format!("interrupted at step {at}:")) && stderr.contains("with --resume continues the run"),
        "{stderr}"
    );
    // Every step up to it logged once, and the report page written.
    let steps: Vec<u64> = seg_train::checkpoint::metric_lines(&cut.join("metrics.jsonl"))
        .iter()
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=at as u64).collect::<Vec<_>>());
    assert!(cut.join("report.html").is_file());
    // The checkpoint is a run's like any other: a resume takes it (a change of batch is
    // refused by its key, as for a periodic checkpoint).
    let mut resume = args.clone();
    resume.extend(["--set".into(), "trainer.batch_size=2".into(), "--resume".into()]);
    let e = err(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        e.contains("`trainer.batch_size`") && e.contains("its checkpoint was trained with"),
        "{e}"
    );
}
