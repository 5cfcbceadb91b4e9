//! The detection parsers on arbitrary bytes: PASCAL VOC XML annotations and detections files.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The annotation's bytes as the dataset reads them (UTF-8, UTF-16, a declared Latin-1).
    if let Ok(text) = seg_detect::voc::decode_xml(Path::new("fuzz.xml"), data) {
        let text = text.as_str();
        for classes in [seg_detect::ClassSet::Car, seg_detect::ClassSet::All] {
            let _ = seg_detect::voc::parse_voc(Path::new("fuzz.xml"), text, classes, || Ok((100, 100)));
        }
    }
    let dir = std::env::temp_dir().join(format!("seg-fuzz-dets-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("dets.json");
    if std::fs::write(&file, data).is_ok() {
        let images: HashMap<String, usize> = [("a_000000_000019".to_string(), 0)].into();
        if let Ok(dets) = seg_detect::dets::read_detections(&file, &images) {
            let gt = vec![Vec::new()];
            let _ = seg_detect::report::DetReport::compute(&gt, &dets, seg_detect::ClassSet::All);
        }
    }
});
