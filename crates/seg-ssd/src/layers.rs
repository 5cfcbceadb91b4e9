//! The layers SSD needs that candle lacks, written once and tested here: per-location L2
//! normalisation with a learned per-channel scale (conv4_3), 3×3 stride-1 max pooling with
//! padding 1 (pool5), and 2×2 stride-2 max pooling in ceil mode (pool3: 75 → 38).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `x / (‖x‖₂ over channels + 1e-10) · scale`, the scale (`weight`, one per channel)
/// initialised to 20 (ParseNet; SSD's conv4_3).
#[derive(Debug, Clone)]
pub struct L2Norm {
    weight: Tensor,
}

impl L2Norm {
    pub const INIT_SCALE: f64 = 20.0;
    pub const EPS: f64 = 1e-10;

    pub fn new(c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(c, "weight", Init::Const(Self::INIT_SCALE))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let norm = (x.sqr()?.sum_keepdim(1)?.sqrt()? + Self::EPS)?;
        x.broadcast_div(&norm)?
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)
    }
}

/// 3×3 max pool, stride 1, padding 1 (same size out). Padding repeats the edge, which gives the
/// same maxima as padding with −∞; taken separably (rows, then columns). Tied maxima share the
/// gradient (candle's `maximum`).
pub fn max_pool3x3_s1_p1(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let xp = x.pad_with_same(3, 1, 1)?;
    let r = xp
        .narrow(3, 0, w)?
        .maximum(&xp.narrow(3, 1, w)?)?
        .maximum(&xp.narrow(3, 2, w)?)?;
    let rp = r.pad_with_same(2, 1, 1)?;
    rp.narrow(2, 0, h)?
        .maximum(&rp.narrow(2, 1, h)?)?
        .maximum(&rp.narrow(2, 2, h)?)
}

/// 2×2 max pool, stride 2, in ceil mode: an odd height or width gets one more output row or
/// column, over the last input one alone (the edge repeated, which leaves its maximum unchanged).
pub fn max_pool2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if h % 2 == 1 {
        x.pad_with_same(2, 0, 1)?
    } else {
        x.clone()
    };
    let x = if w % 2 == 1 { x.pad_with_same(3, 0, 1)? } else { x };
    seg_nn::max_pool2x2(&x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Max pooling by definition: window `k`, stride `s`, padding `pad` (outside = −∞), output
    /// `out = (oh, ow)`.
    fn naive_pool(
        x: &[f32],
        (h, w): (usize, usize),
        k: usize,
        s: usize,
        pad: usize,
        (oh, ow): (usize, usize),
    ) -> Vec<f32> {
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for dy in 0..k {
                    for dx in 0..k {
                        let (y, xx) = ((oy * s + dy) as i64 - pad as i64, (ox * s + dx) as i64 - pad as i64);
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            m = m.max(x[y as usize * w + xx as usize]);
                        }
                    }
                }
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn pools_match_padded_and_ceil_mode_definitions() {
        let (h, w) = (5usize, 7usize);
        let mut rng = seg_core::Rng::new(3);
        let v: Vec<f32> = (0..h * w).map(|_| rng.normal()).collect();
        let x = Tensor::from_vec(v.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
        let p5 = max_pool3x3_s1_p1(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(p5, naive_pool(&v, (h, w), 3, 1, 1, (h, w)));
        let p3 = max_pool2x2_ceil(&x).unwrap();
        assert_eq!(p3.dims4().unwrap(), (1, 1, 3, 4));
        assert_eq!(
            p3.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            naive_pool(&v, (h, w), 2, 2, 0, (3, 4))
        );
        // SSD300's pool3: 75 → 38.
        let big = Tensor::zeros((1, 2, 75, 75), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool2x2_ceil(&big).unwrap().dims4().unwrap(), (1, 2, 38, 38));
        // The gradient reaches each window's maximum.
        let xv = Var::from_tensor(&x).unwrap();
        let g = seg_nn::backward(&max_pool2x2_ceil(xv.as_tensor()).unwrap().sum_all().unwrap()).unwrap();
        let gx = g
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(gx.iter().sum::<f32>(), 12.0);
    }

    #[test]
    fn l2norm_scales_unit_vectors() {
        let vars = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, candle_core::DType::F32, &Device::Cpu);
        let l = L2Norm::new(2, vb.pp("l2")).unwrap();
        let x = Tensor::new(&[[[[3f32]], [[4f32]]]], &Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((y[0] - 12.0).abs() < 1e-5 && (y[1] - 16.0).abs() < 1e-5);
    }
}
