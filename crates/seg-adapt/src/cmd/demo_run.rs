//! What the demos (segmentation and detection) keep between invocations.
//!
//! A run's [`Stamp`] holds everything its result depends on: the resolved config, the benchmark
//! instance (data seed and generator version), the methods' version (`seg_core::METHODS_VERSION`)
//! and the digest of the checkpoint it starts from.
//! A finished run (`result.json`, written with its stamp) is reused, and a run killed midway
//! continues from its last checkpoint (`started.txt`), only while the stamp is unchanged;
//! otherwise the run starts over.

use anyhow::Context;
use std::path::Path;

use seg_data::toy;
use seg_labels::fsutil::write_atomic;

/// A 64-bit FNV-1a digest of a file, as hex.
pub(crate) fn digest(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut h = seg_labels::fsutil::Fnv::default();
    h.write(&bytes);
    Ok(h.hex())
}

/// Everything a demo run depends on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamp {
    config: String,
    text: String,
    init_digest: Option<String>,
}

/// `result.json`: a finished run's result with the stamp it was trained under.
#[derive(serde::Serialize, serde::Deserialize)]
struct Finished<R> {
    stamp: String,
    result: R,
}

// Both are seg_train::checkpoint::COMPANIONS: a run starting in the folder passes over them.
const RESULT: &str = "result.json";
const STARTED: &str = "started.txt";

impl Stamp {
    /// The stamp of a run of `config` (its resolved TOML) on benchmark instance `data_seed`,
    /// starting from the checkpoint `init` (a run folder or a checkpoint file), if any.
    pub(crate) fn new(config: String, data_seed: u64, init: Option<&Path>) -> anyhow::Result<Self> {
        let init_digest = match init {
            Some(from) => Some(digest(&seg_train::checkpoint::file_of(from))?),
            None => None,
        };
        let text = format!(
            "{config}\ndata seed {data_seed}, generator version {}, methods version {}\ninit {}",
            toy::GENERATOR_VERSION,
            seg_core::METHODS_VERSION,
            init_digest.as_deref().unwrap_or("none")
        );
        Ok(Self {
            config,
            text,
            init_digest,
        })
    }

    /// The digest of the starting checkpoint, for the run's result.
    pub(crate) fn init_digest(&self) -> Option<String> {
        self.init_digest.clone()
    }

    /// The result of a run in `dir` that finished under this stamp.
    pub(crate) fn finished<R: serde::de::DeserializeOwned>(&self, dir: &Path) -> Option<R> {
        let bytes = std::fs::read(dir.join(RESULT)).ok()?;
        let done: Finished<R> = serde_json::from_slice(&bytes).ok()?;
        (done.stamp == self.text).then_some(done.result)
    }

    /// Prepares `dir` for training under this stamp: `true` when it holds a run killed midway
    /// under the same stamp with a checkpoint of the same config, to resume from; otherwise the
    /// checkpoint, config, metrics or result left there is removed and the run starts over.
    pub(crate) fn start(&self, dir: &Path) -> anyhow::Result<bool> {
        let ckpt = dir.join(seg_train::checkpoint::FILE);
        let same = std::fs::read_to_string(dir.join(STARTED)).is_ok_and(|s| s == self.text)
            && seg_train::checkpoint::load(&ckpt, &candle_core::Device::Cpu)
                .is_ok_and(|c| c.meta.config == self.config);
        if !same {
            // Everything a run writes, so that the run from step 0 finds the folder empty of
            // runs and no evaluation of the earlier one stays beside it.
            let files = seg_train::checkpoint::RUN_FILES.iter().chain(&[
                RESULT,
                seg_train::checkpoint::SKIPPED,
                "report.html",
                "detections.json",
                crate::run::BEFORE_ADABN,
            ]);
            for stale in files.map(|f| dir.join(f)) {
                if stale.exists() {
                    std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
                }
            }
            let evals = dir.join("eval");
            if evals.is_dir() {
                std::fs::remove_dir_all(&evals).with_context(|| format!("removing {}", evals.display()))?;
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(&dir.join(STARTED), self.text.as_bytes())?;
        Ok(same)
    }

    /// Records `result` as the run's in `dir`, under this stamp.
    pub(crate) fn finish<R: serde::Serialize>(&self, dir: &Path, result: &R) -> anyhow::Result<()> {
        let done = Finished {
            stamp: self.text.clone(),
            result,
        };
        write_atomic(&dir.join(RESULT), serde_json::to_string_pretty(&done)?.as_bytes())
            .with_context(|| format!("writing {}", dir.join(RESULT).display()))
    }
}

/// The time behind a demo's results: a demo run again in its folder reuses finished runs, so
/// its own wall time says little of what the results cost.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Runs noted.
    pub(crate) runs: usize,
    /// Of which reused.
    pub(crate) reused: usize,
    /// What the reused runs' training took when they were trained.
    pub(crate) reused_seconds: f64,
}

impl Ledger {
    /// Notes one run (an arm or a pretraining): `reused` from an earlier invocation, where its
    /// training took `seconds`.
    pub(crate) fn note(&mut self, reused: bool, seconds: f64) {
        self.runs += 1;
        if reused {
            self.reused += 1;
            self.reused_seconds += seconds;
        }
    }

    /// The report's sentence on time, given this invocation's `wall` seconds.
    pub(crate) fn describe(&self, wall: f64) -> String {
        match self.reused {
            0 => format!("Total time {wall:.0}s."),
            n => format!(
                "Total time {wall:.0}s in this invocation, which reused {n} of its {} runs from an earlier one in the same folder (their training took {:.0}s then).",
                self.runs, self.reused_seconds
            ),
        }
    }
}

/// Writes a demo's `report.json`, `report.md` and `report.html` into `out` (each to a temporary
/// file, then renamed), prints the markdown and a line naming the files written, `also` (such
/// as a chart beside them) included.
pub(crate) fn write_reports(
    out: &Path,
    json: &serde_json::Value,
    md: &str,
    page: &str,
    also: &[&str],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(json)?.as_bytes())?;
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    write_atomic(&out.join("report.html"), page.as_bytes())?;
    println!("{md}");
    let mut files: Vec<String> = ["report.html", "report.md", "report.json"]
        .iter()
        .chain(also)
        .map(|f| out.join(f).display().to_string())
        .collect();
    let last = files.pop().unwrap_or_default();
    println!("wrote {} and {last}", files.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        score: f64,
    }

    #[test]
    fn a_result_is_reused_only_under_the_same_stamp() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let a = Stamp::new("steps = 10\n".into(), 0, None).unwrap();
        assert!(!a.start(&dir).unwrap(), "a new folder has nothing to resume");
        assert_eq!(a.finished::<R>(&dir), None);
        a.finish(&dir, &R { score: 0.5 }).unwrap();
        assert_eq!(a.finished::<R>(&dir), Some(R { score: 0.5 }));
        let other_seed = Stamp::new("steps = 10\n".into(), 1, None).unwrap();
        let other_config = Stamp::new("steps = 11\n".into(), 0, None).unwrap();
        assert_eq!(other_seed.finished::<R>(&dir), None);
        assert_eq!(other_config.finished::<R>(&dir), None);

        // Another starting checkpoint is another stamp.
        let init = tmp.path().join("init.safetensors");
        std::fs::write(&init, b"one").unwrap();
        let from_one = Stamp::new("steps = 10\n".into(), 0, Some(&init)).unwrap();
        std::fs::write(&init, b"two").unwrap();
        let from_two = Stamp::new("steps = 10\n".into(), 0, Some(&init)).unwrap();
        assert_ne!(from_one, from_two);
        assert_eq!(from_one.finished::<R>(&dir), None);

        // Starting over under another stamp removes the old result (and any checkpoint); with no
        // checkpoint to resume from, the same stamp starts over too.
        std::fs::create_dir_all(dir.join("eval/step_000010")).unwrap();
        std::fs::write(dir.join("eval/step_000010/report.json"), b"{}").unwrap();
        std::fs::write(dir.join("report.html"), b"<html>").unwrap();
        assert!(!other_seed.start(&dir).unwrap());
        assert!(!dir.join(RESULT).exists());
        assert!(
            !dir.join("eval").exists() && !dir.join("report.html").exists(),
            "no evaluation of the earlier run stays"
        );
        assert!(!other_seed.start(&dir).unwrap());
        assert!(Stamp::new("x".into(), 0, Some(&tmp.path().join("missing"))).is_err());
    }

    #[test]
    fn the_ledger_says_what_was_reused_and_what_it_cost() {
        let mut l = Ledger::default();
        l.note(false, 30.0);
        assert_eq!(l.describe(31.4), "Total time 31s.");
        l.note(true, 200.0);
        l.note(true, 100.0);
        let d = l.describe(35.0);
        assert!(
            d.starts_with("Total time 35s in this invocation, which reused 2 of its 3 runs"),
            "{d}"
        );
        assert!(d.contains("took 300s then"), "{d}");
    }
}
