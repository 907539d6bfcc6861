//! Test fixtures the segment planner's tests and staged planning's tests share.

use super::UncompressedInput;
use crate::host::hostinfo::{self, HostBootInfo};
use crate::image::Loadable;
use bytes::Bytes;
use std::path::{Path, PathBuf};

/// A tiny real vmlinux ELF (see tests/fixtures).
pub const TINY: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/vmlinux-tiny.elf"
));

/// The recorded boot information of one fixture host (tests/fixtures/host/`name`), with a
/// fixed RNG seed so plans are reproducible.
pub fn host(name: &str, seed: u8) -> HostBootInfo {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host")
        .join(name);
    let mut h = hostinfo::read(&root).unwrap();
    h.rng_seed = Some([seed; 32]);
    h
}

/// A test's vmlinux, kept for the whole test run (plans borrow it).
pub fn leak_kernel(bytes: &[u8]) -> &'static Loadable {
    let k = Loadable::from_elf(Path::new("vmlinux-tiny.elf"), Bytes::copy_from_slice(bytes));
    Box::leak(Box::new(k.unwrap()))
}

/// A test's initrd, kept for the whole test run.
pub fn leak_bytes(bytes: &[u8]) -> &'static Bytes {
    Box::leak(Box::new(Bytes::copy_from_slice(bytes)))
}

/// The planner's input for [`TINY`] on host `h`, no reserved ranges, no physical shift.
pub fn input<'a>(
    h: &'a HostBootInfo,
    initrd: Option<&'a [u8]>,
    cmdline: &'a str,
    verify: bool,
) -> UncompressedInput<'a> {
    UncompressedInput {
        kernel: leak_kernel(TINY),
        setup_header: None,
        initrd: initrd.map(|b| (Path::new("initrd.img"), leak_bytes(b))),
        cmdline,
        host: h,
        reserved: Vec::new(),
        verify,
        phys_delta: 0,
    }
}
