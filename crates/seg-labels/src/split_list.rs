//! Split list files, as AdaptSegNet's `dataset/*_list/*.txt` hold them: one image per line,
//! with `#` comments, blank lines and a leading byte-order mark (Notepad's UTF-8) aside. The
//! segmentation readers and the detection data read Cityscapes lines with the one
//! [`cityscapes_line`], so a list means the same images to both.

use std::path::Path;

/// The names a list file holds, trimmed, in its order.
pub fn read(path: &Path) -> std::io::Result<Vec<String>> {
    let text = crate::fsutil::read_text(path)?;
    Ok(text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// The Cityscapes image one list line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityscapesImage {
    /// `frankfurt`: the name's first part, as every Cityscapes name starts with its city.
    pub city: String,
    /// `frankfurt_000000_000294`: the name without `_leftImg8bit.png`.
    pub stem: String,
}

impl CityscapesImage {
    /// `{stem}_leftImg8bit.png`.
    pub fn image_file(&self) -> String {
        format!("{}_leftImg8bit.png", self.stem)
    }
}

/// Reads one line of a Cityscapes list of the `split` split: `city/stem_leftImg8bit.png`
/// (AdaptSegNet's form), the same with `leftImg8bit/<split>/` in front (or `./`, or any folders
/// before `leftImg8bit/`), a label's path (`gtFine/<split>/city/stem_gtFine_labelIds.png`,
/// `_labelTrainIds`, `_instanceIds`, `_color`, `_polygons.json`), the file's stem
/// (`stem_leftImg8bit`, what Python's `Path.stem` gives) or the bare `stem`; `\` separates
/// folders as `/` does. A line naming another split's folder, or whose name has not the three
/// parts of `{city}_{seq}_{frame}`, is refused with the reason.
pub fn cityscapes_line(line: &str, split: &str) -> Result<CityscapesImage, String> {
    let parts: Vec<&str> = line.split(['/', '\\']).collect();
    let other_split = parts
        .windows(2)
        .find(|w| w[0] == "leftImg8bit" || w[0] == "gtFine")
        .map(|w| w[1])
        .filter(|s| *s != split && parts.len() > 2);
    if let Some(other) = other_split {
        return Err(format!(
            "line `{line}` names the `{other}` split, but the `{split}` split is read"
        ));
    }
    let file = line.rsplit(['/', '\\']).next().unwrap_or(line);
    const SUFFIXES: [&str; 8] = [
        "_leftImg8bit.png",
        "_gtFine_labelIds.png",
        "_gtFine_labelTrainIds.png",
        "_gtFine_instanceIds.png",
        "_gtFine_color.png",
        "_gtFine_polygons.json",
        "_leftImg8bit",
        ".png",
    ];
    let stem = SUFFIXES.iter().find_map(|s| file.strip_suffix(s)).unwrap_or(file);
    let named: Vec<&str> = stem.split('_').collect();
    match named.as_slice() {
        [city, seq, frame] if [city, seq, frame].iter().all(|p| !p.is_empty()) => Ok(CityscapesImage {
            city: city.to_string(),
            stem: stem.to_string(),
        }),
        _ => Err(format!(
            "line `{line}` is no Cityscapes image name (`{{city}}_{{seq}}_{{frame}}_leftImg8bit.png`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_line_names_one_image() {
        let want = CityscapesImage {
            city: "lindau".into(),
            stem: "lindau_000002_000019".into(),
        };
        for line in [
            "lindau/lindau_000002_000019_leftImg8bit.png",
            "leftImg8bit/val/lindau/lindau_000002_000019_leftImg8bit.png",
            "gtFine/val/lindau/lindau_000002_000019_gtFine_labelIds.png",
            "lindau/lindau_000002_000019_gtFine_labelTrainIds.png",
            "lindau_000002_000019_gtFine_instanceIds.png",
            "lindau_000002_000019_leftImg8bit",
            "lindau_000002_000019",
            "lindau\\lindau_000002_000019_leftImg8bit.png",
            "./leftImg8bit/val/lindau/lindau_000002_000019_leftImg8bit.png",
            "/data/cityscapes/gtFine/val/lindau/lindau_000002_000019_gtFine_polygons.json",
            "lindau_000002_000019_gtFine_color.png",
        ] {
            assert_eq!(cityscapes_line(line, "val").as_ref(), Ok(&want), "{line}");
        }
        assert_eq!(want.image_file(), "lindau_000002_000019_leftImg8bit.png");
    }

    #[test]
    fn another_split_or_no_cityscapes_name_is_refused() {
        let e = cityscapes_line("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", "val").unwrap_err();
        assert!(e.contains("`train` split") && e.contains("`val` split"), "{e}");
        let e = cityscapes_line("gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", "val").unwrap_err();
        assert!(e.contains("`train` split"), "{e}");
        let e = cityscapes_line(
            "/d/cs/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
            "val",
        )
        .unwrap_err();
        assert!(e.contains("`train` split"), "{e}");
        for line in [
            "frankfurt",
            "frankfurt_",
            "_000001",
            "a/b/.png",
            "a_1",
            "a__1",
            "x_1_2_3_gtFine_labelIds.json",
        ] {
            let e = cityscapes_line(line, "val").unwrap_err();
            assert!(e.contains("no Cityscapes image name"), "{line}: {e}");
        }
    }

    #[test]
    fn comments_blank_lines_and_a_byte_order_mark_are_no_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.txt");
        std::fs::write(&path, "\u{feff}a/a_1_2_leftImg8bit.png\r\n\n# note\n  b_1_2  \n").unwrap();
        assert_eq!(read(&path).unwrap(), ["a/a_1_2_leftImg8bit.png", "b_1_2"]);
        assert!(read(&dir.path().join("none.txt")).is_err());
    }
}
