//! PASCAL VOC XML annotations, as Sim10k ships them (`VOC2012/Annotations/*.xml`).
//!
//! Read: `<size><width>/<height>`, and per `<object>` its `<name>` and `<bndbox>` with `xmin ymin
//! xmax ymax` as 1-based inclusive pixel indices (shifted to 0-based here). `<difficult>` and
//! `<truncated>` are not read: every object is a box, as the Sim10k loaders of the
//! adaptation papers take them (Sim10k marks none difficult). Names are matched without regard
//! to case or surrounding spaces: Sim10k's `car`, `motorbike` and `person`, and the eight
//! Cityscapes instance classes (VOC conversions of Cityscapes use those). Refused with the file
//! named: text that is not XML, a missing or non-numeric size or coordinate, `xmax < xmin` or
//! `ymax < ymin`, two `<size>` elements that disagree. Listed as problems: an object of another
//! class (left out, as the papers' loaders skip it), a box reaching outside the image (kept,
//! clipped to the image), a box
//! wholly outside the image (dropped), an annotation with no objects.

use std::path::Path;

use roxmltree::{Document, Node};

use crate::boxes::{GtBox, PixelBox};
use crate::classes::{sim10k_class, ClassSet};
use crate::error::DetError;

/// One parsed annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct VocAnnotation {
    pub filename: Option<String>,
    pub width: u32,
    pub height: u32,
    /// Boxes of the classes asked for, 0-based, clipped to the image.
    pub boxes: Vec<GtBox>,
    /// Objects of every known class, before the class filter.
    pub objects: usize,
    /// Problems that did not stop the read (clipped or dropped boxes, no objects).
    pub problems: Vec<String>,
}

fn child<'a>(n: Node<'a, 'a>, tag: &str) -> Option<Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn text_of<'a>(n: Node<'a, 'a>, tag: &str) -> Option<&'a str> {
    child(n, tag).and_then(|c| c.text()).map(str::trim)
}

fn number(path: &Path, n: Node<'_, '_>, tag: &str, what: &str) -> Result<f64, DetError> {
    let t = text_of(n, tag).ok_or_else(|| DetError::invalid(path, format!("{what}: missing <{tag}>")))?;
    let v: f64 = t
        .parse()
        .map_err(|_| DetError::invalid(path, format!("{what}: <{tag}> is `{t}`, not a number")))?;
    if !v.is_finite() {
        return Err(DetError::invalid(
            path,
            format!("{what}: <{tag}> is `{t}`, not a finite number"),
        ));
    }
    Ok(v)
}

/// The text of an annotation file's bytes, as an XML reader takes them: UTF-16 by its
/// byte-order mark (or by `<` and a zero byte, without one); otherwise UTF-8 whenever the bytes
/// are UTF-8, whatever the declaration says (as before: the XML reader ignores it), a UTF-8
/// byte-order mark dropped; otherwise the single-byte encoding the XML declaration names
/// (`ISO-8859-1`, `latin1`, `windows-1252`: bytes above 127 read as Latin-1, which changes
/// nothing a box is read from). Anything else is refused naming the file and the encoding.
pub fn decode_xml(path: &Path, bytes: &[u8]) -> Result<String, DetError> {
    let utf16 = |body: &[u8], big: bool| -> Result<String, DetError> {
        if !body.len().is_multiple_of(2) {
            return Err(DetError::invalid(path, "UTF-16 text of an odd number of bytes"));
        }
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| match big {
                true => u16::from_be_bytes([c[0], c[1]]),
                false => u16::from_le_bytes([c[0], c[1]]),
            })
            .collect();
        String::from_utf16(&units).map_err(|e| DetError::invalid(path, format!("not valid UTF-16: {e}")))
    };
    let (bytes, bom) = match bytes {
        [0xFF, 0xFE, 0, 0, ..] => return Err(DetError::invalid(path, "UTF-32 text, which is not read")),
        [0xFF, 0xFE, rest @ ..] => return utf16(rest, false),
        [0xFE, 0xFF, rest @ ..] => return utf16(rest, true),
        [b'<', 0, ..] => return utf16(bytes, false),
        [0, b'<', ..] => return utf16(bytes, true),
        [0xEF, 0xBB, 0xBF, rest @ ..] => (rest, true),
        _ => (bytes, false),
    };
    let not_utf8 = match std::str::from_utf8(bytes) {
        Ok(text) => return Ok(text.to_string()),
        Err(e) => e,
    };
    let head = &bytes[..bytes.len().min(256)];
    let declared = head
        .strip_prefix(b"<?xml")
        .and_then(|rest| rest.split(|&b| b == b'>').next())
        .and_then(|decl| {
            let decl = String::from_utf8_lossy(decl).into_owned();
            let at = decl.find("encoding")?;
            let value = decl[at + "encoding".len()..]
                .trim_start()
                .strip_prefix('=')?
                .trim_start();
            let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'')?;
            Some(value[1..].split(quote).next()?.to_ascii_lowercase())
        });
    match declared.as_deref() {
        Some("iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1" | "windows-1252" | "cp1252")
            if !bom =>
        {
            Ok(bytes.iter().map(|&b| char::from(b)).collect())
        }
        Some(other) if !other.starts_with("utf") && !other.contains("ascii") => Err(DetError::invalid(
            path,
            format!(
                "not UTF-8 text ({not_utf8}) but `{other}`, as its XML declaration says, which is not read \
                 (UTF-8, UTF-16 and ISO-8859-1 are){}",
                if bom {
                    "; it also starts with UTF-8's byte-order mark"
                } else {
                    ""
                }
            ),
        )),
        _ => Err(DetError::invalid(
            path,
            format!("not UTF-8 text ({not_utf8}), and no XML declaration names another encoding"),
        )),
    }
}

/// Parses the XML text of `path` (named in errors), keeping the boxes of `classes`. An
/// annotation without `<size>` takes `image_size()` (the image's own, as py-faster-rcnn's
/// loader, which never reads `<size>`, does).
pub fn parse_voc(
    path: &Path,
    text: &str,
    classes: ClassSet,
    image_size: impl FnOnce() -> Result<(u32, u32), DetError>,
) -> Result<VocAnnotation, DetError> {
    let doc = Document::parse(text).map_err(|e| DetError::invalid(path, format!("malformed XML: {e}")))?;
    let root = doc.root_element();
    if !root.has_tag_name("annotation") {
        return Err(DetError::invalid(
            path,
            format!("root element is <{}>, expected <annotation>", root.tag_name().name()),
        ));
    }
    let (width, height) = match child(root, "size") {
        Some(size) => (
            number(path, size, "width", "<size>")?,
            number(path, size, "height", "<size>")?,
        ),
        None => image_size().map(|(w, h)| (w as f64, h as f64))?,
    };
    // A second <size> that says otherwise leaves the image's size in doubt.
    for other in root.children().filter(|c| c.has_tag_name("size")).skip(1) {
        let again = (
            number(path, other, "width", "<size>")?,
            number(path, other, "height", "<size>")?,
        );
        if again != (width, height) {
            return Err(DetError::invalid(
                path,
                format!(
                    "two <size> elements, {width}x{height} and {}x{}: which is the image's?",
                    again.0, again.1
                ),
            ));
        }
    }
    if width < 1.0
        || height < 1.0
        || width > 65535.0
        || height > 65535.0
        || width.fract() != 0.0
        || height.fract() != 0.0
    {
        return Err(DetError::invalid(
            path,
            format!("image size {width}x{height} is not a valid size"),
        ));
    }
    let (w, h) = (width as u32, height as u32);
    let mut out = VocAnnotation {
        filename: text_of(root, "filename").map(str::to_string),
        width: w,
        height: h,
        boxes: Vec::new(),
        objects: 0,
        problems: Vec::new(),
    };
    for (k, obj) in root.children().filter(|c| c.has_tag_name("object")).enumerate() {
        let name =
            text_of(obj, "name").ok_or_else(|| DetError::invalid(path, format!("object {k}: missing <name>")))?;
        let Some(class) = sim10k_class(name) else {
            out.problems.push(format!(
                "object {k}: class `{name}` is not a detection class (car, motorbike, person, or one of \
                 Cityscapes' {}); left out",
                crate::classes::DET_CLASSES.map(|c| c.name).join(", ")
            ));
            continue;
        };
        let what = format!("object {k} ({name})");
        let bb = child(obj, "bndbox").ok_or_else(|| DetError::invalid(path, format!("{what}: missing <bndbox>")))?;
        let x0 = number(path, bb, "xmin", &what)? - 1.0;
        let y0 = number(path, bb, "ymin", &what)? - 1.0;
        let x1 = number(path, bb, "xmax", &what)? - 1.0;
        let y1 = number(path, bb, "ymax", &what)? - 1.0;
        if x1 < x0 || y1 < y0 {
            return Err(DetError::invalid(
                path,
                format!(
                    "{what}: box ({}, {}, {}, {}) has xmax < xmin or ymax < ymin",
                    x0 + 1.0,
                    y0 + 1.0,
                    x1 + 1.0,
                    y1 + 1.0
                ),
            ));
        }
        out.objects += 1;
        let (wm, hm) = ((w - 1) as f64, (h - 1) as f64);
        let b = PixelBox::new(x0, y0, x1, y1);
        if x1 < 0.0 || y1 < 0.0 || x0 > wm || y0 > hm {
            out.problems.push(format!(
                "{what}: box ({}, {}, {}, {}) lies outside the {w}x{h} image; dropped",
                x0 + 1.0,
                y0 + 1.0,
                x1 + 1.0,
                y1 + 1.0
            ));
            continue;
        }
        let clipped = PixelBox::new(x0.max(0.0), y0.max(0.0), x1.min(wm), y1.min(hm));
        if clipped != b {
            out.problems.push(format!(
                "{what}: box ({}, {}, {}, {}) reaches outside the {w}x{h} image; clipped",
                x0 + 1.0,
                y0 + 1.0,
                x1 + 1.0,
                y1 + 1.0
            ));
        }
        if classes.contains(class) {
            out.boxes.push(GtBox { class, bbox: clipped });
        }
    }
    if out.objects == 0 {
        out.problems
            .push("annotation has no objects of a detection class".into());
    }
    Ok(out)
}

/// Writes a VOC XML annotation (1-based boxes) for `boxes`, with Sim10k's class names.
pub fn to_voc_xml(filename: &str, width: u32, height: u32, boxes: &[GtBox]) -> String {
    let mut s = String::from("<annotation>\n  <folder>VOC2012</folder>\n");
    s += &format!("  <filename>{filename}</filename>\n");
    s += &format!(
        "  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
    );
    for b in boxes {
        let name = match crate::DET_CLASSES[b.class].name {
            "motorcycle" => "motorbike",
            n => n,
        };
        s += &format!(
            "  <object>\n    <name>{name}</name>\n    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{}</xmin>\n      <ymin>{}</ymin>\n      <xmax>{}</xmax>\n      <ymax>{}</ymax>\n    </bndbox>\n  </object>\n",
            b.bbox.x_min + 1.0,
            b.bbox.y_min + 1.0,
            b.bbox.x_max + 1.0,
            b.bbox.y_max + 1.0
        );
    }
    s += "</annotation>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::CAR;

    #[test]
    fn annotations_are_read_in_the_encoding_they_declare() {
        let p = Path::new("a.xml");
        let body = "<annotation><folder>Caf\u{e9}</folder><size><width>100</width><height>50</height></size>\
            <object><name>car</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object></annotation>";
        let read = |bytes: &[u8]| parse_voc(p, &decode_xml(p, bytes)?, ClassSet::All, unused);
        let latin1: Vec<u8> = "<?xml version='1.0' encoding=\"ISO-8859-1\"?>\n"
            .chars()
            .chain(body.chars())
            .map(|c| u8::try_from(u32::from(c)).unwrap())
            .collect();
        assert_eq!(read(&latin1).unwrap().boxes.len(), 1);
        for big in [false, true] {
            let mut bytes = if big { vec![0xFE, 0xFF] } else { vec![0xFF, 0xFE] };
            for u in "<?xml version=\"1.0\" encoding=\"UTF-16\"?>"
                .encode_utf16()
                .chain(body.encode_utf16())
            {
                bytes.extend(if big { u.to_be_bytes() } else { u.to_le_bytes() });
            }
            assert_eq!(read(&bytes).unwrap().boxes.len(), 1);
        }
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend(body.as_bytes());
        assert_eq!(read(&bom).unwrap().boxes.len(), 1);
        // Latin-1 bytes without a declaration, and an encoding not read, are named.
        let e = read(&latin1[latin1.iter().position(|&b| b == b'\n').unwrap() + 1..]).unwrap_err();
        assert!(e.to_string().contains("a.xml: not UTF-8 text"), "{e}");
        let e = read(b"<?xml version=\"1.0\" encoding=\"Shift_JIS\"?><annotation>\x82\xa0</annotation>").unwrap_err();
        assert!(
            e.to_string().contains("but `shift_jis`, as its XML declaration says"),
            "{e}"
        );
        // UTF-8 bytes are read whatever the declaration says (the XML reader ignores it), as
        // before; UTF-16 without its byte-order mark is told by its zero bytes.
        let ascii = format!("<?xml version=\"1.0\" encoding=\"GBK\"?>{body}").replace('\u{e9}', "e");
        assert_eq!(read(ascii.as_bytes()).unwrap().boxes.len(), 1);
        let bare: Vec<u8> = body.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(read(&bare).unwrap().boxes.len(), 1);
    }

    #[test]
    fn a_second_size_that_disagrees_is_refused() {
        let p = Path::new("a.xml");
        let size = "<size><width>100</width><height>50</height></size>";
        let object = "<object><name>car</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>";
        let same = format!("<annotation>{size}{object}{size}</annotation>");
        assert_eq!(parse_voc(p, &same, ClassSet::All, unused).unwrap().width, 100);
        let other = format!("<annotation>{size}{object}{}</annotation>", size.replace("100", "120"));
        let e = parse_voc(p, &other, ClassSet::All, unused).unwrap_err().to_string();
        assert!(e.contains("a.xml: two <size> elements, 100x50 and 120x50"), "{e}");
    }

    /// The size of an image that should not be needed.
    fn unused() -> Result<(u32, u32), DetError> {
        panic!("the annotation's <size> is read")
    }

    const GOOD: &str = "<annotation><filename>3384827.jpg</filename><size><width>100</width><height>50</height><depth>3</depth></size>\
        <object><name>car</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>\
        <object><name>motorbike</name><bndbox><xmin>40</xmin><ymin>10</ymin><xmax>120</xmax><ymax>40</ymax></bndbox></object>\
        <object><name>person</name><bndbox><xmin>200</xmin><ymin>10</ymin><xmax>210</xmax><ymax>40</ymax></bndbox></object>\
        </annotation>";

    #[test]
    fn reads_shifts_clips_and_filters() {
        let p = Path::new("a.xml");
        let a = parse_voc(p, GOOD, ClassSet::All, unused).unwrap();
        assert_eq!((a.width, a.height, a.objects), (100, 50, 3));
        assert_eq!(a.boxes.len(), 2);
        assert_eq!(a.boxes[0].class, CAR);
        assert_eq!(a.boxes[0].bbox, PixelBox::new(0.0, 1.0, 29.0, 19.0));
        assert_eq!(a.boxes[1].bbox, PixelBox::new(39.0, 9.0, 99.0, 39.0));
        assert_eq!(a.problems.len(), 2, "{:?}", a.problems);
        assert!(a.problems[0].contains("clipped") && a.problems[1].contains("dropped"));
        let cars = parse_voc(p, GOOD, ClassSet::Car, unused).unwrap();
        assert_eq!(cars.boxes.len(), 1);
        let round = parse_voc(p, &to_voc_xml("x.jpg", 100, 50, &a.boxes), ClassSet::All, unused).unwrap();
        assert_eq!(round.boxes, a.boxes);
    }

    #[test]
    fn refuses_bad_annotations_naming_the_reason() {
        let p = Path::new("bad.xml");
        let err = |t: &str| parse_voc(p, t, ClassSet::All, unused).unwrap_err().to_string();
        assert!(err("<annotation><size>").contains("malformed XML"));
        // Without <size>, the image's own size is used (py-faster-rcnn never reads <size>).
        let sizeless = GOOD.replace("<size><width>100</width><height>50</height><depth>3</depth></size>", "");
        let a = parse_voc(p, &sizeless, ClassSet::All, || Ok((100, 50))).unwrap();
        assert_eq!((a.width, a.height, a.boxes.len()), (100, 50, 2));
        let unreadable = parse_voc(p, &sizeless, ClassSet::All, || Err(DetError::invalid(p, "no image")));
        assert!(unreadable.unwrap_err().to_string().contains("no image"));
        // An object of another class is left out and listed; names match without regard to case.
        let other = parse_voc(p, &GOOD.replace("person", "tractor"), ClassSet::All, unused).unwrap();
        assert_eq!((other.objects, other.boxes.len()), (2, 2));
        assert!(
            other.problems[1].contains("object 2: class `tractor` is not a detection class")
                && other.problems[1].contains("left out"),
            "{:?}",
            other.problems
        );
        let upper = parse_voc(p, &GOOD.replace("<name>car", "<name> Car"), ClassSet::Car, unused).unwrap();
        assert_eq!(upper.boxes.len(), 1);
        let swapped = GOOD.replace("<xmax>30</xmax>", "<xmax>0</xmax>");
        assert!(err(&swapped).contains("xmax < xmin"));
        let nan = GOOD.replace("<ymin>2</ymin>", "<ymin>two</ymin>");
        assert!(err(&nan).contains("not a number"));
        assert!(err(&nan).starts_with("bad.xml"));
        let infinite = GOOD.replace("<ymin>2</ymin>", "<ymin>NaN</ymin>");
        assert!(
            err(&infinite).contains("<ymin> is `NaN`, not a finite number"),
            "{}",
            err(&infinite)
        );
        let empty = "<annotation><size><width>4</width><height>4</height></size></annotation>";
        let a = parse_voc(p, empty, ClassSet::Car, unused).unwrap();
        assert_eq!(
            a.problems,
            vec!["annotation has no objects of a detection class".to_string()]
        );
    }
}
