//! The malformed-input matrix (docs/reliability.md, "Malformed input"): each case breaks a copy of the quick
//! benchmark and checks the message the user sees. PNG-level rows (bit depths, colour labels,
//! bombs) are tested in `seg-labels`; config rows in `main.rs`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{bin, err, leak, ok, p, toy, train_args};

/// A GTA5-layout copy of the first `n` source pairs.
fn gta_copy(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("gta5");
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        for i in 1..=n {
            let f = format!("{i:05}.png");
            std::fs::copy(toy().join("gta5").join(sub).join(&f), root.join(sub).join(&f)).unwrap();
        }
    }
    (dir, root)
}

fn inspect_json(root: &Path) -> serde_json::Value {
    let out = ok(&["inspect", "--dataset", "gta5", "--root", p(root), "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// `(file, reason)` of every problem `inspect` lists.
fn problems(v: &serde_json::Value) -> Vec<(String, String)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap().to_string(),
                p["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn missing_pairs_and_symlink_loops_are_listed_with_the_os_reason() {
    let (_d, root) = gta_copy(4);
    std::fs::remove_file(root.join("labels/00002.png")).unwrap();
    std::os::unix::fs::symlink("loop.png", root.join("images/loop.png")).unwrap();
    // A looping directory link too: never followed, never hangs.
    std::os::unix::fs::symlink("..", root.join("images/up")).unwrap();
    // A macOS companion file is hidden, so no sample (as for the official scripts' glob).
    std::fs::write(root.join("images/._00003.png"), b"AppleDouble").unwrap();
    let v = inspect_json(&root);
    let probs = problems(&v);
    assert!(
        probs.iter().any(|(f, r)| f.ends_with("images/00002.png")
            && r.contains("no label file for this image")
            && r.contains("labels/00002.png")),
        "{probs:?}"
    );
    assert!(
        probs
            .iter()
            .any(|(f, r)| f.ends_with("images/loop.png") && r.contains("Too many levels of symbolic links")),
        "{probs:?}"
    );
    assert_eq!(probs.len(), 2, "{probs:?}");
}

#[test]
fn non_utf8_file_names_are_read_like_any_other() {
    let (_d, root) = gta_copy(2);
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    for sub in ["images", "labels"] {
        std::fs::copy(root.join(sub).join("00001.png"), root.join(sub).join(odd)).unwrap();
    }
    let v = inspect_json(&root);
    assert_eq!(v["samples"], 3, "{v}");
    assert!(problems(&v).is_empty(), "{v}");
    // A root whose own path is not UTF-8 works too.
    let parent = root.parent().unwrap().join(std::ffi::OsStr::from_bytes(b"d\xfcr"));
    std::fs::rename(&root, &parent).unwrap();
    let out = Command::new(bin())
        .args(["inspect", "--dataset", "gta5", "--json", "--root"])
        .arg(&parent)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A setting is TOML text: a path in it that is not UTF-8 is refused, naming the argument.
    let mut set = std::ffi::OsString::from("data.source_root=");
    set.push(&parent);
    let out = Command::new(bin())
        .args(["train", "--out"])
        .arg(parent.with_file_name("run"))
        .arg("--set")
        .arg(&set)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("for '--set <KEY=VALUE>'") && e.contains("is not UTF-8"),
        "{e}"
    );
}

#[test]
fn duplicate_sample_names_are_refused_naming_both_files() {
    let (_d, root) = gta_copy(3);
    std::fs::copy(root.join("images/00003.png"), root.join("images/00003.PNG")).unwrap();
    let e = err(&["inspect", "--dataset", "gta5", "--root", p(&root)]);
    assert!(
        e.contains("duplicate sample name `00003`") && e.contains("00003.png") && e.contains("00003.PNG"),
        "{e}"
    );
    std::fs::remove_file(root.join("images/00003.PNG")).unwrap();
    let list = root.join("list.txt");
    std::fs::write(&list, "00001.png\n00002.png\n00001.png\n").unwrap();
    let e = err(&["inspect", "--dataset", "gta5", "--root", p(&root), "--list", p(&list)]);
    assert!(e.contains("list.txt: names `00001` twice"), "{e}");
    // Two lines naming two files of one sample name (`00001.png`, `00001.PNG`).
    std::fs::copy(root.join("images/00001.png"), root.join("images/00001.PNG")).unwrap();
    std::fs::write(&list, "00001.png\n00001.PNG\n").unwrap();
    let e = err(&["inspect", "--dataset", "gta5", "--root", p(&root), "--list", p(&list)]);
    assert!(
        e.contains("duplicate sample name `00001`") && e.contains("list.txt names it twice"),
        "{e}"
    );
}

/// Effective user id, from /proc (no libc binding needed).
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn unreadable_files_name_the_file_and_the_permission() {
    let (d, root) = gta_copy(3);
    let label = root.join("labels/00002.png");
    std::fs::set_permissions(&label, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["inspect", "--dataset", "gta5", "--json", "--root", p(&root)]);
    if euid() == 0 {
        // root reads anything: run the check as `nobody`, who can walk the copy but not the file.
        for dir in [d.path(), root.as_path(), &root.join("images"), &root.join("labels")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for f in std::fs::read_dir(root.join("images")).unwrap() {
            std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(root.join("labels/00001.png"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(root.join("labels/00003.png"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        // The binary itself must be reachable by `nobody`.
        let exe = bin();
        assert!(
            exe.ancestors()
                .skip(1)
                .all(|a| a.as_os_str().is_empty()
                    || std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)),
            "{} is not reachable by other users; cannot run the permission check",
            exe.display()
        );
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs = problems(&v);
    assert!(
        probs
            .iter()
            .any(|(f, r)| f.ends_with("labels/00002.png") && r.contains("Permission denied")),
        "{probs:?}"
    );
}

#[test]
fn bad_toml_and_unknown_model_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, "[trainer]\nsteps = 3\nlr = [oops\n").unwrap();
    let e = err(&["train", p(&cfg), "--out", p(&dir.path().join("o"))]);
    assert!(e.contains("run.toml") && e.contains("line 3"), "{e}");
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    let out = dir.path().join("o2");
    let mut args = train_args(p(&out), p(&gta), p(&cs), "source-only");
    args.extend(["--set", "model.name=resnet50"]);
    let e = err(&args);
    assert!(
        e.contains("resnet50") && e.contains("vgg16-fcn8s") && e.contains("small"),
        "{e}"
    );
}

/// Runs `script` in a private mount namespace (`unshare -rm`) where `mnt` is a tmpfs of
/// `size`; returns (success, stdout, stderr). `None` when this machine refuses namespaces.
fn with_tiny_disk(mnt: &Path, size: &str, script: &str) -> Option<(bool, String, String)> {
    let full = format!(
        "mount -t tmpfs -o size={size} none '{}' || exit 97\n{script}",
        mnt.display()
    );
    let out = Command::new("unshare").args(["-rm", "sh", "-c", &full]).output().ok()?;
    if out.status.code() == Some(97)
        || (!out.status.success() && out.stdout.is_empty() && out.stderr.starts_with(b"unshare:"))
    {
        eprintln!(
            "SKIPPED: no private mount namespace here ({}); the full-disk path is still covered by \
             seg-labels' fsutil tests with an injected ENOSPC",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn a_full_disk_while_writing_a_checkpoint_or_report_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    // A finished run to evaluate, on a normal disk.
    let run_dir = dir.path().join("run");
    ok(&train_args(p(&run_dir), p(&gta), p(&cs), "source-only"));
    let mnt = dir.path().join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let exe = bin();
    // Training whose checkpoint does not fit: the error names the file and the reason, and the
    // disk holds no partial checkpoint or temp file afterwards.
    let args = train_args(&format!("{}/run", mnt.display()), p(&gta), p(&cs), "source-only")
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "SEG_ADAPT_LOG=warn '{}' {args} 2>&1; echo \"exit=$?\"; ls -A '{}/run'",
        exe.display(),
        mnt.display()
    );
    let Some((_, out, _)) = with_tiny_disk(&mnt, "24k", &script) else {
        return;
    };
    assert!(
        out.contains("checkpoint.safetensors: cannot write: No space left on device"),
        "{out}"
    );
    assert_eq!(out.matches("No space left").count(), 1, "the reason once: {out}");
    assert!(!out.contains("exit=0"), "{out}");
    assert_eq!(
        listing(&out),
        [".lock", "config.toml", "metrics.jsonl"],
        "no partial checkpoint or temp file (the folder's lock aside): {out}"
    );
    // Evaluation whose report does not fit: same.
    let script = format!(
        "SEG_ADAPT_LOG=warn '{}' eval --checkpoint '{}' --root '{}' --out '{}/ev' 2>&1; echo \"exit=$?\"; ls -A '{}/ev'",
        exe.display(),
        p(&run_dir),
        p(&cs),
        mnt.display(),
        mnt.display()
    );
    let Some((_, out, _)) = with_tiny_disk(&mnt, "8k", &script) else {
        return;
    };
    assert!(out.contains("cannot write: No space left on device"), "{out}");
    assert!(out.contains("/ev/"), "{out}");
    assert!(!out.contains("exit=0"), "{out}");
    assert!(
        listing(&out).iter().all(|f| !f.ends_with(".tmp")),
        "a temp file was left: {out}"
    );
}

/// The `ls -A` lines after the `exit=` line.
fn listing(out: &str) -> Vec<&str> {
    out.lines().skip_while(|l| !l.starts_with("exit=")).skip(1).collect()
}

#[test]
fn unusable_pairs_are_left_out_named_and_counted() {
    let (dir, root) = gta_copy(6);
    // A real GTA5 quirk: a label of another size than its image.
    seg_labels::png_io::write_gray8(&root.join("labels/00003.png"), 64, 32, &[7u8; 64 * 32]).unwrap();
    let cs = toy().join("cityscapes");
    let train = |out: &Path, extra: &[&str]| {
        let mut a = train_args(p(out), p(&root), p(&cs), "source-only");
        a.extend(extra);
        super::run(&a)
    };
    let left_out = |out: &Path| -> Option<serde_json::Value> {
        std::fs::read_to_string(out.join("skipped.json"))
            .ok()
            .map(|t| serde_json::from_str(&t).unwrap())
    };

    // Default size policy: left out before training, named once, counted.
    let out = dir.path().join("skip");
    let o = train(&out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("00003")).count(), 1, "{stderr}");
    assert!(stderr.contains("left out") && stderr.contains("64x32"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal: {stderr}"
    );
    let v = left_out(&out).unwrap();
    assert_eq!(v["source"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["source"][0]["name"], "00003");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["left_out"]["source"], 1, "{first}");
    // Resumed after the pair was mended, the run would index another dataset than it started
    // with: refused, naming the sample, with the run's record kept.
    let label = root.join("labels/00003.png");
    let broken = std::fs::read(&label).unwrap();
    std::fs::copy(root.join("labels/00002.png"), &label).unwrap();
    let e = err(&{
        let mut a = train_args(p(&out), p(&root), p(&cs), "source-only");
        a.extend(["--resume", "--set", "trainer.steps=4"]);
        a
    });
    assert!(
        e.contains("not those the run left out when it started") && e.contains("no longer: source `00003`"),
        "{e}"
    );
    assert_eq!(left_out(&out).unwrap()["source"][0]["name"], "00003");
    std::fs::write(&label, broken).unwrap();

    // resize-label-nearest keeps the pair.
    let out = dir.path().join("resize");
    let o = train(&out, &["--set", "data.size_policy=resize-label-nearest"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(left_out(&out).is_none());

    // An image that is not a PNG: an error naming it before training (error_policy = "fail"),
    // or left out and named with error_policy = "skip".
    std::fs::write(root.join("images/00005.png"), b"not a png").unwrap();
    // A label cut after its header opens as a PNG but does not decode: under "skip" it is left
    // out before training too, not skipped each time it is drawn.
    let cut = std::fs::read(root.join("labels/00004.png")).unwrap();
    std::fs::write(root.join("labels/00004.png"), &cut[..cut.len() / 2]).unwrap();
    let out = dir.path().join("fail");
    let e = err(&train_args(p(&out), p(&root), p(&cs), "source-only"));
    assert!(e.contains("00005.png") && e.contains("not a valid PNG"), "{e}");
    assert!(!out.join("checkpoint.safetensors").exists());
    let out = dir.path().join("skip-errors");
    let o = train(&out, &["--set", "data.error_policy=skip"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = left_out(&out).unwrap()["source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["00003", "00004", "00005"]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["left_out"]["source"], 3, "{first}");
}

#[test]
fn a_resume_over_a_dataset_that_changed_on_disk_is_refused() {
    let (dir, root) = gta_copy(6);
    let cs = toy().join("cityscapes");
    let out = dir.path().join("run");
    ok(&train_args(p(&out), p(&root), p(&cs), "source-only"));
    let resume = {
        let mut a = train_args(p(&out), p(&root), p(&cs), "source-only");
        a.extend(["--resume", "--set", "trainer.steps=4"]);
        a
    };
    // A pair deleted (not left out: gone) shifts every loader position after it.
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    for sub in ["images", "labels"] {
        std::fs::rename(root.join(sub).join("00006.png"), moved.join(format!("{sub}.png"))).unwrap();
    }
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let e = err(&resume);
    assert!(
        e.contains("training dataset is not the one the checkpoint's loader position indexes")
            && e.contains("5 samples now, 6 then"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("checkpoint.safetensors")).unwrap(), before);
    // Put back, the run resumes.
    for sub in ["images", "labels"] {
        std::fs::rename(moved.join(format!("{sub}.png")), root.join(sub).join("00006.png")).unwrap();
    }
    ok(&resume);
}

#[test]
fn a_run_refused_at_set_up_or_stopped_before_its_first_checkpoint_does_not_hold_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    let out = dir.path().join("run");
    let args = |extra: &[&'static str]| {
        let mut a = train_args(p(&out), p(&gta), p(&cs), "dann");
        a.extend(extra);
        a
    };
    // A group the method does not have: refused once the method is built, with nothing left.
    let e = err(&args(&["--set", "trainer.groups.generator.lr=1e-3"]));
    assert!(e.contains("trainer.groups.generator"), "{e}");
    assert!(!out.exists(), "the folder the command created is gone");
    // Target images that do not decode past their header stop a run under "fail" when first
    // drawn, before it trained anything: the folder is left as the command found it (none), so
    // that the same command runs once the data is mended.
    let cut = dir.path().join("cut");
    copy_dir(&cs, &cut);
    for city in std::fs::read_dir(cut.join("leftImg8bit/train")).unwrap() {
        for f in std::fs::read_dir(city.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let bytes = std::fs::read(&f).unwrap();
            std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        }
    }
    let at = |root: &'static str| {
        let mut a = train_args(p(&out), p(&gta), root, "dann");
        a.extend(["--set", "trainer.steps=1"]);
        a
    };
    let e = err(&at(leak(p(&cut).to_string())));
    assert!(e.contains("_leftImg8bit.png") && e.contains("not a valid PNG"), "{e}");
    assert!(!out.exists(), "nothing of a run that trained nothing is kept");
    ok(&at(leak(p(&cs).to_string())));
    std::fs::remove_dir_all(&out).unwrap();
    // A run stopped by a NaN loss after a step but before its first checkpoint: `--resume`
    // with a mended config starts it over (nothing of it is kept that the new config would
    // have to agree with).
    let e = err(&args(&[
        "--set",
        "trainer.lr=1e30",
        "--set",
        "trainer.checkpoint_every=0",
        "--set",
        "trainer.log_every=1",
    ]));
    assert!(
        e.contains("not finite") || e.contains("NaN") || e.contains("infinite"),
        "{e}"
    );
    assert!(out.join("config.toml").exists() && !out.join("checkpoint.safetensors").exists());
    ok(&args(&["--resume"]));
    assert!(out.join("checkpoint.safetensors").exists());
    // With a checkpoint, a resume that changes the method is refused naming `method.kind`.
    let mut other = train_args(p(&out), p(&gta), p(&cs), "fcn-wild");
    other.push("--resume");
    let e = err(&other);
    assert!(e.contains("change `method.kind`"), "{e}");
    let e = err(&["train-detector", "--out", p(&out), "--resume"]);
    assert!(e.contains("is a segmentation run's folder"), "{e}");
    // The curriculum's steps count its stage before training too: a resume towards fewer says
    // how the count splits.
    let cur = dir.path().join("curriculum");
    let mut c = train_args(p(&cur), p(&gta), p(&cs), "curriculum");
    c.extend(["--set", "method.pretrain_steps=2"]);
    ok(&c);
    c.push("--resume");
    assert_eq!((c[4], c[5]), ("--steps", "3"));
    c[5] = "1";
    let e = err(&c);
    assert!(
        e.contains("at step 5, past the 3 steps asked for (2 of the stage before training and 1 training step)")
            && e.contains("of at least 3"),
        "{e}"
    );
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_broken_val_split_stops_the_run_before_training_or_is_evaluated_without_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cs = dir.path().join("cityscapes");
    copy_dir(&toy().join("cityscapes"), &cs);
    let gta = toy().join("gta5");
    // A val label cut after its header: it opens, but does not decode.
    let city = std::fs::read_dir(cs.join("gtFine/val"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut labels: Vec<PathBuf> = std::fs::read_dir(&city)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.to_string_lossy().ends_with("_gtFine_labelIds.png"))
        .collect();
    labels.sort();
    let bytes = std::fs::read(&labels[0]).unwrap();
    std::fs::write(&labels[0], &bytes[..bytes.len() / 2]).unwrap();
    let name = labels[0].file_name().unwrap().to_string_lossy().into_owned();
    // A val label whose camera image is gone: named in the report, not silently dropped.
    let orphan = labels[2].file_name().unwrap().to_string_lossy().into_owned();
    let stem = orphan.strip_suffix("_gtFine_labelIds.png").unwrap();
    let city_name = city.file_name().unwrap();
    std::fs::remove_file(
        cs.join("leftImg8bit/val")
            .join(city_name)
            .join(format!("{stem}_leftImg8bit.png")),
    )
    .unwrap();
    // A val label of another size than its image: left out under the default size policy, and
    // the evaluation's report says so.
    let small = labels[3].file_name().unwrap().to_string_lossy().into_owned();
    seg_labels::png_io::write_gray8(&labels[3], 8, 4, &[7u8; 32]).unwrap();

    // error_policy = "skip": the run finishes, evaluated without it, and its report names it.
    let out = dir.path().join("skip");
    let mut a = train_args(p(&out), p(&gta), p(&cs), "source-only");
    a.extend(["--set", "data.error_policy=skip"]);
    ok(&a);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/step_000003/report.json")).unwrap()).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains(&name) && warnings.contains("left out"), "{warnings}");
    assert!(
        warnings.contains(&orphan) && warnings.contains("without its camera image"),
        "{warnings}"
    );
    assert!(warnings.contains(&small) && warnings.contains("8x4"), "{warnings}");
    let skipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("skipped.json")).unwrap()).unwrap();
    let val: Vec<&str> = skipped["val"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        val.len() == 2 && val.iter().any(|r| r.contains(&name)) && val.iter().any(|r| r.contains(&small)),
        "{val:?}"
    );
    // error_policy = "fail": the run stops naming the file.
    let e = err(&train_args(p(&dir.path().join("fail")), p(&gta), p(&cs), "source-only"));
    assert!(e.contains(&name), "{e}");

    // A val image without its label: `inspect` lists it with the file it expected.
    std::fs::remove_file(&labels[1]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "inspect",
        "--dataset",
        "cityscapes",
        "--root",
        p(&cs),
        "--split",
        "val",
        "--json",
    ]))
    .unwrap();
    let probs = problems(&v);
    let missing = labels[1].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        probs
            .iter()
            .any(|(_, r)| r.contains("no label file") && r.contains(&missing)),
        "{probs:?}"
    );

    // A val split that cannot be opened stops the run before its first step, under either
    // policy (it used to train without evaluation and exit 0).
    std::fs::remove_dir_all(cs.join("gtFine/val")).unwrap();
    for policy in ["fail", "skip"] {
        let out = dir.path().join(format!("no-val-{policy}"));
        let mut a = train_args(p(&out), p(&gta), p(&cs), "source-only");
        a.extend(["--set", leak(format!("data.error_policy={policy}"))]);
        let e = err(&a);
        assert!(e.contains("val split") && e.contains("gtFine"), "{policy}: {e}");
        assert!(!out.join("checkpoint.safetensors").exists());
    }
}

#[test]
fn check_reads_every_file_times_steps_and_fails_when_the_run_would_stop() {
    let (dir, root) = gta_copy(6);
    let cs = toy().join("cityscapes");
    let cfg = dir.path().join("run.toml");
    let write = |policy: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[data]\nsource_dataset = \"gta5\"\nsource_root = {:?}\ntarget_dataset = \"cityscapes\"\ntarget_root = {:?}\nerror_policy = \"{policy}\"\n\n[model]\nname = \"small\"\n\n[method]\nkind = \"dann\"\n\n[augment]\ncrop = [64, 64]\n\n[trainer]\nsteps = 1000\nbatch_size = 2\n",
                p(&root),
                p(&cs)
            ),
        )
        .unwrap()
    };
    write("fail");
    // The scratch folder of an earlier check killed while timing (its process gone) is
    // removed; that of a process still running stays.
    let temp = tempfile::tempdir().unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let stale = temp.path().join(format!("seg-adapt-check-{gone_pid}"));
    let alive = temp.path().join(format!("seg-adapt-check-{}", std::process::id()));
    for d in [&stale, &alive] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("checkpoint.safetensors"), b"left behind").unwrap();
    }
    let o = std::process::Command::new(super::bin())
        .args(["check", p(&cfg), "--time-steps", "1"])
        .env("TMPDIR", temp.path())
        .env("SEG_ADAPT_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stale.exists() && alive.exists());
    assert_eq!(
        std::fs::read_dir(temp.path()).unwrap().count(),
        1,
        "check's own scratch folder is removed"
    );
    let out = ok(&["check", p(&cfg), "--time-steps", "2"]);
    assert!(
        out.contains("source: gta5") && out.contains("6 samples, 6 usable, 0 problems"),
        "{out}"
    );
    assert!(
        out.contains("target-train: cityscapes") && out.contains("val: cityscapes"),
        "{out}"
    );
    assert!(out.contains("s/step") && out.contains("1000 steps: about"), "{out}");
    assert!(
        out.contains("trainable parameters: discriminator") && out.contains("MB with optimiser state"),
        "{out}"
    );
    assert!(out.contains("kind = \"dann\""), "the resolved config: {out}");
    assert!(
        out.contains("# not written above, at their defaults: trainer.prefetch = 4, trainer.precision = \"f32\""),
        "{out}"
    );
    // The curriculum's stage 1 and its training steps are timed apart, and both are counted.
    let curriculum = dir.path().join("curriculum.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &curriculum,
        text.replace("kind = \"dann\"", "kind = \"curriculum\"\npretrain_steps = 50"),
    )
    .unwrap();
    let out = ok(&["check", p(&curriculum), "--time-steps", "1"]);
    assert!(out.contains("1 step of the 50-step stage before training"), "{out}");
    // Both stages train the same parameters: said once.
    assert_eq!(out.matches("trainable parameters:").count(), 1, "{out}");
    assert!(
        out.contains("1 training step on") && out.contains("1000 steps and the 50 before them: about"),
        "{out}"
    );

    std::fs::write(root.join("images/00004.png"), b"").unwrap();
    let e = err(&["check", p(&cfg), "--time-steps", "0"]);
    assert!(e.contains("would stop the run") && e.contains("00004.png"), "{e}");
    // A file cut after its header stops a run only when drawn; the empty one stops it before
    // its first step, and that is the one named, whichever sorts first.
    let whole = std::fs::read(root.join("images/00002.png")).unwrap();
    std::fs::write(root.join("images/00002.png"), &whole[..whole.len() - 20]).unwrap();
    let e = err(&["check", p(&cfg), "--time-steps", "0"]);
    assert!(
        e.contains("2 file(s) would stop the run")
            && e.contains("before its first step, on")
            && e.contains("00004.png: "),
        "{e}"
    );
    std::fs::write(root.join("images/00002.png"), &whole).unwrap();
    // What the model settles is refused before any file is decoded, as `train` refuses it.
    for (set, named) in [
        ("model.init_from=/nowhere/run", "/nowhere/run"),
        ("method.tap=pool4", "pool4"),
    ] {
        let e = err(&["check", p(&cfg), "--time-steps", "0", "--set", set]);
        assert!(
            e.contains("before its first step") && e.contains(named) && !e.contains("00004.png"),
            "{set}: {e}"
        );
    }
    // `--set` checks the run as `train --set` would train it.
    let out = ok(&["check", p(&cfg), "--time-steps", "0", "--set", "data.error_policy=skip"]);
    assert!(out.contains("00004.png") && out.contains("left out"), "{out}");
    write("skip");
    let out = ok(&["check", p(&cfg), "--time-steps", "0"]);
    assert!(out.contains("00004.png") && out.contains("left out"), "{out}");
    // Without timing, what `train` refuses before its first step is refused too.
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (from, to, named) in [
        (
            "crop = [64, 64]",
            "crop = [100, 64]",
            "multiples of the network's stride",
        ),
        (
            "kind = \"dann\"\n\n[augment]\ncrop = [64, 64]",
            "kind = \"advent\"\n\n[augment]\ncrop = [64, 16]",
            "method `advent` needs at least 32 pixels a side",
        ),
        (
            "[model]\nname = \"small\"",
            "[model]\nname = \"small\"\ninit_from = \"/nowhere\"",
            "/nowhere",
        ),
        (
            "[trainer]",
            "[trainer.groups.generator]\nlr = 1e-4\n[trainer]",
            "has no such parameter group",
        ),
    ] {
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
        let e = err(&["check", p(&cfg), "--time-steps", "0"]);
        assert!(e.contains(named) && e.contains("before its first step"), "{e}");
    }
}
