//! The kernel image: bzImage setup header, payload decoders, the vmlinux ELF and its prepare cache.

pub mod bzimage;
pub mod decompress;
pub mod prepare;
pub mod vmlinux;
