//! The uncompressed kernel (`vmlinux`): an x86-64 ET_EXEC ELF whose PT_LOAD
//! segments carry their physical load addresses in `p_paddr` and whose entry
//! point `e_entry` is physical (`phys_startup_64`). This module checks that an
//! ELF is loadable that way and reports where it wants to go.

use std::path::Path;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{self, Header};
use goblin::elf::program_header::{self, ProgramHeader};

use crate::{Error, Result};

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub file_offset: u64,
    pub paddr: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
    /// `p_flags` (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

impl LoadSegment {
    /// End (exclusive) of the physical range the segment occupies.
    pub fn phys_end(&self) -> u64 {
        // parse_vmlinux rejects segments for which this overflows.
        self.paddr.saturating_add(self.memsz)
    }
}

/// What a loader needs from a vmlinux: the physical entry point and the
/// segments, in program-header order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmlinux {
    /// `e_entry`: the physical address of `startup_64`.
    pub entry: u64,
    pub segments: Vec<LoadSegment>,
}

impl Vmlinux {
    /// `[start, end)` of physical memory covered by the PT_LOAD segments
    /// (lowest `p_paddr` to highest `p_paddr + p_memsz`, bss included).
    pub fn phys_span(&self) -> (u64, u64) {
        let start = self.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
        let end = self
            .segments
            .iter()
            .map(LoadSegment::phys_end)
            .max()
            .unwrap_or(0);
        (start, end)
    }
}

/// Whether `bytes` starts with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(header::ELFMAG)
}

const EHDR64_SIZE: usize = 64;
const PHDR64_SIZE: u16 = 56;
/// `e_phnum` value meaning "the real count is in section header 0"; no
/// kernel has that many program headers.
const PN_XNUM: u16 = 0xffff;

fn et_name(e_type: u16) -> &'static str {
    match e_type {
        header::ET_NONE => "ET_NONE",
        header::ET_REL => "ET_REL",
        header::ET_EXEC => "ET_EXEC",
        header::ET_DYN => "ET_DYN",
        header::ET_CORE => "ET_CORE",
        _ => "unknown",
    }
}

/// Parses and validates an x86-64 vmlinux: ELF64 little-endian, EM_X86_64,
/// ET_EXEC, at least one PT_LOAD, every PT_LOAD with `filesz <= memsz` and its
/// file bytes inside the file, no two PT_LOAD physical ranges overlapping, and
/// the entry point inside a PT_LOAD's physical range.
pub fn parse_vmlinux(path: &Path, bytes: &[u8]) -> Result<Vmlinux> {
    let bad = |problem: String| Error::BadVmlinux {
        path: path.to_path_buf(),
        problem,
    };
    if !is_elf(bytes) {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(bad(format!(
            "no ELF magic at offset 0x0 (found {}); pass a vmlinux ELF, or a bzImage to extract one from",
            head.join(" ")
        )));
    }
    if bytes.len() < EHDR64_SIZE {
        return Err(bad(format!(
            "file is {} bytes, shorter than an ELF64 header (64); the file is truncated",
            bytes.len()
        )));
    }
    let class = bytes[header::EI_CLASS];
    if class != header::ELFCLASS64 {
        return Err(bad(format!(
            "EI_CLASS at 0x4 is {class} ({}), expected 2 (ELFCLASS64); an x86_64 kernel is a 64-bit ELF",
            if class == header::ELFCLASS32 { "ELFCLASS32" } else { "invalid" }
        )));
    }
    let data = bytes[header::EI_DATA];
    if data != header::ELFDATA2LSB {
        return Err(bad(format!(
            "EI_DATA at 0x5 is {data}, expected 1 (little-endian)"
        )));
    }
    let hdr: Header = goblin::elf::Elf::parse_header(bytes)
        .map_err(|e| bad(format!("unreadable ELF header: {e}")))?;
    if hdr.e_machine != header::EM_X86_64 {
        return Err(bad(format!(
            "e_machine at 0x12 is {} ({}), expected 62 (EM_X86_64); this kernel is for another architecture",
            hdr.e_machine,
            header::machine_to_str(hdr.e_machine)
        )));
    }
    if hdr.e_type != header::ET_EXEC {
        return Err(bad(format!(
            "e_type at 0x10 is {} ({}), expected 2 (ET_EXEC); a kernel vmlinux is always ET_EXEC — this looks like a shared object, PIE or object file",
            hdr.e_type,
            et_name(hdr.e_type)
        )));
    }
    if hdr.e_phnum == 0 || hdr.e_phnum == PN_XNUM {
        return Err(bad(format!(
            "e_phnum at 0x38 is {}; a vmlinux needs PT_LOAD program headers",
            hdr.e_phnum
        )));
    }
    if hdr.e_phentsize != PHDR64_SIZE {
        return Err(bad(format!(
            "e_phentsize at 0x36 is {}, expected 56 (Elf64_Phdr)",
            hdr.e_phentsize
        )));
    }
    let table_len = u64::from(hdr.e_phnum) * u64::from(PHDR64_SIZE);
    let in_file = hdr
        .e_phoff
        .checked_add(table_len)
        .is_some_and(|end| end <= bytes.len() as u64);
    if !in_file {
        return Err(bad(format!(
            "program header table (e_phoff {:#x}, {} entries) runs past the end of the {}-byte file; the file is truncated",
            hdr.e_phoff,
            hdr.e_phnum,
            bytes.len()
        )));
    }
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let phdrs = ProgramHeader::parse(bytes, hdr.e_phoff as usize, usize::from(hdr.e_phnum), ctx)
        .map_err(|e| bad(format!("unreadable program headers: {e}")))?;

    let mut segments = Vec::new();
    for (i, ph) in phdrs.iter().enumerate() {
        if ph.p_type != program_header::PT_LOAD {
            continue;
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(bad(format!(
                "program header {i} (PT_LOAD): p_filesz {:#x} > p_memsz {:#x}",
                ph.p_filesz, ph.p_memsz
            )));
        }
        let file_ok = ph
            .p_offset
            .checked_add(ph.p_filesz)
            .is_some_and(|end| end <= bytes.len() as u64);
        if !file_ok {
            return Err(bad(format!(
                "program header {i} (PT_LOAD): file bytes {:#x}+{:#x} run past the end of the {}-byte file; the file is truncated",
                ph.p_offset,
                ph.p_filesz,
                bytes.len()
            )));
        }
        if ph.p_paddr.checked_add(ph.p_memsz).is_none() {
            return Err(bad(format!(
                "program header {i} (PT_LOAD): p_paddr {:#x} + p_memsz {:#x} overflows",
                ph.p_paddr, ph.p_memsz
            )));
        }
        segments.push(LoadSegment {
            file_offset: ph.p_offset,
            paddr: ph.p_paddr,
            vaddr: ph.p_vaddr,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
            align: ph.p_align,
            flags: ph.p_flags,
        });
    }
    if segments.is_empty() {
        return Err(bad(format!(
            "none of the {} program headers is PT_LOAD; nothing to load",
            phdrs.len()
        )));
    }

    let mut by_paddr: Vec<&LoadSegment> = segments.iter().filter(|s| s.memsz > 0).collect();
    by_paddr.sort_by_key(|s| s.paddr);
    for pair in by_paddr.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.phys_end() > b.paddr {
            return Err(bad(format!(
                "PT_LOAD physical ranges overlap: [{:#x}, {:#x}) and [{:#x}, {:#x}); segments must not be loaded over each other",
                a.paddr,
                a.phys_end(),
                b.paddr,
                b.phys_end()
            )));
        }
    }

    let entry = hdr.e_entry;
    if !segments
        .iter()
        .any(|s| s.paddr <= entry && entry < s.phys_end())
    {
        let (start, end) = Vmlinux {
            entry,
            segments: segments.clone(),
        }
        .phys_span();
        return Err(bad(format!(
            "e_entry {entry:#x} is not inside any PT_LOAD's physical range (they span [{start:#x}, {end:#x})); a vmlinux's entry is the physical address of startup_64"
        )));
    }

    Ok(Vmlinux { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELF: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vmlinux-tiny.elf"
    ));

    fn le16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn le64(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    /// File offset of program header `i` in the fixture.
    fn phdr(b: &[u8], i: usize) -> usize {
        le64(b, 0x20) as usize + i * 56
    }

    fn expect_bad(bytes: &[u8], needle: &str) {
        match parse_vmlinux(Path::new("vmlinux"), bytes) {
            Err(Error::BadVmlinux { problem, .. }) => {
                assert!(problem.contains(needle), "{problem:?} lacks {needle:?}")
            }
            other => panic!("expected BadVmlinux({needle}), got {other:?}"),
        }
    }

    #[test]
    fn fixture_parses_with_physical_addresses() {
        let v = parse_vmlinux(Path::new("vmlinux"), ELF).unwrap();
        // Compare with the raw header fields rather than trusting goblin.
        assert_eq!(v.entry, le64(ELF, 0x18));
        let phnum = usize::from(le16(ELF, 0x38));
        let loads: Vec<usize> = (0..phnum)
            .map(|i| phdr(ELF, i))
            .filter(|&o| u32::from_le_bytes(ELF[o..o + 4].try_into().unwrap()) == 1)
            .collect();
        assert!(loads.len() >= 2, "fixture should have several PT_LOADs");
        assert_eq!(v.segments.len(), loads.len());
        for (s, &o) in v.segments.iter().zip(&loads) {
            assert_eq!(s.file_offset, le64(ELF, o + 8));
            assert_eq!(s.vaddr, le64(ELF, o + 16));
            assert_eq!(s.paddr, le64(ELF, o + 24));
            assert_eq!(s.filesz, le64(ELF, o + 32));
            assert_eq!(s.memsz, le64(ELF, o + 40));
            // Kernel-like: high virtual, low physical.
            assert!(s.vaddr >= 0xffff_ffff_8000_0000 && s.paddr < 0x1_0000_0000);
        }
        assert!(v.segments.iter().any(|s| s.memsz > s.filesz), "bss segment");
        let (start, end) = v.phys_span();
        assert_eq!(start, v.segments.iter().map(|s| s.paddr).min().unwrap());
        assert_eq!(
            end,
            v.segments.iter().map(|s| s.paddr + s.memsz).max().unwrap()
        );
        assert!(start <= v.entry && v.entry < end);
    }

    #[test]
    fn not_an_elf() {
        expect_bad(b"MZ\x90\x00 not an elf at all", "no ELF magic");
        expect_bad(b"", "no ELF magic");
        expect_bad(&ELF[..40], "truncated");
    }

    #[test]
    fn elf32_is_refused() {
        let mut b = ELF.to_vec();
        b[4] = 1;
        expect_bad(&b, "ELFCLASS32");
    }

    #[test]
    fn other_machine_is_refused() {
        let mut b = ELF.to_vec();
        b[0x12..0x14].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        expect_bad(&b, "e_machine at 0x12 is 183");
    }

    #[test]
    fn et_dyn_is_refused() {
        let mut b = ELF.to_vec();
        b[0x10..0x12].copy_from_slice(&3u16.to_le_bytes());
        expect_bad(&b, "ET_DYN");
    }

    #[test]
    fn no_pt_load_is_refused() {
        let mut b = ELF.to_vec();
        for i in 0..usize::from(le16(ELF, 0x38)) {
            let o = phdr(ELF, i);
            b[o..o + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        }
        expect_bad(&b, "none of the");
    }

    #[test]
    fn overlapping_pt_loads_are_refused() {
        let mut b = ELF.to_vec();
        let first_paddr = le64(ELF, phdr(ELF, 0) + 24);
        let o = phdr(ELF, 1) + 24;
        b[o..o + 8].copy_from_slice(&(first_paddr + 0x10).to_le_bytes());
        expect_bad(&b, "overlap");
    }

    #[test]
    fn filesz_beyond_memsz_or_file_is_refused() {
        let mut b = ELF.to_vec();
        let o = phdr(ELF, 0);
        let memsz = le64(ELF, o + 40);
        b[o + 32..o + 40].copy_from_slice(&(memsz + 1).to_le_bytes());
        expect_bad(&b, "p_filesz");

        let mut b = ELF.to_vec();
        b[o + 8..o + 16].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        expect_bad(&b, "past the end");

        // The data segment's file bytes cut off.
        let last = phdr(ELF, usize::from(le16(ELF, 0x38)) - 1);
        let end = (le64(ELF, last + 8) + le64(ELF, last + 32)) as usize;
        expect_bad(&ELF[..end - 1], "past the end");
    }

    #[test]
    fn entry_outside_every_segment_is_refused() {
        let mut b = ELF.to_vec();
        b[0x18..0x20].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        expect_bad(&b, "e_entry");
    }

    #[test]
    fn bad_program_header_table_is_refused() {
        let mut b = ELF.to_vec();
        b[0x20..0x28].copy_from_slice(&(ELF.len() as u64).to_le_bytes());
        expect_bad(&b, "program header table");
        let mut b = ELF.to_vec();
        b[0x36..0x38].copy_from_slice(&32u16.to_le_bytes());
        expect_bad(&b, "e_phentsize");
        let mut b = ELF.to_vec();
        b[0x38..0x3a].copy_from_slice(&0u16.to_le_bytes());
        expect_bad(&b, "e_phnum");
    }
}
