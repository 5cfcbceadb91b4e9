//! Backward passes that write each parameter gradient once.
//!
//! candle's `Tensor::backward` sums every gradient into `zeros_like(t)`: for each parameter a
//! zero tensor, a full add pass and a second buffer, all live at once (for VGG16-FCN8s's fc6,
//! 411 MB three times over). [`backward`] runs candle's pass with a sink installed: the
//! convolution ops hand the weight gradients of variables to the sink instead of to candle, the
//! sink sums them in place when one weight is used more than once (a source and a target pass
//! through one backbone), and they join the returned store at the end, added to whatever candle
//! found for the same variable. Without a sink (a plain `loss.backward()`) the ops return their
//! gradients to candle as usual; both give the same numbers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, TensorId};
use rayon::prelude::*;

thread_local! {
    /// One map per [`backward`] in progress on this thread (innermost last).
    static SINKS: RefCell<Vec<HashMap<TensorId, Tensor>>> = const { RefCell::new(Vec::new()) };
    /// How many [`no_grad`] scopes are open on this thread.
    static NO_GRAD: Cell<usize> = const { Cell::new(0) };
}

/// Closes a [`no_grad`] scope when dropped.
#[must_use = "the scope holds only while the guard lives"]
pub struct NoGrad {
    /// The scope belongs to the thread that opened it (not `Send`).
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for NoGrad {
    fn drop(&mut self) {
        NO_GRAD.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Until the guard is dropped, the layers of [`crate::layers`] use their parameters detached on
/// this thread, so a forward pass builds no backward graph and each activation is freed as soon
/// as the next layer has read it, as under PyTorch's `torch.no_grad()`: for prediction,
/// evaluation and batch-norm re-estimation. Values are unchanged.
pub fn no_grad() -> NoGrad {
    NO_GRAD.with(|n| n.set(n.get() + 1));
    NoGrad {
        _thread: std::marker::PhantomData,
    }
}

/// Whether a [`no_grad`] scope is open on this thread.
pub(crate) fn disabled() -> bool {
    NO_GRAD.with(Cell::get) > 0
}

/// `t` as a layer uses it now: detached inside a [`no_grad`] scope, itself otherwise.
pub(crate) fn param(t: &Tensor) -> Tensor {
    if disabled() {
        t.detach()
    } else {
        t.clone()
    }
}

/// Pops this thread's innermost sink when dropped, also on an error return.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        SINKS.with(|s| s.borrow_mut().pop());
    }
}

/// The gradients of `loss` with respect to every variable it depends on, as
/// `loss.backward()` computes them, with parameter gradients written once (see the module
/// documentation).
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    SINKS.with(|s| s.borrow_mut().push(HashMap::new()));
    let guard = Installed;
    let mut store = loss.backward()?;
    let sunk = SINKS.with(|s| s.borrow_mut().last_mut().map(std::mem::take).unwrap_or_default());
    drop(guard);
    for (id, g) in sunk {
        let g = match store.get_id(id) {
            Some(other) => (other + g)?,
            None => g,
        };
        store.insert_id(id, g);
    }
    Ok(store)
}

/// Hands `dw`, the gradient of weight `w`, to the innermost sink when one is installed and `w`
/// is a variable (`None` back: candle must not add it again); otherwise gives it back.
pub(crate) fn offer(w: &Tensor, dw: Tensor) -> Result<Option<Tensor>> {
    if !w.is_variable() {
        return Ok(Some(dw));
    }
    SINKS.with(|s| {
        let mut sinks = s.borrow_mut();
        let Some(sink) = sinks.last_mut() else {
            return Ok(Some(dw));
        };
        match sink.remove(&w.id()) {
            None => {
                sink.insert(w.id(), dw);
            }
            Some(sum) => {
                let sum = add_into(sum, &dw)?;
                sink.insert(w.id(), sum);
            }
        }
        Ok(None)
    })
}

/// `sum + g`, in place where `sum` is an f32 CPU tensor this module owns.
fn add_into(sum: Tensor, g: &Tensor) -> Result<Tensor> {
    let cpu = sum.device().is_cpu() && sum.dtype() == candle_core::DType::F32 && sum.is_contiguous();
    if cpu && g.device().is_cpu() && g.dtype() == sum.dtype() && g.shape() == sum.shape() {
        sum.inplace_op2(&g.contiguous()?, &AddAssign)?;
        Ok(sum)
    } else {
        sum + g
    }
}

struct AddAssign;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "grad-add-assign"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("grad-add-assign: f32 tensors expected")
        };
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("grad-add-assign: contiguous tensors expected")
        };
        if a1 - a0 != b1 - b0 {
            candle_core::bail!("grad-add-assign: {} and {} elements", a1 - a0, b1 - b0);
        }
        a[a0..a1]
            .par_chunks_mut(1 << 16)
            .zip(b[b0..b1].par_chunks(1 << 16))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn sunk_gradients_match_candles_and_sum_repeated_uses() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 7), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap()).unwrap();
        // The weight is used twice (and once more through a candle op).
        let loss = |w: &Tensor| -> Tensor {
            let a = crate::ops::conv::conv2d(&x, w, 1, 1, 1).unwrap();
            let b = crate::ops::conv::conv2d(&(&x * 0.5).unwrap(), w, 1, 1, 1).unwrap();
            let pen = w.sqr().unwrap().sum_all().unwrap();
            ((a.sqr().unwrap().sum_all().unwrap() + b.sum_all().unwrap()).unwrap() + pen).unwrap()
        };
        let plain = loss(w.as_tensor()).backward().unwrap();
        let sunk = backward(&loss(w.as_tensor())).unwrap();
        let (p, s) = (plain.get(w.as_tensor()).unwrap(), sunk.get(w.as_tensor()).unwrap());
        let d = (p - s)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = p.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0 && d <= 1e-4 * scale, "difference {d} at scale {scale}");
        assert!(SINKS.with(|s| s.borrow().is_empty()), "the sink is removed afterwards");
    }

    #[test]
    fn without_a_sink_gradients_go_to_candle() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap()).unwrap();
        let dw = Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(offer(w.as_tensor(), dw.clone()).unwrap().is_some());
        // A tensor that is not a variable is never sunk.
        SINKS.with(|s| s.borrow_mut().push(HashMap::new()));
        let _g = Installed;
        assert!(offer(&dw, dw.clone()).unwrap().is_some());
        assert!(offer(w.as_tensor(), dw.clone()).unwrap().is_none());
    }
}
