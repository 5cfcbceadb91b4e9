//! Seeded variable initialisation. candle's CPU random generator cannot be seeded, so a
//! `VarBuilder` over a plain `VarMap` gives every run different initial weights. This backend
//! creates missing variables from the project's own generator, keyed by the run seed and the
//! variable's full name: the same seed gives the same model, whatever the construction order.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
/// SplitMix64 ([`seg_core::rng::splitmix64`]) as a stream of its own: enough for initial weights.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        seg_core::rng::splitmix64(&mut self.0)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a.
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// A `VarMap` whose new variables are initialised from `(seed, name)`.
#[derive(Clone)]
pub struct SeededBackend {
    vars: VarMap,
    seed: u64,
}

/// A `VarBuilder` over `vars` that initialises new variables deterministically from `seed`.
pub fn seeded_builder(vars: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededBackend {
            vars: vars.clone(),
            seed,
        }),
        dtype,
        device.clone(),
    )
}

/// Draws a tensor for `init` from a generator keyed by `(seed, name)`.
pub fn init_tensor(shape: &Shape, init: Init, seed: u64, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = Rng::new(seed ^ name_hash(name).rotate_left(17));
    let dims = shape.dims();
    let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
    let values: Vec<f32> = match init {
        Init::Const(v) => return Tensor::full(v as f32, shape, dev)?.to_dtype(dtype),
        Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * rng.normal()) as f32).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| (lo + (up - lo) * rng.uniform()) as f32).collect(),
        Init::Kaiming { dist, .. } => {
            let std = (2.0 / fan_in as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = std * 3f64.sqrt();
                    (0..n).map(|_| (-b + 2.0 * b * rng.uniform()) as f32).collect()
                }
            }
        }
    };
    Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` exists with shape {:?}, requested {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            return Ok(t.clone());
        }
        let var = Var::from_tensor(&init_tensor(&s, h, self.seed, name, dtype, dev)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("variable `{name}` not found")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.data().lock().map(|d| d.contains_key(name)).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let draw = |seed| {
            let vars = VarMap::new();
            let vb = seeded_builder(&vars, seed, DType::F32, &Device::Cpu);
            vb.pp("a")
                .get_with_hints((3, 4), "w", Init::Randn { mean: 0.0, stdev: 1.0 })
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let vars = VarMap::new();
        let vb = seeded_builder(&vars, 1, DType::F32, &Device::Cpu);
        let t = vb.get_with_hints(5, "c", Init::Const(0.5)).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![0.5; 5]);
        assert!(vars.data().lock().unwrap().contains_key("c"));
    }
}
