//! Fully convolutional domain discriminators: a per-cell discriminator (1×1 convs, one logit per
//! grid cell) and a bank of class-wise discriminators computed as one grouped 1×1 convolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use seg_core::Rng;

/// Shape and initialisation of a discriminator: `c_in → hidden → hidden → out` with ReLU (and
/// dropout in training) after each hidden layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscriminatorSpec {
    /// Width of both hidden layers.
    pub hidden: usize,
    /// Standard deviation of a normal weight init (biases start at zero); `0` means the default
    /// init of `seg_nn::conv2d` (uniform, `±sqrt(3 / fan_in)`; biases `±1 / sqrt(fan_in)`).
    pub init_std: f64,
    /// Dropout probability after each hidden ReLU, applied only when a random stream is given.
    pub dropout: f32,
}

/// Inverted dropout with a mask drawn from `rng` (deterministic per stream), on `x`'s device.
pub fn dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.chance(p) { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

fn hidden_act(x: Tensor, p: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    let x = x.relu()?;
    match rng {
        Some(rng) => dropout(&x, p, rng),
        None => Ok(x),
    }
}

/// Per-cell domain discriminator: 1×1 convs `c_in → hidden → hidden → 1`, so every grid cell of
/// a feature map gets its own domain logit (FCNs in the Wild, Cross-City). Variables `fc1`,
/// `fc2`, `out` (each `weight` in conv layout `out × in × 1 × 1`, and `bias`) under the given
/// builder. The 1×1 convs run as matmuls, which skips candle's CPU conv backward (its naive
/// transposed convolution).
#[derive(Debug, Clone)]
pub struct CellDiscriminator {
    fc1: Grouped1x1,
    fc2: Grouped1x1,
    out: Grouped1x1,
    dropout: f32,
}

impl CellDiscriminator {
    pub fn new(c_in: usize, spec: &DiscriminatorSpec, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            fc1: Grouped1x1::new(1, c_in, spec.hidden, spec.init_std, vb.pp("fc1"))?,
            fc2: Grouped1x1::new(1, spec.hidden, spec.hidden, spec.init_std, vb.pp("fc2"))?,
            out: Grouped1x1::new(1, spec.hidden, 1, spec.init_std, vb.pp("out"))?,
            dropout: spec.dropout,
        })
    }

    /// `N×C×h×w` features to `N×1×h×w` logits (1 = source). With `rng`, dropout is applied
    /// (training mode); without, not.
    pub fn forward_t(&self, x: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        run_stack([&self.fc1, &self.fc2, &self.out], 1, self.dropout, x, rng)
    }

    /// The mean binary cross-entropy of its logits on `x` against `target` (1 = source), with
    /// dropout from the head's stream for `(seed, step, site)`.
    pub fn bce_mean(&self, x: &Tensor, target: f64, (seed, step, site): (u64, usize, u64)) -> Result<Tensor> {
        let mut rng = crate::ops::stream(seed, step, site);
        seg_nn::bce_with_logits_per_element(&self.forward_t(x, Some(&mut rng))?, target)?.mean_all()
    }
}

impl Module for CellDiscriminator {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }
}

/// Runs three (grouped) 1×1 layers with ReLU (+ dropout) between them on `N×c_in×h×w`,
/// returning `N×groups×h×w`.
fn run_stack(layers: [&Grouped1x1; 3], groups: usize, p: f32, x: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
    let (n, c_in, h, w) = x.dims4()?;
    let m = n * h * w;
    let flat = x.transpose(0, 1)?.contiguous()?.reshape((c_in, m))?;
    let a = hidden_act(layers[0].forward(&flat)?, p, rng.as_deref_mut())?;
    let a = hidden_act(layers[1].forward(&a)?, p, rng)?;
    let y = layers[2].forward(&a)?; // groups × 1 × M
    y.reshape((groups, n, h, w))?.transpose(0, 1)?.contiguous()
}

/// One layer of a grouped 1×1 convolution stored in conv layout (`groups*out × in × 1 × 1`).
#[derive(Debug, Clone)]
struct Grouped1x1 {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    c_out: usize,
}

impl Grouped1x1 {
    fn new(groups: usize, c_in: usize, c_out: usize, init_std: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let (w_init, b_init) = if init_std > 0.0 {
            (
                Init::Randn {
                    mean: 0.0,
                    stdev: init_std,
                },
                Init::Const(0.0),
            )
        } else {
            // The same rule as seg_nn::conv2d, with the fan-in of one group.
            let bound = 1.0 / (c_in as f64).sqrt();
            (
                Init::Uniform {
                    lo: -bound * 3f64.sqrt(),
                    up: bound * 3f64.sqrt(),
                },
                Init::Uniform { lo: -bound, up: bound },
            )
        };
        let weight = vb.get_with_hints((groups * c_out, c_in, 1, 1), "weight", w_init)?;
        let bias = vb.get_with_hints(groups * c_out, "bias", b_init)?;
        Ok(Self {
            weight,
            bias,
            groups,
            c_out,
        })
    }

    /// `x`: `G×c_in×M` (or `c_in×M` shared by every group) to `G×c_out×M`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (g, o) = (self.groups, self.c_out);
        let c_in = self.weight.dim(1)?;
        let y = if x.rank() == 2 {
            // Input shared by all groups: one plain matmul (the grouped conv of the repeated input).
            let m = x.dim(1)?;
            self.weight.reshape((g * o, c_in))?.matmul(x)?.reshape((g, o, m))?
        } else {
            self.weight.reshape((g, o, c_in))?.matmul(x)?
        };
        y.broadcast_add(&self.bias.reshape((g, o, 1))?)
    }
}

/// `C` class-wise discriminators of the same shape as [`CellDiscriminator`], computed together:
/// mathematically one grouped 1×1 convolution over the input repeated `C` times along channels
/// (`groups = C`), evaluated as batched matmuls so the repeat is never materialised. Weights are
/// stored in grouped-conv layout: `fc1.weight` is `C·hidden × c_in × 1 × 1`, `fc2.weight`
/// `C·hidden × hidden × 1 × 1`, `out.weight` `C × hidden × 1 × 1`; group `c` is class `c`.
#[derive(Debug, Clone)]
pub struct ClassDiscriminatorBank {
    fc1: Grouped1x1,
    fc2: Grouped1x1,
    out: Grouped1x1,
    classes: usize,
    dropout: f32,
}

impl ClassDiscriminatorBank {
    pub fn new(c_in: usize, classes: usize, spec: &DiscriminatorSpec, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            fc1: Grouped1x1::new(classes, c_in, spec.hidden, spec.init_std, vb.pp("fc1"))?,
            fc2: Grouped1x1::new(classes, spec.hidden, spec.hidden, spec.init_std, vb.pp("fc2"))?,
            out: Grouped1x1::new(classes, spec.hidden, 1, spec.init_std, vb.pp("out"))?,
            classes,
            dropout: spec.dropout,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// `N×c_in×h×w` features to `N×C×h×w` logits: channel `c` is class `c`'s discriminator
    /// (1 = source). With `rng`, dropout is applied (training mode).
    pub fn forward_t(&self, x: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        run_stack([&self.fc1, &self.fc2, &self.out], self.classes, self.dropout, x, rng)
    }
}

impl Module for ClassDiscriminatorBank {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }
}
