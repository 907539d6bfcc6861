//! A bzImage: setup-header parsing and validation, payload location, decompression (every
//! format `decompress::detect` knows) and the ELF checks of what comes out. Seeds: the
//! `bzImage-tiny.*` fixtures, one per compression.
#![no_main]

use fastkexec::image::bzimage;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.bzImage");
    let _ = bzimage::is_bzimage(data);
    let _ = bzimage::kernel_release(data);
    let Ok(header) = bzimage::parse_setup_header(path, data) else {
        return;
    };
    let _ = header.setup_size();
    let _ = header.version_string();
    let _ = header.check_64bit_boot(path);
    if let Ok(x) = bzimage::extract_vmlinux(path, data) {
        // What extraction claims must hold.
        assert!(x.payload_range.start < x.payload_range.end);
        assert!(x.payload_range.end <= data.len());
        assert!(fastkexec::image::vmlinux::is_elf(&x.vmlinux));
        let (lo, hi) = x.elf.phys_span();
        assert!(lo <= hi);
    }
});
