//! Augmentations on plain buffers: bilinear image resize, nearest label resize, random scale,
//! random crop (label padding = ignore), horizontal flip, and normalisation to CHW floats.

use seg_core::Rng;
use seg_labels::png_io::RgbImage;
use seg_labels::IGNORE;

/// ImageNet channel means, the default normalisation.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Bilinear resize with half-pixel centres (PIL/PyTorch `align_corners=False`, no antialias).
pub fn resize_bilinear(img: &RgbImage, nw: u32, nh: u32) -> RgbImage {
    resize_bilinear_window(img, nw, nh, Window::whole(nw, nh))
}

/// A rectangle of a resized image: columns `x0 .. x0 + w`, rows `y0 .. y0 + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x0: u32,
    pub y0: u32,
    pub w: u32,
    pub h: u32,
}

impl Window {
    pub fn whole(w: u32, h: u32) -> Self {
        Self { x0: 0, y0: 0, w, h }
    }
}

/// The pixels of `resize_bilinear(img, nw, nh)` inside `win`, computed without the rest: a
/// random crop of a rescaled image costs the crop, not the whole rescaled image.
pub fn resize_bilinear_window(img: &RgbImage, nw: u32, nh: u32, win: Window) -> RgbImage {
    if (nw, nh) == (img.width, img.height) && win == Window::whole(nw, nh) {
        return img.clone();
    }
    let (w, h) = (img.width as usize, img.height as usize);
    let taps = |range: std::ops::Range<u32>, n_out: u32, n_in: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        range
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let xs = taps(win.x0..win.x0 + win.w, nw, w);
    let ys = taps(win.y0..win.y0 + win.h, nh, h);
    // Separable: each source row is interpolated along x once (kept while consecutive output
    // rows share it), then pairs of rows are blended along y. The arithmetic per value is the
    // same as interpolating every output pixel from its four neighbours.
    let horizontal = |y: usize, out: &mut Vec<f32>| {
        let r = &img.data[y * w * 3..(y + 1) * w * 3];
        out.clear();
        for &(x0, x1, fx) in &xs {
            for c in 0..3 {
                out.push(r[x0 * 3 + c] as f32 * (1.0 - fx) + r[x1 * 3 + c] as f32 * fx);
            }
        }
    };
    let (mut top, mut bottom) = ((usize::MAX, Vec::new()), (usize::MAX, Vec::new()));
    let mut data = Vec::with_capacity((win.w * win.h * 3) as usize);
    for &(y0, y1, fy) in &ys {
        if top.0 != y0 {
            if bottom.0 == y0 {
                std::mem::swap(&mut top, &mut bottom);
            } else {
                horizontal(y0, &mut top.1);
                top.0 = y0;
            }
        }
        if bottom.0 != y1 {
            horizontal(y1, &mut bottom.1);
            bottom.0 = y1;
        }
        // Values lie in [0, 255]: adding 0.5 and truncating rounds half away from zero.
        data.extend(
            top.1
                .iter()
                .zip(&bottom.1)
                .map(|(&a, &b)| (a * (1.0 - fy) + b * fy + 0.5) as u8),
        );
    }
    RgbImage {
        width: win.w,
        height: win.h,
        data,
    }
}

/// Nearest-neighbour resize of a label map (PIL `NEAREST`: source = floor((x + 0.5) * in / out));
/// of any pixel type (8-bit ids, 16-bit instance ids).
pub fn resize_nearest<T: Copy>(label: &[T], w: u32, h: u32, nw: u32, nh: u32) -> Vec<T> {
    resize_nearest_window(label, w, h, nw, nh, Window::whole(nw, nh))
}

/// The pixels of `resize_nearest(label, w, h, nw, nh)` inside `win`.
pub fn resize_nearest_window<T: Copy>(label: &[T], w: u32, h: u32, nw: u32, nh: u32, win: Window) -> Vec<T> {
    if (nw, nh) == (w, h) && win == Window::whole(nw, nh) {
        return label.to_vec();
    }
    let xs: Vec<usize> = (win.x0..win.x0 + win.w)
        .map(|x| (((x as f64 + 0.5) * w as f64 / nw as f64) as usize).min(w as usize - 1))
        .collect();
    let mut out = Vec::with_capacity((win.w * win.h) as usize);
    for y in win.y0..win.y0 + win.h {
        let sy = (((y as f64 + 0.5) * h as f64 / nh as f64) as usize).min(h as usize - 1);
        let row = &label[sy * w as usize..(sy + 1) * w as usize];
        out.extend(xs.iter().map(|&sx| row[sx]));
    }
    out
}

/// Mirrors image and label left-right.
pub fn hflip(img: &mut RgbImage, label: Option<&mut Vec<u8>>) {
    let (w, h) = (img.width as usize, img.height as usize);
    for row in img.data.chunks_exact_mut(w * 3).take(h) {
        for x in 0..w / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
            }
        }
    }
    if let Some(l) = label {
        for row in l.chunks_exact_mut(w).take(h) {
            row.reverse();
        }
    }
}

/// Where a `cw × ch` crop of a `w × h` image lands, drawn at random: the window of the image
/// it covers (the rest of the crop is padding).
pub fn crop_window(w: u32, h: u32, cw: u32, ch: u32, rng: &mut Rng) -> Window {
    let x0 = if w > cw {
        rng.below((w - cw + 1) as usize) as u32
    } else {
        0
    };
    let y0 = if h > ch {
        rng.below((h - ch + 1) as usize) as u32
    } else {
        0
    };
    Window {
        x0,
        y0,
        w: cw.min(w - x0),
        h: ch.min(h - y0),
    }
}

/// Places a window's pixels (`win.w × win.h`) at the top left of a `cw × ch` canvas, padded
/// with 0 (image) and 255 = ignore (label).
pub fn pad_to(img: RgbImage, label: Option<Vec<u8>>, cw: u32, ch: u32) -> (RgbImage, Option<Vec<u8>>) {
    if (img.width, img.height) == (cw, ch) {
        return (img, label);
    }
    let (w, h) = (img.width as usize, img.height as usize);
    let mut data = vec![0u8; (cw * ch * 3) as usize];
    let mut lab = label.as_ref().map(|_| vec![IGNORE; (cw * ch) as usize]);
    for y in 0..h {
        data[y * cw as usize * 3..][..w * 3].copy_from_slice(&img.data[y * w * 3..][..w * 3]);
        if let (Some(dst), Some(l)) = (lab.as_mut(), label.as_ref()) {
            dst[y * cw as usize..][..w].copy_from_slice(&l[y * w..][..w]);
        }
    }
    (
        RgbImage {
            width: cw,
            height: ch,
            data,
        },
        lab,
    )
}

/// Crops `cw × ch` at a random position; where the image is smaller it is padded first
/// (image with 0, label with 255 = ignore).
pub fn random_crop(
    img: &RgbImage,
    label: Option<&[u8]>,
    cw: u32,
    ch: u32,
    rng: &mut Rng,
) -> (RgbImage, Option<Vec<u8>>) {
    let (w, h) = (img.width, img.height);
    let win = crop_window(w, h, cw, ch, rng);
    let mut data = Vec::with_capacity((win.w * win.h * 3) as usize);
    let mut lab = label.map(|_| Vec::with_capacity((win.w * win.h) as usize));
    for sy in win.y0 as usize..(win.y0 + win.h) as usize {
        data.extend_from_slice(&img.data[(sy * w as usize + win.x0 as usize) * 3..][..win.w as usize * 3]);
        if let (Some(dst), Some(l)) = (lab.as_mut(), label) {
            dst.extend_from_slice(&l[sy * w as usize + win.x0 as usize..][..win.w as usize]);
        }
    }
    let img = RgbImage {
        width: win.w,
        height: win.h,
        data,
    };
    pad_to(img, lab, cw, ch)
}

/// Converts to CHW floats: `(v / 255 - mean) / std`.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut Vec<f32>) {
    let n = (img.width * img.height) as usize;
    let base = out.len();
    out.resize(base + 3 * n, 0.0);
    let (r, rest) = out[base..].split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    let planes = [r, g, b];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
    let [r, g, b] = planes;
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 * scale[0] - shift[0];
        g[i] = px[1] as f32 * scale[1] - shift[1];
        b[i] = px[2] as f32 * scale[2] - shift[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            data: (0..w * h * 3).map(|v| (v % 251) as u8).collect(),
        }
    }

    /// The per-pixel definition the separable resize must reproduce bit for bit.
    fn bilinear_reference(img: &RgbImage, nw: u32, nh: u32) -> Vec<u8> {
        let (w, h) = (img.width as usize, img.height as usize);
        let tap = |o: u32, n_out: u32, n_in: usize| {
            let src = ((o as f32 + 0.5) * (n_in as f32 / n_out as f32) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            (i0, (i0 + 1).min(n_in - 1), src - i0 as f32)
        };
        let mut out = Vec::new();
        for oy in 0..nh {
            let (y0, y1, fy) = tap(oy, nh, h);
            for ox in 0..nw {
                let (x0, x1, fx) = tap(ox, nw, w);
                for c in 0..3 {
                    let p = |y: usize, x: usize| img.data[(y * w + x) * 3 + c] as f32;
                    let a = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                    let b = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                    out.push((a * (1.0 - fy) + b * fy).round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    #[test]
    fn separable_bilinear_equals_the_per_pixel_definition() {
        let mut r = Rng::new(3);
        for _ in 0..30 {
            let (w, h) = (1 + r.below(40) as u32, 1 + r.below(30) as u32);
            let im = RgbImage {
                width: w,
                height: h,
                data: (0..w * h * 3).map(|_| r.below(256) as u8).collect(),
            };
            let (nw, nh) = (1 + r.below(70) as u32, 1 + r.below(50) as u32);
            assert_eq!(
                resize_bilinear_window(&im, nw, nh, Window::whole(nw, nh)).data,
                bilinear_reference(&im, nw, nh),
                "{w}x{h} -> {nw}x{nh}"
            );
        }
    }

    #[test]
    fn resampling_only_the_crop_window_equals_resizing_then_cropping() {
        let (w, h) = (37u32, 23u32);
        let im = img(w, h);
        let lab: Vec<u8> = (0..w * h).map(|v| (v * 7 % 19) as u8).collect();
        for seed in 0..40u64 {
            let mut r = Rng::new(seed);
            let (nw, nh) = (10 + r.below(50) as u32, 8 + r.below(30) as u32);
            let (cw, ch) = (5 + r.below(40) as u32, 4 + r.below(30) as u32);
            let (mut r1, mut r2) = (Rng::new(seed + 100), Rng::new(seed + 100));
            let big = resize_bilinear(&im, nw, nh);
            let big_lab = resize_nearest(&lab, w, h, nw, nh);
            let (want, want_lab) = random_crop(&big, Some(&big_lab), cw, ch, &mut r1);
            let win = crop_window(nw, nh, cw, ch, &mut r2);
            let (got, got_lab) = pad_to(
                resize_bilinear_window(&im, nw, nh, win),
                Some(resize_nearest_window(&lab, w, h, nw, nh, win)),
                cw,
                ch,
            );
            assert_eq!((got.width, got.height), (cw, ch));
            assert_eq!(got.data, want.data, "seed {seed}: {nw}x{nh} crop {cw}x{ch} at {win:?}");
            assert_eq!(got_lab, want_lab, "seed {seed}");
        }
    }

    #[test]
    fn nearest_resize_matches_pil_rule() {
        // 4 -> 2 picks source columns 1 and 3 (floor((x+0.5)*2)).
        let l = [0u8, 1, 2, 3];
        assert_eq!(resize_nearest(&l, 4, 1, 2, 1), vec![1, 3]);
        // 2 -> 4 repeats.
        assert_eq!(resize_nearest(&[5, 6], 2, 1, 4, 1), vec![5, 5, 6, 6]);
    }

    #[test]
    fn bilinear_keeps_constant_and_interpolates() {
        let c = RgbImage {
            width: 3,
            height: 2,
            data: vec![77; 18],
        };
        assert!(resize_bilinear(&c, 7, 5).data.iter().all(|&v| v == 77));
        // 2 -> 4 along x with values 0 and 200: half-pixel centres give 0, 50, 150, 200.
        let g = RgbImage {
            width: 2,
            height: 1,
            data: vec![0, 0, 0, 200, 200, 200],
        };
        let r = resize_bilinear(&g, 4, 1);
        let red: Vec<u8> = r.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(red, vec![0, 50, 150, 200]);
    }

    #[test]
    fn crop_pads_label_with_ignore_and_flip_mirrors() {
        let im = img(3, 2);
        let lab = vec![1u8, 2, 3, 4, 5, 6];
        let mut rng = Rng::new(0);
        let (c, l) = random_crop(&im, Some(&lab), 5, 3, &mut rng);
        let l = l.unwrap();
        assert_eq!((c.width, c.height), (5, 3));
        assert_eq!(&l[..5], &[1, 2, 3, 255, 255]);
        assert_eq!(&l[10..], &[255; 5]);
        assert_eq!(&c.data[..9], &im.data[..9]);
        let mut im2 = img(3, 1);
        let mut l2 = vec![1u8, 2, 3];
        hflip(&mut im2, Some(&mut l2));
        assert_eq!(l2, vec![3, 2, 1]);
        assert_eq!(&im2.data[..3], &img(3, 1).data[6..9]);
    }

    #[test]
    fn normalisation_is_imagenet() {
        let im = RgbImage {
            width: 1,
            height: 1,
            data: vec![255, 0, 128],
        };
        let mut out = Vec::new();
        normalize_chw(&im, IMAGENET_MEAN, IMAGENET_STD, &mut out);
        assert!((out[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((out[1] - (-0.456 / 0.224)).abs() < 1e-5);
    }
}
