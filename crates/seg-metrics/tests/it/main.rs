//! Integration tests of `seg-metrics`: prediction folders in the real Cityscapes layout,
//! written as PNGs into a temporary directory per test, evaluated end to end.

use std::path::{Path, PathBuf};

use seg_labels::png_io::{write_gray8, write_rgb};
use seg_labels::{Protocol, RgbImage};
use seg_metrics::{evaluate_folder, FolderError, FolderOptions, PredFormat};

/// A Cityscapes-like root with ground truth and a prediction folder.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pred: PathBuf,
}

const W: u32 = 7;
const H: u32 = 3;

/// Ground truth (label ids) for the golden example, one 7x3 image:
///
/// | pixels | gt id (train)     | pred id (train)     | effect                         |
/// |--------|-------------------|---------------------|--------------------------------|
/// | 8      | 7 road (0)        | 7 road              | TP road                        |
/// | 4      | 7 road            | 8 sidewalk (1)      | FN road, FP sidewalk           |
/// | 4      | 8 sidewalk        | 8 sidewalk          | TP sidewalk                    |
/// | 2      | 0 unlabeled (255) | 7 road              | nothing (ignored ground truth) |
/// | 1      | 26 car (13)       | 0 unlabeled (void)  | FN car                         |
/// | 2      | 4 static (255)    | 26 car              | nothing (ignored ground truth) |
///
/// road 8/(8+4) = 2/3; sidewalk 4/(4+4) = 1/2; car 0/1 = 0; others none.
/// mIoU19 = (2/3 + 1/2 + 0) / 3 = 7/18. Pixel accuracy = 12/17.
/// 16 and 13 classes keep road, sidewalk and car: the same 7/18.
fn golden_pair() -> (Vec<u8>, Vec<u8>) {
    let runs: [(usize, u8, u8); 6] = [(8, 7, 7), (4, 7, 8), (4, 8, 8), (2, 0, 7), (1, 26, 0), (2, 4, 26)];
    let mut gt = Vec::new();
    let mut pred = Vec::new();
    for (n, g, p) in runs {
        gt.extend(std::iter::repeat_n(g, n));
        pred.extend(std::iter::repeat_n(p, n));
    }
    assert_eq!(gt.len(), (W * H) as usize);
    (gt, pred)
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cityscapes");
        let pred = dir.path().join("pred");
        std::fs::create_dir_all(&pred).unwrap();
        Self { _dir: dir, root, pred }
    }

    fn gt(&self, city: &str, stem: &str, ids: &[u8]) {
        let p = self
            .root
            .join("gtFine/val")
            .join(city)
            .join(format!("{stem}_gtFine_labelIds.png"));
        write_gray8(&p, W, H, ids).unwrap();
    }

    fn image(&self, city: &str, stem: &str) {
        let p = self
            .root
            .join("leftImg8bit/val")
            .join(city)
            .join(format!("{stem}_leftImg8bit.png"));
        write_rgb(
            &p,
            &RgbImage {
                width: W,
                height: H,
                data: vec![90; (3 * W * H) as usize],
            },
        )
        .unwrap();
    }

    fn pred(&self, rel: &str, ids: &[u8]) -> PathBuf {
        let p = self.pred.join(rel);
        write_gray8(&p, W, H, ids).unwrap();
        p
    }

    fn opts(&self) -> FolderOptions {
        FolderOptions {
            root: self.root.clone(),
            split: "val".into(),
            pred_dir: self.pred.clone(),
            pred_format: PredFormat::LabelIds,
            missing_as_wrong: false,
            samples: 4,
        }
    }

    /// Two images with the golden pair: one in frankfurt (with a camera image), one in lindau.
    fn golden() -> Self {
        let f = Self::new();
        let (gt, pred) = golden_pair();
        f.gt("frankfurt", "frankfurt_000000_000294", &gt);
        f.image("frankfurt", "frankfurt_000000_000294");
        f.gt("lindau", "lindau_000001_000019", &gt);
        f.pred("frankfurt/frankfurt_000000_000294_leftImg8bit.png", &pred);
        f.pred("nested/deeper/lindau_000001_000019_pred.png", &pred);
        f
    }
}

fn err_of(f: &Fixture, opts: &FolderOptions) -> String {
    let _ = f;
    match evaluate_folder(opts) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn golden_folder_gives_the_hand_computed_scores_and_a_full_report() {
    let f = Fixture::golden();
    let ev = evaluate_folder(&f.opts()).unwrap();
    assert_eq!(ev.images(), 2);
    let warnings = ev.warnings().to_vec();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("lindau_000001_000019_leftImg8bit.png") && warnings[0].contains("overlay skipped"));
    let report = ev.finish(Protocol::Classes19);
    assert!((report.miou.unwrap() - 7.0 / 18.0).abs() < 1e-12, "{:?}", report.miou);
    assert!((report.pixel_accuracy.unwrap() - 12.0 / 17.0).abs() < 1e-12);
    assert_eq!(report.class_iou.get("car"), Some(Some(0.0)));
    assert_eq!(report.class_iou.get("bus"), Some(None));
    assert_eq!(report.pixels, 34);

    let out = f.root.parent().unwrap().join("out");
    report.write(&out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["protocol"], "19");
    assert_eq!(json["images"], 2);
    assert!((json["class_iou"]["road"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!(json["class_iou"]["train"].is_null());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| road | 66.67 |") && md.contains("38.89"), "{md}");
    assert!(md.contains("pictures/sheet.png") && md.contains("pictures/frankfurt_000000_000294_overlay.png"));
    let csv = std::fs::read_to_string(out.join("confusion.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().starts_with("road,16,8,"), "{csv}");
    assert!(
        csv.lines().nth(14).unwrap().ends_with(",2"),
        "car row: the void column holds 2"
    );
    for p in json["pictures"].as_array().unwrap() {
        let path = out.join(p.as_str().unwrap());
        let img = seg_labels::png_io::read_rgb(&path).unwrap();
        assert!(img.width > 0, "{}", path.display());
    }
    let overlay = seg_labels::png_io::read_rgb(&out.join("pictures/frankfurt_000000_000294_overlay.png")).unwrap();
    // road (128, 64, 128) at 0.5 over gray 90.
    assert_eq!(&overlay.data[..3], &[109, 77, 109]);
    assert!(!out.join("pictures/lindau_000001_000019_overlay.png").exists());
}

#[test]
fn protocols_average_their_own_classes() {
    let f = Fixture::golden();
    for p in [Protocol::Classes16, Protocol::Classes13] {
        let r = evaluate_folder(&f.opts()).unwrap().finish(p);
        assert!((r.miou.unwrap() - 7.0 / 18.0).abs() < 1e-12);
        assert_eq!(r.class_iou.0.len(), p.num_classes());
    }
}

#[test]
fn missing_prediction_is_an_error_or_counts_as_wrong() {
    let f = Fixture::golden();
    let (gt, _) = golden_pair();
    f.gt("munster", "munster_000002_000019", &gt);
    let e = err_of(&f, &f.opts());
    assert!(
        e.contains("1 ground-truth image(s) have no prediction") && e.contains("munster_000002_000019"),
        "{e}"
    );
    let mut opts = f.opts();
    opts.missing_as_wrong = true;
    let r = evaluate_folder(&opts).unwrap().finish(Protocol::Classes19);
    assert_eq!(r.images, 3);
    assert_eq!(r.missing_counted_wrong, ["munster_000002_000019"]);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("1 ground-truth image(s) without a prediction counted as all wrong")),
        "{:?}",
        r.warnings
    );
    // road: TP 16, FN 8 + 12 (all wrong) → 16/36; sidewalk: TP 8, FP 8, FN 4 → 8/20; car 0/3.
    let want = (16.0 / 36.0 + 8.0 / 20.0 + 0.0) / 3.0;
    assert!((r.miou.unwrap() - want).abs() < 1e-12, "{:?} vs {want}", r.miou);
}

#[test]
fn ground_truth_that_is_all_ignored_gives_n_a_with_its_unit_left_out_and_a_warning() {
    let f = Fixture::new();
    f.gt("frankfurt", "frankfurt_000000_000294", &[0; (W * H) as usize]);
    f.image("frankfurt", "frankfurt_000000_000294");
    f.pred("frankfurt_000000_000294.png", &[7; (W * H) as usize]);
    let r = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    assert_eq!((r.miou, r.pixels), (None, 0));
    assert!(
        r.warnings.iter().any(|w| w.contains("the scores are n/a")),
        "{:?}",
        r.warnings
    );
    let text = r.text_table();
    assert!(
        text.contains("pixel accuracy n/a,") && !text.contains("n/a%") && !text.contains("n/a %"),
        "{text}"
    );
    assert!(!r.markdown().contains("n/a %"));
}

#[test]
fn sixteen_bit_predictions_score_as_their_eight_bit_twins() {
    let f = Fixture::golden();
    let want = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19).miou;
    let (_, pred) = golden_pair();
    let wide: Vec<u16> = pred.iter().map(|&v| v as u16).collect();
    let p = f.pred.join("frankfurt/frankfurt_000000_000294_leftImg8bit.png");
    seg_labels::png_io::write_gray16(&p, W, H, &wide).unwrap();
    assert_eq!(
        evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19).miou,
        want
    );
    // A 16-bit value beyond the label ids is refused naming it, as an 8-bit one is.
    let mut bad = wide.clone();
    bad[0] = 300;
    seg_labels::png_io::write_gray16(&p, W, H, &bad).unwrap();
    let e = err_of(&f, &f.opts());
    assert!(e.contains("300") && e.contains("frankfurt_000000_000294"), "{e}");
    // Ground truth saved with 16 bits (PIL's `fromarray` of a uint16 array) scores as its
    // 8-bit twin too, as the official evaluator reads it.
    seg_labels::png_io::write_gray16(&p, W, H, &wide).unwrap();
    let (gt, _) = golden_pair();
    let gt_wide: Vec<u16> = gt.iter().map(|&v| v as u16).collect();
    let gt_path = f
        .root
        .join("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png");
    seg_labels::png_io::write_gray16(&gt_path, W, H, &gt_wide).unwrap();
    assert_eq!(
        evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19).miou,
        want
    );
    // A ground-truth value beyond the label ids is ignored, with a warning naming the file.
    let mut gt_bad = gt_wide.clone();
    gt_bad[0] = 26001;
    seg_labels::png_io::write_gray16(&gt_path, W, H, &gt_bad).unwrap();
    let r = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("frankfurt_000000_000294_gtFine_labelIds.png") && w.contains("outside label ids")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn hidden_ground_truth_files_are_not_ground_truth_as_for_the_official_glob() {
    let f = Fixture::golden();
    let (gt, _) = golden_pair();
    // A macOS companion file and a hidden folder: `glob("*/*_gtFine_labelIds.png")` sees neither.
    f.gt("frankfurt", "._frankfurt_000000_000294", &gt);
    f.gt(".trash", "munster_000002_000019", &gt);
    let r = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    assert_eq!(r.images, 2);
}

#[test]
fn several_candidates_are_an_error_naming_them() {
    let f = Fixture::golden();
    let (_, pred) = golden_pair();
    f.pred("other/lindau_000001_000019_v2.png", &pred);
    let e = err_of(&f, &f.opts());
    assert!(e.contains("several predictions for lindau_000001_000019"), "{e}");
    assert!(
        e.contains("lindau_000001_000019_pred.png") && e.contains("lindau_000001_000019_v2.png"),
        "{e}"
    );
}

#[test]
fn size_mismatch_names_the_file_and_both_sizes() {
    let f = Fixture::golden();
    let p = f.pred.join("nested/deeper/lindau_000001_000019_pred.png");
    write_gray8(&p, 5, 2, &[7; 10]).unwrap();
    let e = err_of(&f, &f.opts());
    assert!(
        e.contains("lindau_000001_000019_pred.png") && e.contains("5x2") && e.contains("7x3"),
        "{e}"
    );
}

#[test]
fn out_of_range_values_name_the_file_and_value() {
    let f = Fixture::golden();
    let (_, mut pred) = golden_pair();
    pred[5] = 34;
    f.pred("nested/deeper/lindau_000001_000019_pred.png", &pred);
    let e = err_of(&f, &f.opts());
    assert!(
        e.contains("lindau_000001_000019_pred.png") && e.contains("value 34") && e.contains("0..=33"),
        "{e}"
    );
    // 255 is fine as a train id but not as a label id.
    pred[5] = 255;
    f.pred("nested/deeper/lindau_000001_000019_pred.png", &pred);
    let e = err_of(&f, &f.opts());
    assert!(e.contains("value 255"), "{e}");
    let mut opts = f.opts();
    opts.pred_format = PredFormat::TrainIds;
    let e = err_of(&f, &opts);
    // The first file by walk order holds 26 (car's label id): out of the train-id range.
    assert!(e.contains("value 26") && e.contains("0..=18 or 255"), "{e}");
}

#[test]
fn train_ids_as_label_ids_warn_and_trainids_format_agrees() {
    let f = Fixture::new();
    let (gt, pred) = golden_pair();
    f.gt("frankfurt", "frankfurt_000000_000294", &gt);
    let to_train = |v: &u8| seg_labels::cityscapes::id_to_train_id(*v);
    let pred_train: Vec<u8> = pred.iter().map(to_train).collect();
    // Label ids: reference scores.
    f.pred("frankfurt_000000_000294.png", &pred);
    let want = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    // The same prediction as train ids (void → 255).
    f.pred("frankfurt_000000_000294.png", &pred_train);
    let mut opts = f.opts();
    opts.pred_format = PredFormat::TrainIds;
    let got = evaluate_folder(&opts).unwrap().finish(Protocol::Classes19);
    assert_eq!(got.class_iou_all, want.class_iou_all);
    assert_eq!(got.confusion, want.confusion);
    // Train ids without 255 read as label ids: garbage scores, and a warning.
    let no_void: Vec<u8> = pred_train.iter().map(|&v| v.min(18)).collect();
    f.pred("frankfurt_000000_000294.png", &no_void);
    let ev = evaluate_folder(&f.opts()).unwrap();
    assert!(
        ev.warnings().iter().any(|w| w.contains("look like trainIds")),
        "{:?}",
        ev.warnings()
    );
}

/// Ground truth converted to train ids but named labelIds scores 0 for every class from
/// traffic light on: the evaluation says why, as `check` says it of a training split.
#[test]
fn ground_truth_in_train_ids_named_label_ids_is_said() {
    let f = Fixture::new();
    let gt: Vec<u8> = (0..W * H).map(|i| [0u8, 1, 2, 255, 255, 255][i as usize % 6]).collect();
    for stem in ["frankfurt_000000_000294", "frankfurt_000001_000019"] {
        f.gt("frankfurt", stem, &gt);
        f.pred(&format!("{stem}.png"), &[7u8; (W * H) as usize]);
    }
    let ev = evaluate_folder(&f.opts()).unwrap();
    assert!(
        ev.warnings()
            .iter()
            .any(|w| w.contains("gtFine_labelIds") && w.contains("look like train ids")),
        "{:?}",
        ev.warnings()
    );
    // The 255s of both files are said once, naming the first.
    let outside: Vec<&String> = ev
        .warnings()
        .iter()
        .filter(|w| w.contains("outside label ids"))
        .collect();
    assert_eq!(outside.len(), 1, "{outside:?}");
    assert!(
        outside[0].starts_with("2 ground-truth file(s) hold 18 pixels")
            && outside[0].contains("frankfurt_000000_000294_gtFine_labelIds.png, 9 pixels"),
        "{outside:?}"
    );
}

#[test]
fn predictions_of_classes_whose_label_ids_are_below_19_do_not_look_like_train_ids() {
    let f = Fixture::new();
    let (gt, _) = golden_pair();
    f.gt("frankfurt", "frankfurt_000000_000294", &gt);
    f.image("frankfurt", "frankfurt_000000_000294");
    // All road and sidewalk (label ids 7 and 8): a poor model, not a format mistake.
    f.pred(
        "frankfurt_000000_000294.png",
        &[7u8, 8].repeat((W * H) as usize)[..(W * H) as usize],
    );
    let ev = evaluate_folder(&f.opts()).unwrap();
    assert!(ev.warnings().is_empty(), "{:?}", ev.warnings());
}

#[test]
fn ground_truth_in_label_train_ids_alone_is_evaluated_and_said() {
    let f = Fixture::golden();
    let want = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    // lindau's ground truth as labelTrainIds only; frankfurt's keeps its labelIds, beside a
    // labelTrainIds file that must not be read for it.
    let (gt, _) = golden_pair();
    let train: Vec<u8> = gt.iter().map(|&v| seg_labels::cityscapes::id_to_train_id(v)).collect();
    let dir = f.root.join("gtFine/val");
    std::fs::remove_file(dir.join("lindau/lindau_000001_000019_gtFine_labelIds.png")).unwrap();
    write_gray8(
        &dir.join("lindau/lindau_000001_000019_gtFine_labelTrainIds.png"),
        W,
        H,
        &train,
    )
    .unwrap();
    write_gray8(
        &dir.join("frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"),
        W,
        H,
        &[0; (W * H) as usize],
    )
    .unwrap();
    let ev = evaluate_folder(&f.opts()).unwrap();
    assert!(
        ev.warnings()
            .iter()
            .any(|w| w.starts_with("1 ground-truth image(s)")
                && w.contains("lindau_000001_000019_gtFine_labelTrainIds.png")),
        "{:?}",
        ev.warnings()
    );
    let got = ev.finish(Protocol::Classes19);
    assert_eq!(got.confusion, want.confusion);
    assert_eq!(got.miou, want.miou);
}

#[test]
fn missing_folders_name_the_expected_path() {
    let f = Fixture::golden();
    let mut opts = f.opts();
    opts.split = "test".into();
    let e = err_of(&f, &opts);
    assert!(
        e.contains(&Path::new("gtFine").join("test").display().to_string()),
        "{e}"
    );
    let mut opts = f.opts();
    opts.pred_dir = f.pred.join("nope");
    let e = err_of(&f, &opts);
    assert!(e.contains("prediction folder not found") && e.contains("nope"), "{e}");
    let mut opts = f.opts();
    opts.root = f.root.join("missing-root");
    let e = err_of(&f, &opts);
    assert!(e.contains("missing-root"), "{e}");
    let empty = Fixture::new();
    std::fs::create_dir_all(empty.root.join("gtFine/val/x")).unwrap();
    let e = err_of(&empty, &empty.opts());
    assert!(
        e.contains("no ground truth found") && e.contains("_gtFine_labelIds.png"),
        "{e}"
    );
}

#[test]
fn corrupt_or_colour_predictions_are_errors_not_panics() {
    let f = Fixture::golden();
    let p = f.pred.join("nested/deeper/lindau_000001_000019_pred.png");
    std::fs::write(&p, b"not a png").unwrap();
    let e = evaluate_folder(&f.opts()).unwrap_err();
    assert!(matches!(e, FolderError::Png(_)), "{e}");
    assert!(e.to_string().contains("lindau_000001_000019_pred.png"));
    write_rgb(
        &p,
        &RgbImage {
            width: W,
            height: H,
            data: vec![7; (3 * W * H) as usize],
        },
    )
    .unwrap();
    let e = err_of(&f, &f.opts());
    assert!(e.contains("colour image"), "{e}");
}

#[cfg(unix)]
#[test]
fn symlink_loops_in_the_prediction_folder_are_not_followed() {
    let f = Fixture::golden();
    std::os::unix::fs::symlink(&f.pred, f.pred.join("nested/loop")).unwrap();
    let ev = evaluate_folder(&f.opts()).unwrap();
    assert_eq!(ev.images(), 2);
    // A prediction found only through a linked folder is missing, and the message says why.
    let away = f.pred.with_extension("away");
    std::fs::rename(f.pred.join("nested/deeper"), &away).unwrap();
    std::os::unix::fs::symlink(&away, f.pred.join("nested/deeper")).unwrap();
    let e = err_of(&f, &f.opts());
    assert!(
        e.contains("lindau_000001_000019") && e.contains("linked folders are not searched") && e.contains("2 of them"),
        "{e}"
    );
}

#[test]
fn instance_ids_give_the_official_iiou_and_categories_always_have_their_iou() {
    // The golden pair's one car pixel is an instance (26000), predicted void: car iIoU 0.
    let f = Fixture::golden();
    let (gt, _) = golden_pair();
    let inst: Vec<u16> = gt.iter().map(|&g| if g == 26 { 26000 } else { u16::from(g) }).collect();
    let inst_path = |city: &str, stem: &str| {
        f.root
            .join("gtFine/val")
            .join(city)
            .join(format!("{stem}_gtFine_instanceIds.png"))
    };
    let frankfurt = inst_path("frankfurt", "frankfurt_000000_000294");
    seg_labels::png_io::write_gray16(&frankfurt, W, H, &inst).unwrap();
    // Without every image's instances, no iIoU, and the report says which one lacks them.
    let r = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    assert_eq!((r.mean_iiou, r.instances), (None, None));
    assert_eq!(r.class_iiou.get("car"), Some(None));
    let w = r
        .warnings
        .iter()
        .find(|w| w.starts_with("iIoU n/a"))
        .expect("a warning");
    assert!(
        w.contains("1 of 2 image(s)") && w.contains("lindau_000001_000019_gtFine_instanceIds.png not found"),
        "{w}"
    );
    // Category IoU needs no instances: flat is all right, vehicle all wrong.
    assert_eq!(r.category_iou.get("flat"), Some(Some(1.0)));
    assert_eq!(r.category_iou.get("vehicle"), Some(Some(0.0)));
    assert_eq!(r.category_iou.get("sky"), Some(None));
    assert_eq!(r.mean_category_iou, Some(0.5));

    seg_labels::png_io::write_gray16(&inst_path("lindau", "lindau_000001_000019"), W, H, &inst).unwrap();
    let r = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    assert!(!r.warnings.iter().any(|w| w.starts_with("iIoU")), "{:?}", r.warnings);
    assert_eq!(r.instances, Some(2));
    assert_eq!(r.class_iiou.get("car"), Some(Some(0.0)));
    assert_eq!(r.class_iiou.get("person"), Some(None));
    assert_eq!(r.class_iiou.get("road"), None, "road has no instances");
    assert_eq!((r.mean_iiou, r.mean_category_iiou), (Some(0.0), Some(0.0)));
    let out = f.root.parent().unwrap().join("out_inst");
    r.write(&out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["category_iou"]["flat"], 1.0);
    assert_eq!(json["class_iiou"]["car"], 0.0);
    assert!(json["category_iiou"]["human"].is_null());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| car | 0.00 | 0.00 |") && md.contains("| road | 66.67 | - |"),
        "{md}"
    );
    assert!(
        md.contains("| flat | 100.00 | - |") && md.contains("| vehicle | 0.00 | 0.00 |"),
        "{md}"
    );
    assert!(r
        .text_table()
        .contains("categories mIoU 50.00 %; iIoU 0.00 % (classes), 0.00 % (categories)"));
    // A size that is not the ground truth's is no instance map.
    seg_labels::png_io::write_gray16(&frankfurt, 1, 1, &[7]).unwrap();
    let r = evaluate_folder(&f.opts()).unwrap().finish(Protocol::Classes19);
    assert!(
        r.warnings.iter().any(|w| w.contains("is 1x1 but the labels are 7x3")),
        "{:?}",
        r.warnings
    );
}
