//! A vmlinux ELF: the checks `load --mode uncompressed` and the prepare cache rely on
//! (x86-64, ET_EXEC, PT_LOADs, physical span). Seed: the `vmlinux-tiny.elf` fixture.
#![no_main]

use fastkexec::image::vmlinux;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = vmlinux::is_elf(data);
    let Ok(v) = vmlinux::parse_vmlinux(Path::new("fuzz.vmlinux"), data) else {
        return;
    };
    assert!(!v.segments.is_empty(), "a loadable vmlinux has PT_LOADs");
    let (lo, hi) = v.phys_span();
    assert!(lo <= hi);
    for s in &v.segments {
        // What the loader relies on when it slices the file and places the segment.
        assert!(s.filesz <= s.memsz);
        let end = s
            .file_offset
            .checked_add(s.filesz)
            .expect("file range overflows");
        assert!(end <= data.len() as u64, "file range past the end");
        assert!(
            s.paddr.checked_add(s.memsz).is_some(),
            "physical range overflows"
        );
        assert!(s.phys_end() <= hi);
    }
});
