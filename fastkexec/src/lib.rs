//! fastkexec: load the next Linux kernel fast with kexec, and see where the
//! reboot blackout goes.
//!
//! The library is usable without the CLI; `src/main.rs` is a thin layer over it.
//! See ARCHITECTURE.md for how the modules fit together.

pub mod atomic_file;
pub mod blob;
pub mod bootparams;
pub mod btf;
pub mod bzimage;
pub mod clock;
pub mod decompress;
pub mod e820;
pub mod ebpf;
pub mod error;
pub mod exec;
pub mod export;
pub mod fold;
pub mod handoff;
pub mod histogram;
pub mod hostinfo;
pub mod input;
pub mod kexec;
pub mod load;
pub mod lock;
pub mod phases;
pub mod preflight;
pub mod prepare;
pub mod purgatory;
pub mod report;
pub mod segments;
pub mod serve;
pub mod staged;
pub mod status;
pub mod timeline_svg;
pub mod trace;
pub mod tracing_support;
pub mod trampoline;
pub mod vmlinux;

pub use error::{Error, Result};
