//! kexec: the raw syscalls ([`sys`], a leaf), the kernel's segment rules ([`validate`]) and what
//! an errno means on this machine ([`errno`]).

pub mod errno;
pub mod sys;
pub mod validate;

pub use errno::{errno_hint, explain, Call};
pub use sys::*;
pub use validate::validate_segments;
