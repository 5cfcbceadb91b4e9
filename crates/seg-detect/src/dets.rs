//! The detections file of `seg-adapt eval --task detection`: a JSON list of
//! `{"image": <image stem>, "class": <class name>, "box": [x_min, y_min, x_max, y_max],
//! "score": s}`, boxes as 0-based inclusive pixel indices. An entry with an unknown image or
//! class, a missing field, or a non-finite or inverted box or score is refused, naming the entry.

use std::collections::HashMap;
use std::path::Path;

use crate::ap::ApInput;
use crate::boxes::PixelBox;
use crate::classes::{class_index, DET_CLASSES};
use crate::error::DetError;

/// One detection as written to and read from a detections file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    pub image: String,
    pub class: String,
    #[serde(rename = "box")]
    pub bbox: [f64; 4],
    pub score: f64,
}

/// Reads and checks a detections file against the images of the split (`images[name]` = index).
pub fn read_detections(path: &Path, images: &HashMap<String, usize>) -> Result<Vec<ApInput>, DetError> {
    let bytes = std::fs::read(path).map_err(DetError::io(path))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| DetError::invalid(path, format!("not JSON: {e}")))?;
    let list = value
        .as_array()
        .ok_or_else(|| DetError::invalid(path, "expected a JSON list of detections"))?;
    let mut out = Vec::with_capacity(list.len());
    for (index, v) in list.iter().enumerate() {
        let refuse = |reason: String| DetError::Detection {
            path: path.to_path_buf(),
            index,
            reason,
        };
        let d: Detection = serde_json::from_value(v.clone()).map_err(|e| refuse(format!("{e} (in {v})")))?;
        let image = *images
            .get(&d.image)
            .ok_or_else(|| refuse(format!("image `{}` is not in the split", d.image)))?;
        let class = class_index(&d.class.trim().to_ascii_lowercase()).ok_or_else(|| {
            refuse(format!(
                "unknown class `{}` (expected one of {})",
                d.class,
                DET_CLASSES.map(|c| c.name).join(", ")
            ))
        })?;
        if !d.score.is_finite() {
            return Err(refuse(format!("score {} is not finite", d.score)));
        }
        if d.bbox.iter().any(|v| !v.is_finite()) {
            return Err(refuse(format!("box {:?} is not finite", d.bbox)));
        }
        let [x0, y0, x1, y1] = d.bbox;
        if x1 < x0 || y1 < y0 {
            return Err(refuse(format!("box {:?} has x_max < x_min or y_max < y_min", d.bbox)));
        }
        out.push(ApInput {
            image,
            class,
            bbox: PixelBox::new(x0, y0, x1, y1),
            score: d.score,
        });
    }
    Ok(out)
}

/// Writes detections as a detections file (atomically).
pub fn write_detections(path: &Path, dets: &[Detection]) -> Result<(), DetError> {
    let bytes = serde_json::to_vec(dets).map_err(|e| DetError::invalid(path, e.to_string()))?;
    seg_labels::fsutil::write_atomic(path, &bytes).map_err(DetError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_entries_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        let images: HashMap<String, usize> = [("a_000000_000019".to_string(), 0)].into();
        let check = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read_detections(&p, &images)
        };
        let ok = r#"[{"image": "a_000000_000019", "class": "car", "box": [1, 2, 3.5, 4], "score": 0.5}]"#;
        assert_eq!(check(ok).unwrap().len(), 1);
        let e = check(&ok.replace("a_000000_000019", "b")).unwrap_err().to_string();
        assert!(e.contains("entry 0") && e.contains("image `b`"), "{e}");
        assert!(check(&ok.replace("\"car\"", "\"tank\""))
            .unwrap_err()
            .to_string()
            .contains("unknown class `tank`"));
        assert!(check(&ok.replace("3.5", "0"))
            .unwrap_err()
            .to_string()
            .contains("x_max < x_min"));
        assert!(check(&ok.replace("0.5", "NaN"))
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert!(check(&ok.replace("0.5}", "1e999}")).is_err());
        assert!(check("{}").unwrap_err().to_string().contains("list"));
        assert!(check(&ok.replace(", \"score\": 0.5", ""))
            .unwrap_err()
            .to_string()
            .contains("score"));
    }
}
