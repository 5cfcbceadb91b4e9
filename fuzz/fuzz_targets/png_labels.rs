//! Every PNG decoder (images, 8-bit ids, SYNTHIA's 16-bit labels) on arbitrary bytes, and each
//! dataset's label map on whatever ids decode. Must return errors, never panic or over-allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seg_labels::png_io::{decode_label, decode_rgb};
use seg_labels::{DatasetKind, LabelEncoding, LabelMap};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.png");
    if let Ok(img) = decode_rgb(path, data) {
        assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3);
    }
    for enc in [LabelEncoding::Ids8, LabelEncoding::Synthia16] {
        if let Ok(lab) = decode_label(path, data, enc) {
            assert_eq!(lab.data.len(), lab.width as usize * lab.height as usize);
            for kind in [DatasetKind::Cityscapes, DatasetKind::CityscapesTrainIds, DatasetKind::Gta5, DatasetKind::Synthia] {
                let (train, _outside) = LabelMap::new(kind).map_all(&lab.data);
                assert_eq!(train.len(), lab.data.len());
                assert!(train.iter().all(|&t| t < 19 || t == 255));
            }
        }
    }
    // The maps on raw ids straight from the bytes.
    let raw: Vec<u16> = data.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
    for kind in [DatasetKind::Cityscapes, DatasetKind::CityscapesTrainIds, DatasetKind::Gta5, DatasetKind::Synthia] {
        let (train, _) = LabelMap::new(kind).map_all(&raw);
        assert!(train.iter().all(|&t| t < 19 || t == 255));
    }
});
