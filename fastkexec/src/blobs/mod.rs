//! The two position-independent asm blobs (purgatory, trampoline) and their common frame.

pub mod checksum;
pub mod frame;
pub mod purgatory;
pub mod trampoline;
