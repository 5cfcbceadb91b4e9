//! A sample a run leaves out before it starts (its error or size policy says so), as both the
//! segmentation and the detection readers report it and a run folder's `skipped.json` keeps it.

use std::path::{Path, PathBuf};

/// A sample left out of a run before it started, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeftOut {
    pub name: String,
    /// Written lossily (a file name that is not UTF-8 cannot be JSON), read back as written.
    #[serde(serialize_with = "lossy_path")]
    pub image: PathBuf,
    pub reason: String,
}

fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}
