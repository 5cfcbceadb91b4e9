//! The same command on the same inputs writes byte-identical checkpoints and reports on the CPU;
//! `metrics.jsonl` differs only in its timing field.

use std::path::Path;

use super::{ok, p, toy, train_args};

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("images_per_sec");
            v
        })
        .collect()
}

#[test]
fn same_command_same_bytes_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    // The same two commands twice, into the same folder; the first results moved aside.
    let run = dir.path().join("run");
    let runs = [dir.path().join("first"), run.clone()];
    for _ in 0..2 {
        if run.exists() {
            std::fs::rename(&run, &runs[0]).unwrap();
        }
        ok(&train_args(p(&run), p(&gta), p(&cs), "fcn-wild"));
        ok(&[
            "eval",
            "--checkpoint",
            p(&run),
            "--root",
            p(&cs),
            "--out",
            p(&run.join("report")),
        ]);
    }
    let (a, b) = (files(&runs[0]), files(&runs[1]));
    assert_eq!(a.len(), b.len());
    for (fa, fb) in a.iter().zip(&b) {
        assert_eq!(fa.strip_prefix(&runs[0]).unwrap(), fb.strip_prefix(&runs[1]).unwrap());
        if fa.ends_with("metrics.jsonl") {
            continue;
        }
        assert!(
            std::fs::read(fa).unwrap() == std::fs::read(fb).unwrap(),
            "{} differs",
            fa.display()
        );
    }
    assert_eq!(metrics_without_timing(&runs[0]), metrics_without_timing(&runs[1]));
}
