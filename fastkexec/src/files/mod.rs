//! Files as root: atomic writes, bounded input reads, the load lock, read-only maps.

pub mod atomic_file;
pub mod input;
pub mod lock;
pub mod map;
