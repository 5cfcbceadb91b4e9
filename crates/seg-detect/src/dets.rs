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
    let read = seg_labels::fsutil::read_regular(path).map_err(DetError::io(path))?;
    // A UTF-8 byte-order mark (Notepad's, PowerShell's `Out-File`) is no part of the JSON.
    let bytes: &[u8] = read.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&read);
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| match non_finite(bytes, &e) {
        Some((index, token)) => DetError::Detection {
            path: path.to_path_buf(),
            index,
            reason: format!(
                "`{token}` (line {}, column {}) is not a finite number: scores and boxes must be \
                 (Python's `json.dump` writes NaN and Infinity unless given `allow_nan=False`)",
                e.line(),
                e.column()
            ),
        },
        None => DetError::invalid(path, format!("not JSON: {e}")),
    })?;
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
    // A JSON value keeps the last of a key written twice in an entry; read as detections, the
    // entries refuse it, naming the entry.
    if let Err(e) = serde_json::from_slice::<Vec<Detection>>(bytes) {
        return Err(match entry_at(bytes, offset_of(bytes, &e)) {
            Some(index) => DetError::Detection {
                path: path.to_path_buf(),
                index,
                reason: e.to_string(),
            },
            None => DetError::invalid(path, format!("not a detections file: {e}")),
        });
    }
    Ok(out)
}

/// The byte offset of the line and column a JSON error names.
fn offset_of(bytes: &[u8], e: &serde_json::Error) -> usize {
    let line_start: usize = bytes
        .split_inclusive(|&b| b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    (line_start + e.column().saturating_sub(1)).min(bytes.len())
}

/// Where JSON parsing stopped at a number that is not finite (`NaN`, `Infinity`, `-Infinity`,
/// which Python writes, or one too large for a float, `1e999`) inside the top-level list: the
/// entry it is in and the token, so that the error names the entry as the other checks do.
/// Any other error, or one outside a list, is left to serde's message.
fn non_finite(bytes: &[u8], e: &serde_json::Error) -> Option<(usize, String)> {
    let message = e.to_string();
    let overflow = message.starts_with("number out of range");
    // `NaN` and `Infinity` stop serde at "expected value", `-Infinity` at "invalid number".
    if !overflow && !message.starts_with("expected value") && !message.starts_with("invalid number") {
        return None;
    }
    let at = offset_of(bytes, e);
    let part = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
    let start = bytes[..at].iter().rposition(|b| !part(b)).map_or(0, |i| i + 1);
    let end = bytes[start..]
        .iter()
        .position(|b| !part(b))
        .map_or(bytes.len(), |i| start + i);
    let token = std::str::from_utf8(&bytes[start..end]).ok()?;
    let named = matches!(token, "NaN" | "Infinity" | "-Infinity" | "+Infinity");
    if !(named || (overflow && token.parse::<f64>().is_ok())) {
        return None;
    }
    Some((entry_at(bytes, start)?, token.to_string()))
}

/// The entry of the top-level list that byte `at` is in, or that starts at `at`; none when `at`
/// is outside the list (or the file is no list).
fn entry_at(bytes: &[u8], at: usize) -> Option<usize> {
    // The entries are the values of the top-level list, counted as they start, outside strings.
    let text = bytes[..at].trim_ascii_start();
    if text.first() != Some(&b'[') {
        return None;
    }
    let (mut depth, mut entries, mut expecting) = (0usize, 0usize, false);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expecting && !b.is_ascii_whitespace() && b != b']' {
            entries += 1;
            expecting = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                expecting = depth == 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    if depth == 0 {
        return None;
    }
    // The token itself starts an entry when the list expects one (`[NaN]`).
    if depth == 1 && expecting {
        entries += 1;
    }
    entries.checked_sub(1)
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
        // A UTF-8 byte-order mark before the list is read past.
        assert_eq!(check(&format!("\u{feff}{ok}")).unwrap().len(), 1);
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
        // Python's `json.dump` writes NaN; a number too large is no float: both named by entry.
        let two = format!("[{}, {}]", &ok[1..ok.len() - 1], &ok[1..ok.len() - 1]);
        for (bad, token) in [
            (two.replacen("0.5", "NaN", 2), "`NaN`"),
            (two.replacen("0.5}", "1e999}", 2), "`1e999`"),
            (two.replacen("0.5}", "-Infinity}", 2), "`-Infinity`"),
        ] {
            let bad = bad.replacen(token.trim_matches('`'), "0.5", 1);
            let e = check(&bad).unwrap_err().to_string();
            assert!(
                e.contains("entry 1: ") && e.contains(token) && e.contains("not a finite number"),
                "{bad}: {e}"
            );
        }
        assert!(check("[{\"score\": Nope}]")
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        // Entries that are not objects count as entries; other errors beside such a word, or
        // a file that is no list, keep serde's message.
        let e = check("[[1], 2, {\"score\": NaN}]").unwrap_err().to_string();
        assert!(e.contains("entry 2: `NaN`"), "{e}");
        assert!(check("[NaN]").unwrap_err().to_string().contains("entry 0: `NaN`"));
        for text in ["{\"a\": {\"s\": NaN}}", &format!("{ok} NaN"), "[{NaN: 1}]"] {
            let e = check(text).unwrap_err().to_string();
            assert!(e.contains("not JSON"), "{text}: {e}");
        }
        assert!(check("{}").unwrap_err().to_string().contains("list"));
        // A key written twice is refused, not read as its last value.
        let twice = format!(
            "[{}, {}]",
            &ok[1..ok.len() - 1],
            ok[1..ok.len() - 1].replacen("\"score\": 0.5", "\"score\": 0.5, \"image\": \"a_000000_000019\"", 1)
        );
        let e = check(&twice).unwrap_err().to_string();
        assert!(e.contains("entry 1: duplicate field `image`"), "{e}");
        assert!(check(&ok.replace(", \"score\": 0.5", ""))
            .unwrap_err()
            .to_string()
            .contains("score"));
    }
}
