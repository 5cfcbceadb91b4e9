//! The runtime switches of the CPU kernels, in one typed value. Each is read from its
//! environment variable the first time it is needed, or set before that by [`Settings::apply`]
//! (a binary calls it at start-up with [`Settings::from_env`]); a test can apply other settings
//! and apply them back, so both paths of a switch are tested in one process.
//!
//! | variable | field | default | effect |
//! |---|---|---|---|
//! | `SEG_SGEMM=0` | `sgemm` | on (where AVX-512 is) | the AVX-512 sgemm for the products it wins; off sends all to `gemm` |
//! | `SEG_WINOGRAD=0` | `winograd` | on (where AVX-512 is) | Winograd F(2×2, 3×3) for the 3×3 convolutions it applies to |
//!
//! [`Switch`] is the one idiom for such a switch; `seg-cuda`'s settings use it too.

use std::sync::atomic::{AtomicU8, Ordering};

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub sgemm: bool,
    pub winograd: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sgemm: true,
            winograd: true,
        }
    }
}

/// One process-wide boolean switch backed by an environment variable: read from the
/// environment on first use unless set before.
pub struct Switch {
    /// 0 = not read yet, 1 = off, 2 = on.
    state: AtomicU8,
    var: &'static str,
    /// The value the variable must have to flip the default.
    flip: &'static str,
    default: bool,
}

impl Switch {
    /// A switch on `var`, `default` unless the variable equals `flip`.
    pub const fn new(var: &'static str, flip: &'static str, default: bool) -> Self {
        Self {
            state: AtomicU8::new(0),
            var,
            flip,
            default,
        }
    }

    /// The value the environment asks for.
    pub fn read_env(&self) -> bool {
        match std::env::var(self.var) {
            Ok(v) if v == self.flip => !self.default,
            _ => self.default,
        }
    }

    /// The value in force (read from the environment the first time, unless set before).
    pub fn get(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let v = self.read_env();
                self.set(v);
                v
            }
            s => s == 2,
        }
    }

    /// Puts `on` in force.
    pub fn set(&self, on: bool) {
        self.state.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    }
}

static SGEMM: Switch = Switch::new("SEG_SGEMM", "0", true);
static WINOGRAD: Switch = Switch::new("SEG_WINOGRAD", "0", true);

impl Settings {
    /// The settings the environment asks for (unset variables give the defaults).
    pub fn from_env() -> Self {
        Self {
            sgemm: SGEMM.read_env(),
            winograd: WINOGRAD.read_env(),
        }
    }

    /// The settings in force.
    pub fn current() -> Self {
        Self {
            sgemm: SGEMM.get(),
            winograd: WINOGRAD.get(),
        }
    }

    /// Puts these settings in force for the whole process (the next kernel uses them).
    pub fn apply(self) {
        SGEMM.set(self.sgemm);
        WINOGRAD.set(self.winograd);
    }
}

pub(crate) fn sgemm() -> bool {
    SGEMM.get()
}

pub(crate) fn winograd() -> bool {
    WINOGRAD.get()
}
