//! Boxes in pixel indices, and the two IoU conventions.

/// A box as 0-based inclusive pixel indices: columns `x_min..=x_max`, rows `y_min..=y_max`
/// (fractional values allowed for predictions). Width is `x_max - x_min + 1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelBox {
    pub x_min: f64,
    pub y_min: f64,
    pub x_max: f64,
    pub y_max: f64,
}

impl PixelBox {
    pub fn new(x_min: f64, y_min: f64, x_max: f64, y_max: f64) -> Self {
        Self {
            x_min,
            y_min,
            x_max,
            y_max,
        }
    }

    pub fn width(&self) -> f64 {
        self.x_max - self.x_min + 1.0
    }

    pub fn height(&self) -> f64 {
        self.y_max - self.y_min + 1.0
    }

    pub fn area(&self) -> f64 {
        self.width() * self.height()
    }

    /// IoU with the +1 pixel convention of `voc_eval.py` (and of COCO boxes converted as
    /// `[x_min, y_min, width, height]`).
    pub fn iou(&self, o: &PixelBox) -> f64 {
        let iw = (self.x_max.min(o.x_max) - self.x_min.max(o.x_min) + 1.0).max(0.0);
        let ih = (self.y_max.min(o.y_max) - self.y_min.max(o.y_min) + 1.0).max(0.0);
        let inter = iw * ih;
        inter / (self.area() + o.area() - inter)
    }

    /// The continuous extent `[x_min, y_min, x_max + 1, y_max + 1]` divided by the image size:
    /// what a detector regresses.
    pub fn to_unit(&self, w: u32, h: u32) -> [f32; 4] {
        let (w, h) = (w as f64, h as f64);
        [
            (self.x_min / w) as f32,
            (self.y_min / h) as f32,
            ((self.x_max + 1.0) / w) as f32,
            ((self.y_max + 1.0) / h) as f32,
        ]
    }

    /// The inverse of [`Self::to_unit`], clipped to the image.
    pub fn from_unit(b: [f32; 4], w: u32, h: u32) -> Self {
        let (wf, hf) = (w as f64, h as f64);
        let cl = |v: f64, hi: f64| v.clamp(0.0, hi);
        let x0 = cl(b[0] as f64 * wf, wf - 1.0);
        let y0 = cl(b[1] as f64 * hf, hf - 1.0);
        let x1 = cl(b[2] as f64 * wf - 1.0, wf - 1.0).max(x0);
        let y1 = cl(b[3] as f64 * hf - 1.0, hf - 1.0).max(y0);
        Self::new(x0, y0, x1, y1)
    }

    /// The box scaled from an image of `from` size to one of `to` size (continuous extent
    /// scaled, then back to inclusive indices).
    pub fn rescale(&self, from: (u32, u32), to: (u32, u32)) -> Self {
        let u = self.to_unit(from.0, from.1);
        Self::from_unit(u, to.0, to.1)
    }
}

/// A ground-truth box and its class (an index into [`crate::DET_CLASSES`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GtBox {
    pub class: usize,
    pub bbox: PixelBox,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_uses_the_plus_one_convention() {
        let a = PixelBox::new(0.0, 0.0, 9.0, 9.0); // 10×10
        let b = PixelBox::new(5.0, 0.0, 14.0, 9.0); // 10×10, overlap 5×10
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(a.iou(&PixelBox::new(10.0, 0.0, 12.0, 9.0)), 0.0);
        assert_eq!(a.area(), 100.0);
    }

    #[test]
    fn unit_round_trip() {
        let a = PixelBox::new(3.0, 4.0, 20.0, 30.0);
        let u = a.to_unit(64, 48);
        assert_eq!(u, [3.0 / 64.0, 4.0 / 48.0, 21.0 / 64.0, 31.0 / 48.0]);
        let b = PixelBox::from_unit(u, 64, 48);
        assert!((b.x_max - 20.0).abs() < 1e-5 && (b.y_min - 4.0).abs() < 1e-5);
    }
}
