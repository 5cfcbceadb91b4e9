//! Default boxes (priors), as SSD's reference implementations lay them out: per source map
//! cell `(i, j)` in row-major order, a square of `min_size`, a square of `sqrt(min · max)`, and
//! for each aspect ratio `r` a `min·√r × min/√r` box and its transpose; centres at
//! `((j + 0.5) · step, (i + 0.5) · step)` pixels; all divided by the image size and clipped to
//! `[0, 1]`. Boxes are `(cx, cy, w, h)` in unit coordinates.

/// The layout of the default boxes of one detector.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriorSpec {
    /// Input size `(width, height)` in pixels.
    pub image: (usize, usize),
    /// Source map sizes `(height, width)`.
    pub maps: Vec<(usize, usize)>,
    /// Pixel stride of each map's cells.
    pub steps: Vec<f32>,
    /// Box sizes in pixels.
    pub min_sizes: Vec<f32>,
    pub max_sizes: Vec<f32>,
    /// Extra aspect ratios per map (each adds two boxes).
    pub aspect_ratios: Vec<Vec<f32>>,
    pub clip: bool,
}

impl PriorSpec {
    /// SSD300's VOC layout (Liu et al. 2016; amdegroot's `voc` config): 8,732 boxes.
    pub fn ssd300() -> Self {
        Self {
            image: (300, 300),
            maps: vec![(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
            steps: vec![8.0, 16.0, 32.0, 64.0, 100.0, 300.0],
            min_sizes: vec![30.0, 60.0, 111.0, 162.0, 213.0, 264.0],
            max_sizes: vec![60.0, 111.0, 162.0, 213.0, 264.0, 315.0],
            aspect_ratios: vec![
                vec![2.0],
                vec![2.0, 3.0],
                vec![2.0, 3.0],
                vec![2.0, 3.0],
                vec![2.0],
                vec![2.0],
            ],
            clip: true,
        }
    }

    /// Boxes per cell of map `k`.
    pub fn boxes_per_cell(&self, k: usize) -> usize {
        2 + 2 * self.aspect_ratios[k].len()
    }

    /// Total number of default boxes.
    pub fn len(&self) -> usize {
        self.maps
            .iter()
            .enumerate()
            .map(|(k, (h, w))| h * w * self.boxes_per_cell(k))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the lists agree in length and the sizes are positive.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.maps.len();
        if n == 0 {
            return Err("no source maps".into());
        }
        for (what, len) in [
            ("steps", self.steps.len()),
            ("min_sizes", self.min_sizes.len()),
            ("max_sizes", self.max_sizes.len()),
            ("aspect_ratios", self.aspect_ratios.len()),
        ] {
            if len != n {
                return Err(format!("{what} has {len} entries for {n} source maps"));
            }
        }
        if self
            .min_sizes
            .iter()
            .chain(&self.max_sizes)
            .chain(&self.steps)
            .any(|v| v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err("sizes and steps must be positive".into());
        }
        if self
            .aspect_ratios
            .iter()
            .flatten()
            .any(|r| r.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err("aspect ratios must be positive".into());
        }
        Ok(())
    }

    /// The default boxes, `(cx, cy, w, h)` in unit coordinates.
    pub fn priors(&self) -> Vec<[f32; 4]> {
        let (iw, ih) = (self.image.0 as f32, self.image.1 as f32);
        let mut out = Vec::with_capacity(self.len());
        for (k, &(mh, mw)) in self.maps.iter().enumerate() {
            let step = self.steps[k];
            let (smin, smax) = (self.min_sizes[k], self.max_sizes[k]);
            let sprime = (smin * smax).sqrt();
            for i in 0..mh {
                for j in 0..mw {
                    let cx = (j as f32 + 0.5) * step / iw;
                    let cy = (i as f32 + 0.5) * step / ih;
                    out.push([cx, cy, smin / iw, smin / ih]);
                    out.push([cx, cy, sprime / iw, sprime / ih]);
                    for &r in &self.aspect_ratios[k] {
                        let q = r.sqrt();
                        out.push([cx, cy, smin * q / iw, smin / q / ih]);
                        out.push([cx, cy, smin / q / iw, smin * q / ih]);
                    }
                }
            }
        }
        if self.clip {
            for p in &mut out {
                for v in p.iter_mut() {
                    *v = v.clamp(0.0, 1.0);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssd300_has_8732_priors_laid_out_as_the_reference() {
        let s = PriorSpec::ssd300();
        let p = s.priors();
        assert_eq!(p.len(), 8732);
        assert_eq!(s.len(), 8732);
        // First cell of conv4_3: centre (0.5·8/300), square 30/300, sqrt(30·60)/300, ratio 2.
        let c = 4.0 / 300.0;
        let close = |a: [f32; 4], b: [f32; 4]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(p[0], [c, c, 0.1, 0.1]));
        assert!(close(p[1], [c, c, (1800f32).sqrt() / 300.0, (1800f32).sqrt() / 300.0]));
        assert!(close(p[2], [c, c, 0.1 * 2f32.sqrt(), 0.1 / 2f32.sqrt()]));
        assert!(close(p[3], [c, c, 0.1 / 2f32.sqrt(), 0.1 * 2f32.sqrt()]));
        // The last prior: the 1×1 map, centre 0.5, second ratio-2 box 264/√2 × 264·√2 clipped.
        let last = p[8731];
        assert!(close(last, [0.5, 0.5, 264.0 / 2f32.sqrt() / 300.0, 1.0]));
        // conv4_3's last cell sits at (37.5·8/300) = 1.0.
        assert!((p[38 * 38 * 4 - 1][0] - 1.0).abs() < 1e-6);
    }
}
