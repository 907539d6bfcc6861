//! fastkexec: load the next Linux kernel fast with kexec, and see where the
//! reboot blackout goes.
//!
//! The library is usable without the CLI; `src/bin/fastkexec/` is a thin layer over it.
//! See ARCHITECTURE.md for how the modules fit together.

pub mod blobs;
pub mod error;
pub mod files;
pub mod host;
pub mod image;
pub mod kexec;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod record;
pub mod staged;
pub mod trace;

pub use error::{Error, Result};
