//! A sample a run leaves out before it starts (its error or size policy says so), as both the
//! segmentation and the detection readers report it and a run folder's `skipped.json` keeps it.

use std::path::PathBuf;

/// A sample left out of a run before it started, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeftOut {
    pub name: String,
    pub image: PathBuf,
    pub reason: String,
}
