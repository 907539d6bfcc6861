//! Files as root: atomic writes, bounded input reads, the load lock.

pub mod atomic_file;
pub mod input;
pub mod lock;
