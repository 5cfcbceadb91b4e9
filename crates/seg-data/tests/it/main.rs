//! Integration tests of the readers, inspection, loader and the embedded benchmark, on small
//! files in the real on-disk formats written into a temporary directory per test.

use std::path::Path;
use std::sync::Arc;

use seg_data::{open_dataset, Augment, DataConfig, DatasetName, DatasetOptions, ErrorPolicy, Loader, Role, SizePolicy};
use seg_labels::cityscapes::label_id_palette;
use seg_labels::png_io::{self, RgbImage};

fn rgb(w: u32, h: u32, v: u8) -> RgbImage {
    RgbImage {
        width: w,
        height: h,
        data: vec![v; (w * h * 3) as usize],
    }
}

fn labelled() -> DatasetOptions {
    DatasetOptions {
        require_labels: true,
        ..Default::default()
    }
}

/// A GTA5 tree: `00001` good (palette), `00002` label size mismatch, `00003` truncated image.
fn gta5_tree(root: &Path) {
    let pal = label_id_palette();
    // 4x2 label: road, sidewalk, car, sky / unlabeled, 34 (outside the table), person, bicycle.
    let ids = [7u8, 8, 26, 23, 0, 34, 24, 33];
    png_io::write_rgb(&root.join("images/00001.png"), &rgb(4, 2, 10)).unwrap();
    png_io::write_palette8(&root.join("labels/00001.png"), 4, 2, &ids, &pal).unwrap();
    png_io::write_rgb(&root.join("images/00002.png"), &rgb(4, 2, 10)).unwrap();
    png_io::write_palette8(&root.join("labels/00002.png"), 2, 1, &[7, 8], &pal).unwrap();
    png_io::write_rgb(&root.join("images/00003.png"), &rgb(64, 64, 99)).unwrap();
    let bytes = std::fs::read(root.join("images/00003.png")).unwrap();
    std::fs::write(root.join("images/00003.png"), &bytes[..bytes.len() - 20]).unwrap();
    png_io::write_palette8(&root.join("labels/00003.png"), 64, 64, &[7; 64 * 64], &pal).unwrap();
}

#[test]
fn gta5_palette_labels_are_read_as_indices_and_problems_listed() {
    let dir = tempfile::tempdir().unwrap();
    gta5_tree(dir.path());
    let ds = open_dataset(DatasetName::Gta5, dir.path(), "all", labelled()).unwrap();
    assert_eq!(ds.len(), 3);
    let s = ds.get(0).unwrap();
    assert_eq!(s.label.unwrap(), vec![0, 1, 13, 10, 255, 255, 11, 18]);
    assert_eq!(s.outside_ids, 1);

    let r = seg_data::inspect(&ds);
    assert_eq!(r.usable, 1);
    assert_eq!(r.class_pixels[0], 1);
    assert_eq!(r.class_pixels[13], 1);
    assert_eq!(r.ignored_pixels, 2);
    assert_eq!(r.outside_table_pixels, 1);
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(r.problems[0].file.ends_with("00002.png"));
    assert!(
        r.problems[0].reason.contains("4x2") && r.problems[0].reason.contains("2x1"),
        "{:?}",
        r.problems[0]
    );
    assert!(r.problems[1].file.ends_with("images/00003.png"));
    assert!(r.problems[1].reason.contains("not a valid PNG"), "{:?}", r.problems[1]);
    assert_eq!(r.train_ids_warning(), None);
    // An image without its label is told as such, naming the label looked for.
    png_io::write_rgb(&dir.path().join("images/00004.png"), &rgb(4, 2, 10)).unwrap();
    let ds = open_dataset(DatasetName::Gta5, dir.path(), "all", labelled()).unwrap();
    let e = ds.get(3).unwrap_err().to_string();
    assert!(
        e.contains("images/00004.png: no label file for this image (expected") && e.contains("labels/00004.png"),
        "{e}"
    );
}

#[test]
fn an_image_is_read_by_its_content_a_jpeg_named_png_too() {
    // PIL and OpenCV read a file by its content; so does the reader (labels stay PNG).
    let dir = tempfile::tempdir().unwrap();
    gta5_tree(dir.path());
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
        .encode(&[10u8; 4 * 2 * 3], 4, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(dir.path().join("images/00001.png"), &jpeg).unwrap();
    let ds = open_dataset(DatasetName::Gta5, dir.path(), "all", labelled()).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!((s.image.width, s.image.height), (4, 2));
    assert!(s.image.data.iter().all(|&v| v.abs_diff(10) <= 2), "{:?}", s.image.data);
    assert_eq!(png_io::read_size(&dir.path().join("images/00001.png")).unwrap(), (4, 2));
    // Cut short, it is named as such.
    std::fs::write(dir.path().join("images/00001.png"), &jpeg[..jpeg.len() - 2]).unwrap();
    let e = ds.get(0).unwrap_err().to_string();
    assert!(e.contains("00001.png") && e.contains("truncated JPEG"), "{e}");
}

#[test]
fn labels_already_in_train_ids_are_named_as_such() {
    // A GTA5 label converted to train ids (road 0, sidewalk 1, car 13, sky 10, ignore 255), as
    // DAFormer's conversion writes it, read as the label ids GTA5 holds.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    png_io::write_rgb(&root.join("images/00001.png"), &rgb(4, 2, 10)).unwrap();
    png_io::write_gray8(&root.join("labels/00001.png"), 4, 2, &[0, 0, 1, 13, 10, 255, 255, 0]).unwrap();
    let ds = open_dataset(DatasetName::Gta5, root, "all", labelled()).unwrap();
    let w = seg_data::inspect(&ds).train_ids_warning().unwrap();
    assert!(w.contains("look like train ids") && w.contains("label ids 0-33"), "{w}");
}

#[test]
fn a_split_list_leaves_the_other_pairs_out_without_calling_them_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta5_tree(root);
    // A label with no image at all is the one orphan, list or not.
    png_io::write_palette8(&root.join("labels/00009.png"), 1, 1, &[7], &label_id_palette()).unwrap();
    // DAFormer's conversion writes a trainIds companion beside each label: no orphan.
    png_io::write_gray8(&root.join("labels/00001_labelTrainIds.png"), 1, 1, &[0]).unwrap();
    let list = root.join("train.txt");
    // Saved with a byte-order mark, as Notepad saves UTF-8.
    std::fs::write(&list, "\u{feff}00001.png\n").unwrap();
    let opts = DatasetOptions {
        list: Some(list),
        ..labelled()
    };
    let ds = open_dataset(DatasetName::Gta5, root, "train", opts).unwrap();
    assert_eq!(ds.len(), 1);
    let r = seg_data::inspect(&ds);
    assert_eq!((r.samples, r.usable), (1, 1));
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].file.ends_with("labels/00009.png"), "{:?}", r.problems);
    assert_eq!(r.problems[0].kind, seg_data::inspect::ProblemKind::OrphanLabel);
    assert_eq!(r.problems[0].reason, "label file with no matching image");
    // A folder where the label's image belongs is said to be one.
    std::fs::create_dir(root.join("images/00009.png")).unwrap();
    let r = seg_data::inspect(&open_dataset(DatasetName::Gta5, root, "train", labelled()).unwrap());
    let orphan = r
        .problems
        .iter()
        .find(|p| p.file.ends_with("labels/00009.png"))
        .unwrap();
    assert!(
        orphan.reason.ends_with("images/00009.png is a folder, not an image"),
        "{orphan:?}"
    );
}

/// The crop check's sizes: the widest and the tallest image, whatever the order of the files.
#[test]
fn the_widest_and_tallest_images_are_found_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    for (name, w, h) in [
        ("00001", 72, 40),
        ("00002", 128, 30),
        ("00003", 100, 64),
        ("00004", 128, 64),
    ] {
        png_io::write_rgb(&dir.path().join(format!("images/{name}.png")), &rgb(w, h, 1)).unwrap();
    }
    std::fs::write(dir.path().join("images/00005.png"), b"not a png").unwrap();
    let ds = open_dataset(DatasetName::Gta5, dir.path(), "all", DatasetOptions::default()).unwrap();
    let [(wide, ws), (tall, ts)] = ds.largest_image_sizes().unwrap();
    // On a tie, the first in entry order.
    assert!(wide.ends_with("images/00002.png") && ws == (128, 30), "{wide:?} {ws:?}");
    assert!(tall.ends_with("images/00003.png") && ts == (100, 64), "{tall:?} {ts:?}");
}

#[test]
fn size_mismatch_policy_resizes_with_nearest() {
    let dir = tempfile::tempdir().unwrap();
    gta5_tree(dir.path());
    let opts = DatasetOptions {
        size_policy: SizePolicy::ResizeLabelNearest,
        ..labelled()
    };
    let ds = open_dataset(DatasetName::Gta5, dir.path(), "all", opts).unwrap();
    let s = ds.get(1).unwrap();
    assert_eq!(s.label.unwrap(), vec![0, 0, 1, 1, 0, 0, 1, 1]);
}

#[test]
fn synthia_16bit_labels_use_the_first_channel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    png_io::write_rgb(&root.join("RGB/0000000.png"), &rgb(3, 1, 5)).unwrap();
    // road (3), lanemarking (22, ignored), and 300 (outside the table); instance in channel 1.
    png_io::write_rgb16(
        &root.join("GT/LABELS/0000000.png"),
        3,
        1,
        &[[3, 9, 0], [22, 0, 0], [300, 1, 0]],
    )
    .unwrap();
    let ds = open_dataset(DatasetName::Synthia, root, "all", labelled()).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(s.label.unwrap(), vec![0, 255, 255]);
    assert_eq!(s.outside_ids, 1);
}

#[test]
fn colour_label_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    png_io::write_rgb(&root.join("images/00001.png"), &rgb(2, 2, 5)).unwrap();
    png_io::write_rgb(&root.join("labels/00001.png"), &rgb(2, 2, 128)).unwrap();
    let ds = open_dataset(DatasetName::Gta5, root, "all", labelled()).unwrap();
    let e = ds.get(0).unwrap_err().to_string();
    assert!(e.contains("labels/00001.png") && e.contains("colour"), "{e}");
}

fn cityscapes_tree(root: &Path) {
    for (split, city, seq) in [("train", "aachen", 0), ("train", "aachen", 1), ("val", "lindau", 5)] {
        let stem = format!("{city}_{seq:06}_000019");
        png_io::write_rgb(
            &root.join(format!("leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")),
            &rgb(4, 2, 1),
        )
        .unwrap();
        let gt = root.join(format!("gtFine/{split}/{city}"));
        png_io::write_gray8(
            &gt.join(format!("{stem}_gtFine_labelIds.png")),
            4,
            2,
            &[7, 8, 11, 9, 23, 24, 33, 1],
        )
        .unwrap();
    }
}

#[test]
fn cityscapes_pairs_by_name_and_accepts_a_split_list() {
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    let ds = open_dataset(DatasetName::Cityscapes, dir.path(), "train", labelled()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.entries()[0].name, "aachen_000000_000019");
    assert_eq!(ds.get(1).unwrap().label.unwrap(), vec![0, 1, 2, 255, 10, 11, 18, 255]);

    let list = dir.path().join("val.txt");
    std::fs::write(&list, "lindau/lindau_000005_000019_leftImg8bit.png\n").unwrap();
    let opts = DatasetOptions {
        list: Some(list),
        ..labelled()
    };
    let ds = open_dataset(DatasetName::Cityscapes, dir.path(), "val", opts).unwrap();
    assert_eq!(ds.len(), 1);
    assert!(ds.get(0).is_ok());
    // Each way of naming one image: the file, its stem (Python's `Path.stem`), the bare name.
    for line in [
        "lindau_000005_000019_leftImg8bit.png",
        "lindau_000005_000019_leftImg8bit",
        "lindau_000005_000019",
        "gtFine/val/lindau/lindau_000005_000019_gtFine_labelIds.png",
    ] {
        let list = dir.path().join("one.txt");
        std::fs::write(&list, format!("{line}\n")).unwrap();
        let opts = DatasetOptions {
            list: Some(list),
            ..labelled()
        };
        let ds = open_dataset(DatasetName::Cityscapes, dir.path(), "val", opts).unwrap();
        assert_eq!(ds.entries()[0].name, "lindau_000005_000019", "{line}");
        assert!(ds.get(0).is_ok(), "{line}");
    }

    // labelTrainIds are used where labelIds are absent.
    let gt = dir.path().join("gtFine/val/lindau");
    std::fs::remove_file(gt.join("lindau_000005_000019_gtFine_labelIds.png")).unwrap();
    png_io::write_gray8(
        &gt.join("lindau_000005_000019_gtFine_labelTrainIds.png"),
        4,
        2,
        &[0, 1, 2, 255, 18, 19, 3, 3],
    )
    .unwrap();
    let ds = open_dataset(DatasetName::Cityscapes, dir.path(), "val", labelled()).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(s.label.unwrap(), vec![0, 1, 2, 255, 18, 255, 3, 3]);
    assert_eq!(s.outside_ids, 1);
    // `inspect` (and `check`) say it before a run does: not what the official evaluator counts.
    let w = seg_data::inspect(&ds).warnings();
    assert!(
        w.len() == 1 && w[0].starts_with("1 ground-truth image(s) have only `*_gtFine_labelTrainIds.png`"),
        "{w:?}"
    );
}

#[test]
fn run_config_lists_pick_the_target_samples_of_each_role() {
    // AdaptSegNet's `cityscapes_list/{train,val}.txt` lines: `city/stem_leftImg8bit.png`.
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    gta5_tree(&dir.path().join("gta5"));
    let mut cfg = DataConfig::new(
        DatasetName::Gta5,
        dir.path().join("gta5"),
        DatasetName::Cityscapes,
        dir.path().to_path_buf(),
    );
    let names = |cfg: &DataConfig, role| -> Vec<String> {
        cfg.open(role)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.name.clone())
            .collect()
    };
    assert_eq!(names(&cfg, Role::TargetTrain).len(), 2);
    // Unlabelled target training reads no labels: a junk one and one of another size neither
    // stop the run nor leave their images out; the oracle's labelled split still checks them.
    let gt = dir.path().join("gtFine/train/aachen");
    std::fs::write(gt.join("aachen_000000_000019_gtFine_labelIds.png"), b"junk").unwrap();
    png_io::write_gray8(&gt.join("aachen_000001_000019_gtFine_labelIds.png"), 2, 2, &[7; 4]).unwrap();
    let mut unlabelled = cfg.open(Role::TargetTrain).unwrap();
    assert!(unlabelled.entries().iter().all(|e| e.label.is_none()));
    assert!(unlabelled.leave_out_unusable().unwrap().is_empty());
    assert!(cfg
        .open(Role::TargetTrainLabelled)
        .unwrap()
        .leave_out_unusable()
        .is_err());
    cityscapes_tree(dir.path());
    let train = dir.path().join("train.txt");
    std::fs::write(
        &train,
        "aachen/aachen_000001_000019_leftImg8bit.png
",
    )
    .unwrap();
    let val = dir.path().join("val.txt");
    std::fs::write(
        &val,
        "lindau/lindau_000005_000019_leftImg8bit.png
lindau/lindau_000009_000019_leftImg8bit.png
",
    )
    .unwrap();
    cfg.target_train_list = Some(train);
    cfg.target_val_list = Some(val);
    assert_eq!(names(&cfg, Role::TargetTrain), ["aachen_000001_000019"]);
    assert_eq!(names(&cfg, Role::TargetTrainLabelled), ["aachen_000001_000019"]);
    assert_eq!(names(&cfg, Role::Source).len(), 3, "the source list is its own key");
    // A listed image that is not on disk stops the run naming it, or is left out under "skip".
    let mut ds = cfg.open(Role::Val).unwrap();
    assert_eq!(ds.len(), 2);
    let e = ds.leave_out_unusable().unwrap_err().to_string();
    assert!(
        e.contains("lindau_000009_000019_leftImg8bit.png") && e.contains("not found"),
        "{e}"
    );
    cfg.error_policy = ErrorPolicy::Skip;
    let mut ds = cfg.open(Role::Val).unwrap();
    let left = ds.leave_out_unusable().unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(left.len(), 1);
    assert!(
        left[0].name.contains("lindau_000009") && left[0].reason.contains("lindau_000009"),
        "{left:?}"
    );
    // The labelled roles need the labels; the target's unlabelled training split does not.
    std::fs::remove_dir_all(dir.path().join("gtFine/train")).unwrap();
    assert!(cfg.open(Role::TargetTrain).is_ok());
    let e = cfg.open(Role::TargetTrainLabelled).unwrap_err().to_string();
    assert!(e.contains("gtFine/train"), "{e}");
    // A line of another split, and a list naming nothing, name the list.
    let val = cfg.target_val_list.clone().unwrap();
    std::fs::write(&val, "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png\n").unwrap();
    let e = cfg.open(Role::Val).unwrap_err().to_string();
    assert!(e.contains("val.txt") && e.contains("names the `train` split"), "{e}");
    std::fs::write(&val, "00001.png\n").unwrap();
    let e = cfg.open(Role::Val).unwrap_err().to_string();
    assert!(e.contains("line `00001.png` is no Cityscapes image name"), "{e}");
    std::fs::write(&val, "# nothing yet\n\n").unwrap();
    let e = cfg.open(Role::Val).unwrap_err().to_string();
    assert!(
        e.contains("the split list") && e.contains("val.txt names no images"),
        "{e}"
    );
}

#[test]
fn linked_city_folders_are_cities() {
    // A city kept elsewhere and linked in (images and labels), as the official evaluator's
    // glob follows the link; a link that leads nowhere is no city.
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    let away = dir.path().join("elsewhere");
    for top in ["leftImg8bit", "gtFine"] {
        let city = dir.path().join(top).join("train/aachen");
        let moved = away.join(top);
        std::fs::create_dir_all(&moved).unwrap();
        std::fs::rename(&city, moved.join("aachen")).unwrap();
        std::os::unix::fs::symlink(moved.join("aachen"), &city).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join(top).join("train/gone")).unwrap();
    }
    let ds = open_dataset(DatasetName::Cityscapes, dir.path(), "train", labelled()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(1).unwrap().label.unwrap(), vec![0, 1, 2, 255, 10, 11, 18, 255]);
}

#[test]
fn a_label_city_folder_that_cannot_be_listed_is_named() {
    // A file, or a link that leads nowhere, where a city's label folder belongs: the folder is
    // named once, not each of its labels called missing. (A folder without read permission
    // takes the same path, but cannot be made here: tests may run as root.)
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    let city = dir.path().join("gtFine/train/aachen");
    std::fs::remove_dir_all(&city).unwrap();
    std::fs::write(&city, b"not a folder").unwrap();
    let e = open_dataset(DatasetName::Cityscapes, dir.path(), "train", labelled()).unwrap_err();
    assert_eq!(e.file(), Some(city.as_path()), "{e}");
    assert!(e.to_string().contains("cannot list"), "{e}");
    std::fs::remove_file(&city).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &city).unwrap();
    let e = open_dataset(DatasetName::Cityscapes, dir.path(), "train", labelled()).unwrap_err();
    assert_eq!(e.file(), Some(city.as_path()), "{e}");
    // Unlabelled reading (target training) does not look at the labels.
    let unlabelled = DatasetOptions {
        require_labels: false,
        ..Default::default()
    };
    assert_eq!(
        open_dataset(DatasetName::Cityscapes, dir.path(), "train", unlabelled)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn missing_roots_and_empty_splits_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_dataset(DatasetName::Cityscapes, &dir.path().join("nope"), "val", labelled())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("not found"), "{e}");
    // A file where the root belongs is said to be one, not "not found".
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    for name in [DatasetName::Cityscapes, DatasetName::Gta5] {
        let e = open_dataset(name, &file, "val", labelled()).unwrap_err().to_string();
        assert!(e.ends_with("afile is a file, not a folder"), "{e}");
    }
    let e = open_dataset(DatasetName::Cityscapes, dir.path(), "val", labelled())
        .unwrap_err()
        .to_string();
    assert!(e.contains("leftImg8bit/val"), "{e}");
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::fs::create_dir_all(dir.path().join("labels")).unwrap();
    let e = open_dataset(DatasetName::Gta5, dir.path(), "all", labelled())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no images found (looked for images/*.png)"), "{e}");
    // What is there instead is counted, with an example (JPEGs where PNGs are read).
    let val = dir.path().join("leftImg8bit/val/lindau");
    std::fs::create_dir_all(&val).unwrap();
    std::fs::create_dir_all(dir.path().join("gtFine/val/lindau")).unwrap();
    std::fs::write(val.join("lindau_000000_000019_leftImg8bit.jpg"), b"x").unwrap();
    std::fs::write(val.join("lindau_000001_000019_leftImg8bit.jpg"), b"x").unwrap();
    let e = open_dataset(DatasetName::Cityscapes, dir.path(), "val", labelled())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("looked for leftImg8bit/val/{city}/*_leftImg8bit.png; 2 other file(s) there, such as leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.jpg"),
        "{e}"
    );
}

/// A Cityscapes train split on disk, opened, and a random-scale 3×3-crop augmentation (the
/// folder lives as long as the first value).
fn loader_fixture() -> (tempfile::TempDir, Arc<seg_data::Dataset>, Augment) {
    let dir = tempfile::tempdir().unwrap();
    cityscapes_tree(dir.path());
    let ds = Arc::new(open_dataset(DatasetName::Cityscapes, dir.path(), "train", labelled()).unwrap());
    let aug = Augment {
        crop: Some([3, 3]),
        scale_range: [0.8, 1.5],
        ..Default::default()
    };
    (dir, ds, aug)
}

#[test]
fn loader_batches_are_seeded_and_resumable() {
    let (_dir, ds, aug) = loader_fixture();
    let dev = candle_core::Device::Cpu;
    let mut a = Loader::new(ds.clone(), 2, aug.clone(), 7, seg_core::Domain::Source, dev.clone());
    let first = a.next_batch().unwrap();
    assert_eq!(first.images.dims(), &[2, 3, 3, 3]);
    assert_eq!(first.labels.as_ref().unwrap().dims(), &[2, 3, 3]);
    let state = a.state();
    let second = a.next_batch().unwrap();
    let mut b = Loader::new(ds, 2, aug, 7, seg_core::Domain::Source, dev);
    b.restore(state);
    let again = b.next_batch().unwrap();
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&second.images), flat(&again.images));
    assert_eq!(second.names, again.names);
}

/// Batches prepared ahead in the background are the batches prepared on demand, in the same
/// order; the state is the position after the last batch handed out, so restoring it (with or
/// without lookahead) continues the same sequence.
#[test]
fn loader_lookahead_gives_the_same_batches_and_resumes_exactly() {
    let (_dir, ds, aug) = loader_fixture();
    let dev = candle_core::Device::Cpu;
    let loader = |ahead: usize| {
        Loader::new(ds.clone(), 2, aug.clone(), 11, seg_core::Domain::Source, dev.clone()).with_lookahead(ahead)
    };
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let batches = |l: &mut Loader, n: usize| {
        (0..n)
            .map(|_| {
                let b = l.next_batch().unwrap();
                (
                    b.names.clone(),
                    flat(&b.images),
                    flat(&b.labels.unwrap().to_dtype(candle_core::DType::F32).unwrap()),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut plain = loader(0);
    let reference = batches(&mut plain, 7);
    let mut p = loader(0);
    batches(&mut p, 3);
    let after_three = p.state();
    for ahead in [1, 3] {
        let mut l = loader(ahead);
        let first = batches(&mut l, 3);
        assert_eq!(first, reference[..3], "lookahead {ahead}");
        let state = l.state();
        assert_eq!(
            state, after_three,
            "the state counts the batches handed out, lookahead {ahead}"
        );
        let mut again = loader(0);
        again.restore(state);
        assert_eq!(
            batches(&mut again, 4),
            reference[3..],
            "restored without lookahead, from {ahead}"
        );
        let mut again = loader(ahead);
        again.restore(state);
        assert_eq!(
            batches(&mut again, 4),
            reference[3..],
            "restored with lookahead {ahead}"
        );
        assert_eq!(batches(&mut l, 4), reference[3..], "lookahead {ahead}, continued");
    }
}

/// A loader with lookahead used from inside a one-thread rayon pool (its jobs queue on the
/// thread that waits for them) still hands out its batches: the wait runs the queued jobs.
#[test]
fn loader_lookahead_inside_a_rayon_job_does_not_wait_on_itself() {
    let (_dir, ds, aug) = loader_fixture();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let names = pool.install(|| {
        let mut l = Loader::new(
            ds.clone(),
            2,
            aug.clone(),
            3,
            seg_core::Domain::Source,
            candle_core::Device::Cpu,
        )
        .with_lookahead(3);
        (0..4).map(|_| l.next_batch().unwrap().names).collect::<Vec<_>>()
    });
    let mut plain = Loader::new(ds, 2, aug, 3, seg_core::Domain::Source, candle_core::Device::Cpu);
    let expected: Vec<_> = (0..4).map(|_| plain.next_batch().unwrap().names).collect();
    assert_eq!(names, expected);
}

#[test]
fn loader_skips_or_fails_on_a_corrupt_sample_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    gta5_tree(dir.path());
    let aug = Augment {
        crop: Some([2, 2]),
        ..Default::default()
    };
    let dev = candle_core::Device::Cpu;
    let fail = Arc::new(open_dataset(DatasetName::Gta5, dir.path(), "all", labelled()).unwrap());
    let mut l = Loader::new(fail, 3, aug.clone(), 1, seg_core::Domain::Source, dev.clone());
    let e = l.next_batch().unwrap_err().to_string();
    assert!(e.contains("0000"), "{e}");
    let opts = DatasetOptions {
        error_policy: ErrorPolicy::Skip,
        ..labelled()
    };
    let skip = Arc::new(open_dataset(DatasetName::Gta5, dir.path(), "all", opts).unwrap());
    let mut l = Loader::new(skip.clone(), 3, aug.clone(), 1, seg_core::Domain::Source, dev.clone());
    let b = l.next_batch().unwrap();
    assert!(b.names.iter().all(|n| n == "00001"), "{:?}", b.names);
    // The same batch when decoded ahead in the background.
    let mut l = Loader::new(skip, 3, aug, 1, seg_core::Domain::Source, dev).with_lookahead(2);
    let ahead = l.next_batch().unwrap();
    assert_eq!(ahead.names, b.names);
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&ahead.images), flat(&b.images));
}

#[test]
fn a_damaged_benchmark_is_told_from_a_whole_one_and_written_again_as_it_was() {
    use seg_data::toy::{self, Preset};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(toy::stale(d, 1, Preset::Quick)
        .unwrap()
        .contains("no complete benchmark"));
    toy::generate(d, 1, Preset::Quick).unwrap();
    assert_eq!(toy::stale(d, 1, Preset::Quick), None);
    assert!(toy::stale(d, 2, Preset::Quick).unwrap().contains("seed 1"));
    assert!(toy::stale(d, 1, Preset::Default).unwrap().contains("Quick"));
    // Hidden files (a stopped write's temp file, Finder's) are no part of it.
    std::fs::write(d.join("cityscapes/.DS_Store"), b"").unwrap();
    assert_eq!(toy::stale(d, 1, Preset::Quick), None);
    let label = d.join("cityscapes/gtFine/val/frankfurt");
    let label = std::fs::read_dir(&label).unwrap().next().unwrap().unwrap().path();
    let original = std::fs::read(&label).unwrap();
    // Truncated, changed in place (same size), or gone: each is told apart.
    std::fs::write(&label, &original[..original.len() / 2]).unwrap();
    assert!(toy::stale(d, 1, Preset::Quick).unwrap().contains("changed"));
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    std::fs::write(&label, &flipped).unwrap();
    assert!(toy::stale(d, 1, Preset::Quick).unwrap().contains("changed"));
    std::fs::remove_file(&label).unwrap();
    let why = toy::stale(d, 1, Preset::Quick).unwrap();
    let written = toy::read_manifest(d).unwrap().contents.unwrap().files;
    assert!(
        why.contains(&format!("holds {} files where {written} were written", written - 1)),
        "{why}"
    );
    // The generator is deterministic: written again, the benchmark is the one that was.
    toy::generate(d, 1, Preset::Quick).unwrap();
    assert_eq!(std::fs::read(&label).unwrap(), original);
    assert_eq!(toy::stale(d, 1, Preset::Quick), None);
    // A manifest of an earlier version, without a record of its files, is written again.
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("toy.json")).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("contents");
    std::fs::write(d.join("toy.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    assert!(toy::stale(d, 1, Preset::Quick).unwrap().contains("earlier version"));
}

#[test]
fn toy_benchmark_replaces_its_own_files_and_never_touches_real_data() {
    let dir = tempfile::tempdir().unwrap();
    seg_data::toy::generate(dir.path(), 3, seg_data::toy::Preset::Quick).unwrap();
    // A file of a larger preset's benchmark (more images) is gone after generating again.
    let stray = dir.path().join("gta5/images/99999.png");
    std::fs::copy(dir.path().join("gta5/images/00001.png"), &stray).unwrap();
    seg_data::toy::generate(dir.path(), 4, seg_data::toy::Preset::Quick).unwrap();
    assert!(!stray.exists());
    assert_eq!(seg_data::toy::read_manifest(dir.path()).unwrap().seed, 4);
    assert!(
        !dir.path().join(seg_data::toy::INCOMPLETE).exists(),
        "the marker goes once done"
    );
    // A benchmark whose writing was stopped (its marker, no toy.json, a temporary file left)
    // is replaced by the next one, as a stopped demo is run again.
    std::fs::remove_file(dir.path().join("toy.json")).unwrap();
    std::fs::write(dir.path().join(seg_data::toy::INCOMPLETE), b"").unwrap();
    let tmp = dir.path().join("sim10k/VOC2012/Annotations/.3000088.xml.11234.tmp");
    std::fs::write(&tmp, b"half").unwrap();
    seg_data::toy::generate(dir.path(), 5, seg_data::toy::Preset::Quick).unwrap();
    assert_eq!(seg_data::toy::read_manifest(dir.path()).unwrap().seed, 5);
    assert!(!tmp.exists() && !dir.path().join(seg_data::toy::INCOMPLETE).exists());
    // Dataset folders without a toy.json are refused, and left as they are.
    let real = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(real.path().join("gta5/images")).unwrap();
    std::fs::write(real.path().join("gta5/images/00001.png"), b"a real image").unwrap();
    let e = seg_data::toy::generate(real.path(), 0, seg_data::toy::Preset::Quick)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gta5/") && e.contains("toy.json"), "{e}");
    assert_eq!(
        std::fs::read(real.path().join("gta5/images/00001.png")).unwrap(),
        b"a real image"
    );
}

#[test]
fn toy_benchmark_is_deterministic_and_readable() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let m = seg_data::toy::generate(a.path(), 3, seg_data::toy::Preset::Quick).unwrap();
    seg_data::toy::generate(b.path(), 3, seg_data::toy::Preset::Quick).unwrap();
    for rel in [
        "gta5/images/00007.png",
        "gta5/labels/00007.png",
        "synthia/GT/LABELS/0000005.png",
        "cityscapes/leftImg8bit/val/lindau/lindau_000121_000019_leftImg8bit.png",
        "cityscapes/gtFine/val/lindau/lindau_000121_000019_gtFine_labelIds.png",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(rel)).unwrap(),
            std::fs::read(b.path().join(rel)).unwrap(),
            "{rel}"
        );
    }
    let (gta, syn, cs) = seg_data::toy::paths(a.path());
    for (name, root, split, n) in [
        (DatasetName::Gta5, gta, "all", m.sizes.gta5),
        (DatasetName::Synthia, syn, "all", m.sizes.synthia),
        (DatasetName::Cityscapes, cs.clone(), "train", m.sizes.target_train),
        (DatasetName::Cityscapes, cs, "val", m.sizes.target_val),
    ] {
        let ds = open_dataset(name, &root, split, labelled()).unwrap();
        let r = seg_data::inspect(&ds);
        assert_eq!((r.samples, r.usable), (n, n), "{name} {split}: {:?}", r.problems);
        assert!(r.problems.is_empty());
        // Every scene has road, sky and cars somewhere.
        for c in [0, 10, 13] {
            assert!(r.class_pixels[c] > 0, "{name} {split} class {c}");
        }
    }
}

#[test]
fn toy_target_colours_stay_nearest_their_own_source_colour() {
    // Version 1 shifted every class 45% of the way toward a "real" colour, which put 9 of 18
    // classes nearer another class's source colour (road -> pole, car -> truck, ...): a label
    // swap no unsupervised method can undo. Every class must keep its own source colour as the
    // nearest one, with a margin.
    let palette = seg_data::toy::target_palette();
    assert_eq!(palette.len(), 18);
    let dist = |a: [f32; 3], b: [f32; 3]| ((0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>()).sqrt();
    let mut shifted = 0;
    for &(id, src, tgt) in &palette {
        let own = dist(tgt, src);
        for &(other, osrc, _) in &palette {
            if other != id {
                let d = dist(tgt, osrc);
                assert!(
                    own <= seg_data::toy::NEAREST_RATIO * d + 1e-3,
                    "class {id}: target colour {tgt:?} is {own:.1} from its source colour and {d:.1} from class {other}'s"
                );
            }
        }
        if own >= 10.0 {
            shifted += 1;
        }
    }
    // And the gap is real: most classes do move.
    assert!(shifted >= 10, "only {shifted} classes shifted by 10 or more");
}

#[test]
fn toy_seeds_make_other_instances() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    seg_data::toy::generate(a.path(), 3, seg_data::toy::Preset::Quick).unwrap();
    seg_data::toy::generate(b.path(), 4, seg_data::toy::Preset::Quick).unwrap();
    let rel = "gta5/labels/00007.png";
    assert_ne!(
        std::fs::read(a.path().join(rel)).unwrap(),
        std::fs::read(b.path().join(rel)).unwrap()
    );
}
