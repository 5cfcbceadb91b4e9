//! Variables of a `VarMap` by name prefix: the trainable ones of one network, and a copy of one
//! network's variables into another's (a frozen copy, a second stream); and the first of a list
//! of named tensors that holds a NaN or an infinity.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;

/// The trainable variables of `vars` named `prefix.*` (batch-norm statistics excluded), sorted
/// by name.
pub fn trainable_under(vars: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = vars.data().lock().unwrap_or_else(|p| p.into_inner());
    let dotted = format!("{prefix}.");
    let mut out: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| n.starts_with(&dotted) && !crate::layers::is_statistic(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Copies every variable `from.*` (parameters and batch-norm statistics) into `to.*`; an
/// error names a variable of `from` with no counterpart or another shape.
pub fn copy_network(vars: &VarMap, from: &str, to: &str) -> Result<()> {
    let data = vars.data().lock().unwrap_or_else(|p| p.into_inner());
    let from_dot = format!("{from}.");
    for (name, var) in data.iter() {
        let Some(rest) = name.strip_prefix(&from_dot) else {
            continue;
        };
        let other = format!("{to}.{rest}");
        let dst = data
            .get(&other)
            .ok_or_else(|| candle_core::Error::Msg(format!("`{name}` has no counterpart `{other}`")))?;
        dst.set(var.as_tensor())?;
    }
    Ok(())
}

/// The name of the first floating-point tensor holding a NaN or an infinity, in one read-back
/// for all of them. Each tensor's values are multiplied by 0 and summed: x · 0 is 0 for every
/// finite x and NaN for a NaN or an infinity, so a finite tensor whose plain sum would overflow
/// is not taken for a broken one (and a max would pass over a NaN).
pub fn first_non_finite<'a, I>(tensors: I) -> Result<Option<&'a str>>
where
    I: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let floats: Vec<(&str, &Tensor)> = tensors.into_iter().filter(|(_, t)| t.dtype().is_float()).collect();
    if floats.is_empty() {
        return Ok(None);
    }
    let zeros = floats
        .iter()
        .map(|(_, t)| {
            t.to_dtype(DType::F32)?
                .affine(0.0, 0.0)?
                .sum_all()?
                .to_device(&Device::Cpu)
        })
        .collect::<Result<Vec<_>>>()?;
    let zeros = Tensor::stack(&zeros, 0)?.to_vec1::<f32>()?;
    Ok(zeros.iter().position(|z| !z.is_finite()).map(|i| floats[i].0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_tensor_with_a_nan_or_an_infinity_is_named() {
        let d = Device::Cpu;
        let t = |v: &[f32]| Tensor::new(v, &d).unwrap();
        let (fine, huge) = (t(&[1.0, -2.0]), t(&[3e38, 3e38, -1e38]));
        let (nan, inf, minus) = (t(&[0.0, f32::NAN]), t(&[f32::INFINITY]), t(&[1.0, f32::NEG_INFINITY]));
        let ids = Tensor::new(&[7u32, 8], &d).unwrap();
        let first = |list: &[(&str, &Tensor)]| first_non_finite(list.iter().copied()).unwrap().map(String::from);
        // Finite values whose plain sum overflows are fine, and integer tensors are not read.
        assert_eq!(first(&[("a", &fine), ("b", &huge), ("ids", &ids)]), None);
        assert_eq!(first(&[("a", &fine), ("n", &nan), ("i", &inf)]), Some("n".into()));
        assert_eq!(first(&[("m", &minus), ("n", &nan)]), Some("m".into()));
        assert_eq!(first(&[("i", &inf.to_dtype(DType::BF16).unwrap())]), Some("i".into()));
        assert_eq!(first(&[]), None);
    }
}
