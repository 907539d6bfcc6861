//! Facts of the running machine that a kexec load depends on: memory map, boot facts, kexec state.

pub mod e820;
pub mod hostinfo;
pub mod modes;
pub mod staged_record;
pub mod status;
pub mod systemd;
