//! Pictures for people: label maps in the official colours, predictions blended over the
//! camera image, error maps, and a contact sheet of a few images
//! (image | ground truth | prediction | error map).

use seg_labels::{RgbImage, IGNORE, TRAIN_COLORS};

/// Colour of an ignored (255) pixel in colour label maps.
pub const IGNORE_COLOR: [u8; 3] = [0, 0, 0];
/// Error map: a correct pixel.
pub const CORRECT_COLOR: [u8; 3] = [200, 200, 200];
/// Error map: a wrong pixel (void predictions included).
pub const WRONG_COLOR: [u8; 3] = [230, 25, 25];
/// Placeholder tile colour where a picture (the camera image) is unavailable.
const MISSING_COLOR: [u8; 3] = [64, 64, 64];
/// Gap between sheet tiles.
const GAP: u32 = 4;

fn color_of(train_id: u8) -> [u8; 3] {
    TRAIN_COLORS.get(train_id as usize).copied().unwrap_or(IGNORE_COLOR)
}

fn from_pixels(width: u32, height: u32, pixels: impl Iterator<Item = [u8; 3]>) -> RgbImage {
    let mut data = Vec::with_capacity(3 * width as usize * height as usize);
    for p in pixels {
        data.extend_from_slice(&p);
    }
    RgbImage { width, height, data }
}

/// A train-id map in the official Cityscapes colours; 255 (and anything outside 0..=18) black.
pub fn colorize(width: u32, height: u32, train_ids: &[u8]) -> RgbImage {
    from_pixels(width, height, train_ids.iter().map(|&t| color_of(t)))
}

/// `image` with the prediction's colours blended over it at `alpha` (0.5 in reports).
/// Pixels predicted 255 show the image unchanged. `image` must have the label map's size.
pub fn overlay(image: &RgbImage, train_ids: &[u8], alpha: f32) -> RgbImage {
    let blend = |a: u8, b: u8| (a as f32 * (1.0 - alpha) + b as f32 * alpha).round().clamp(0.0, 255.0) as u8;
    let pixels = image.data.chunks_exact(3).zip(train_ids).map(|(px, &t)| {
        if (t as usize) < TRAIN_COLORS.len() {
            let c = color_of(t);
            [blend(px[0], c[0]), blend(px[1], c[1]), blend(px[2], c[2])]
        } else {
            [px[0], px[1], px[2]]
        }
    });
    from_pixels(image.width, image.height, pixels)
}

/// Black where the ground truth is ignored, light gray where the prediction is right, red
/// where it is wrong.
pub fn error_map(width: u32, height: u32, gt: &[u8], pred: &[u8]) -> RgbImage {
    let pixels = gt.iter().zip(pred).map(|(&g, &p)| match g {
        IGNORE => IGNORE_COLOR,
        _ if g == p => CORRECT_COLOR,
        _ => WRONG_COLOR,
    });
    from_pixels(width, height, pixels)
}

/// The most rows a resized picture keeps: a label one pixel wide and millions tall (a valid
/// PNG) scaled to a sheet's tile width would be terabytes.
pub const MAX_PICTURE_HEIGHT: u32 = 4096;

/// Nearest-neighbour resize to `width` (height keeps the aspect ratio, at least 1 pixel); of a
/// picture taller than [`MAX_PICTURE_HEIGHT`] after resizing, only its top rows are kept.
pub fn resize_to_width(img: &RgbImage, width: u32) -> RgbImage {
    if img.width == width || img.width == 0 || img.height == 0 {
        return img.clone();
    }
    let full = ((img.height as u64 * width as u64) / img.width as u64).max(1);
    let height = full.min(MAX_PICTURE_HEIGHT as u64) as u32;
    let mut data = Vec::with_capacity(3 * width as usize * height as usize);
    for y in 0..height as u64 {
        let sy = ((y * img.height as u64 + img.height as u64 / 2) / full).min(img.height as u64 - 1);
        for x in 0..width as u64 {
            let sx = ((x * img.width as u64 + img.width as u64 / 2) / width as u64).min(img.width as u64 - 1);
            let i = 3 * (sy * img.width as u64 + sx) as usize;
            data.extend_from_slice(&img.data[i..i + 3]);
        }
    }
    RgbImage { width, height, data }
}

/// One row of the sheet: camera image (if available), ground truth, prediction, error map.
pub struct SheetRow {
    pub image: Option<RgbImage>,
    pub gt: RgbImage,
    pub pred: RgbImage,
    pub errors: RgbImage,
}

/// Lays rows out as a grid of `tile_width`-wide tiles separated by white gaps. A missing
/// camera image becomes a dark gray tile.
pub fn sheet(rows: &[SheetRow], tile_width: u32) -> RgbImage {
    let tiles: Vec<Vec<RgbImage>> = rows
        .iter()
        .map(|r| {
            let gt = resize_to_width(&r.gt, tile_width);
            let image = match &r.image {
                Some(i) => resize_to_width(i, tile_width),
                None => RgbImage {
                    width: gt.width,
                    height: gt.height,
                    data: MISSING_COLOR.repeat(gt.width as usize * gt.height as usize),
                },
            };
            vec![
                image,
                gt,
                resize_to_width(&r.pred, tile_width),
                resize_to_width(&r.errors, tile_width),
            ]
        })
        .collect();
    grid(&tiles)
}

/// Lays out rows of tiles (each row as tall as its tallest tile) with white gaps.
pub fn grid(rows: &[Vec<RgbImage>]) -> RgbImage {
    let width = rows
        .iter()
        .map(|r| r.iter().map(|t| t.width + GAP).sum::<u32>() + GAP)
        .max()
        .unwrap_or(GAP);
    let row_height = |r: &Vec<RgbImage>| r.iter().map(|t| t.height).max().unwrap_or(0);
    let height = rows.iter().map(|r| row_height(r) + GAP).sum::<u32>() + GAP;
    let mut out = RgbImage {
        width,
        height,
        data: vec![255; 3 * width as usize * height as usize],
    };
    let mut y0 = GAP;
    for row in rows {
        let mut x0 = GAP;
        for tile in row {
            blit(&mut out, tile, x0, y0);
            x0 += tile.width + GAP;
        }
        y0 += row_height(row) + GAP;
    }
    out
}

/// Copies `tile` into `dst` at (`x0`, `y0`), clipped to `dst`.
fn blit(dst: &mut RgbImage, tile: &RgbImage, x0: u32, y0: u32) {
    let w = tile.width.min(dst.width.saturating_sub(x0)) as usize;
    let h = tile.height.min(dst.height.saturating_sub(y0));
    for y in 0..h {
        let src = 3 * (y as usize * tile.width as usize);
        let at = 3 * ((y0 + y) as usize * dst.width as usize + x0 as usize);
        dst.data[at..at + 3 * w].copy_from_slice(&tile.data[src..src + 3 * w]);
    }
}

/// The pictures of the report already in `report_dir` (its `report.json`'s `pictures`) that a
/// report listing `now` will not list: an evaluation written again into the same folder, with
/// other images or none, would leave them beside a report they do not belong to. Read before
/// the new report replaces the old; only the old report's own files are named, never a file
/// of the user's.
pub fn stale(report_dir: &std::path::Path, now: &[String]) -> Vec<std::path::PathBuf> {
    let Ok(text) = std::fs::read_to_string(report_dir.join("report.json")) else {
        return Vec::new();
    };
    let Ok(old) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    old["pictures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .filter(|p| !now.iter().any(|n| n == p))
        // The report's own naming: one PNG directly under `pictures/`.
        .filter_map(|p| p.strip_prefix("pictures/"))
        .filter(|name| name.ends_with(".png") && !name.contains(['/', '\\']) && !name.starts_with('.'))
        .map(|name| report_dir.join("pictures").join(name))
        .collect()
}

/// Removes the files [`stale`] named (those already gone are no error).
pub fn remove(files: &[std::path::PathBuf]) -> std::io::Result<()> {
    for f in files {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tall_thin_picture_keeps_its_top_rows_at_the_tile_width() {
        // 1 × 4,000,000 pixels (7.8 KB as a PNG) at a 2048-pixel tile: 8 billion rows unchecked.
        let tall = RgbImage {
            width: 1,
            height: 4_000_000,
            data: vec![7; 12_000_000],
        };
        let r = resize_to_width(&tall, 2048);
        assert_eq!((r.width, r.height), (2048, MAX_PICTURE_HEIGHT));
        assert!(r.data.iter().all(|&v| v == 7));
        let small = resize_to_width(&from_pixels(2, 1, [[1, 2, 3], [4, 5, 6]].into_iter()), 4);
        assert_eq!((small.width, small.height), (4, 2));
    }

    #[test]
    fn colours_overlay_and_errors() {
        let ids = [0, 13, 255, 18];
        let c = colorize(2, 2, &ids);
        assert_eq!(&c.data[0..3], &[128, 64, 128]);
        assert_eq!(&c.data[3..6], &[0, 0, 142]);
        assert_eq!(&c.data[6..9], &[0, 0, 0]);
        let img = RgbImage {
            width: 2,
            height: 2,
            data: vec![100; 12],
        };
        let o = overlay(&img, &ids, 0.5);
        assert_eq!(&o.data[0..3], &[114, 82, 114]);
        assert_eq!(&o.data[6..9], &[100, 100, 100], "ignored prediction leaves the image");
        let e = error_map(2, 2, &[0, 255, 1, 2], &[0, 3, 2, 255]);
        assert_eq!(&e.data[0..3], &CORRECT_COLOR);
        assert_eq!(&e.data[3..6], &IGNORE_COLOR);
        assert_eq!(&e.data[6..9], &WRONG_COLOR);
        assert_eq!(&e.data[9..12], &WRONG_COLOR);
    }

    #[test]
    fn resize_and_sheet_geometry() {
        let img = colorize(8, 4, &[0; 32]);
        let r = resize_to_width(&img, 3);
        assert_eq!((r.width, r.height, r.data.len()), (3, 1, 9));
        let row = SheetRow {
            image: None,
            gt: img.clone(),
            pred: img.clone(),
            errors: img,
        };
        let s = sheet(&[row], 4);
        assert_eq!((s.width, s.height), (4 * 4 + 5 * GAP, 2 + 2 * GAP));
        // First tile is the dark-gray placeholder, second the road colour.
        let at = |x: u32, y: u32| &s.data[3 * (y * s.width + x) as usize..][..3];
        assert_eq!(at(GAP, GAP), &MISSING_COLOR);
        assert_eq!(at(2 * GAP + 4, GAP), &[128, 64, 128]);
        assert_eq!(at(0, 0), &[255, 255, 255]);
    }

    #[test]
    fn only_the_earlier_reports_pictures_that_it_no_longer_lists_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pics = dir.path().join("pictures");
        std::fs::create_dir_all(&pics).unwrap();
        for f in ["a_gt.png", "b_gt.png", "holiday.png"] {
            std::fs::write(pics.join(f), b"x").unwrap();
        }
        // No earlier report: nothing is the report's to remove.
        assert!(stale(dir.path(), &[]).is_empty());
        let old = r#"{"pictures": ["pictures/a_gt.png", "pictures/b_gt.png", "pictures/../x.png"]}"#;
        std::fs::write(dir.path().join("report.json"), old).unwrap();
        let gone = stale(dir.path(), &["pictures/a_gt.png".into()]);
        assert_eq!(gone, [pics.join("b_gt.png")]);
        remove(&gone).unwrap();
        remove(&gone).unwrap();
        assert!(pics.join("a_gt.png").exists() && pics.join("holiday.png").exists());
        assert!(!pics.join("b_gt.png").exists());
    }
}
