//! The optimizer, AdamW, with state of our own: a checkpoint saves and
//! restores it, and candle's AdamW keeps its moments private.

use candle_core::{Tensor, Var};

/// AdamW moments and step count: the optimizer state a checkpoint keeps
/// (candle's AdamW keeps its state private, so resuming needs our own).
pub struct AdamState {
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub t: usize,
}

impl AdamState {
    pub fn new(vars: &[Var]) -> candle_core::Result<AdamState> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamState {
            m: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    /// Decoupled weight decay (Loshchilov & Hutter), betas 0.9 / 0.999, eps 1e-8.
    pub(super) fn step(
        &mut self,
        vars: &[Var],
        grads: &[Option<Tensor>],
        lr: f64,
        wd: f64,
    ) -> candle_core::Result<()> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t as i32), 1.0 - b2.powi(self.t as i32));
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + eps)?)?;
            let next = ((var.as_tensor() * (1.0 - lr * wd))? - (update * lr)?)?;
            var.set(&next)?;
        }
        Ok(())
    }
}
