//! The prediction-folder evaluator's file handling: a fixed two-image Cityscapes ground truth,
//! and the fuzzed bytes as the first image's prediction (the second's is valid), read as label
//! ids and as train ids.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seg_metrics::{evaluate_folder, FolderOptions, PredFormat};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const W: u32 = 16;
const H: u32 = 8;

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("seg-fuzz-pred-{}", std::process::id()));
        let gt = root.join("gtFine/val/city");
        std::fs::create_dir_all(&gt).unwrap();
        std::fs::create_dir_all(root.join("pred")).unwrap();
        let ids: Vec<u8> = (0..W * H).map(|i| [7u8, 8, 11, 26, 0][i as usize % 5]).collect();
        for name in ["city_000000_000001", "city_000000_000002"] {
            let p = gt.join(format!("{name}_gtFine_labelIds.png"));
            seg_labels::png_io::write_gray8(&p, W, H, &ids).unwrap();
        }
        let good = root.join("pred/city_000000_000002_leftImg8bit.png");
        seg_labels::png_io::write_gray8(&good, W, H, &ids).unwrap();
        root
    })
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    std::fs::write(root.join("pred/city_000000_000001_leftImg8bit.png"), data).unwrap();
    for pred_format in [PredFormat::LabelIds, PredFormat::TrainIds] {
        let opts = FolderOptions {
            root: root.to_path_buf(),
            split: "val".into(),
            pred_dir: root.join("pred"),
            pred_format,
            missing_as_wrong: false,
            samples: 1,
        };
        let _ = evaluate_folder(&opts);
    }
});
