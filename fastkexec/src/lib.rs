//! fastkexec: load the next Linux kernel fast with kexec, and see where the
//! reboot blackout goes.
//!
//! The library is usable without the CLI; `src/main.rs` is a thin layer over it.
//! See ARCHITECTURE.md for how the modules fit together.

pub mod error;

pub use error::{Error, Result};
