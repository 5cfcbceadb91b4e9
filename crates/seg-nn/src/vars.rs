//! Variables of a `VarMap` by name prefix: the trainable ones of one network, and a copy of one
//! network's variables into another's (a frozen copy, a second stream).

use candle_core::{Result, Var};
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
