//! fastkexec: load the next Linux kernel fast with kexec, and see where the
//! reboot blackout goes.
//!
//! The library is usable without the CLI; `src/main.rs` is a thin layer over it.
//! See ARCHITECTURE.md for how the modules fit together.

pub mod bootparams;
pub mod bzimage;
pub mod decompress;
pub mod e820;
pub mod ebpf;
pub mod error;
pub mod exec;
pub mod hostinfo;
pub mod kexec;
pub mod load;
pub mod prepare;
pub mod purgatory;
pub mod segments;
pub mod status;
pub mod vmlinux;

pub use error::{Error, Result};
