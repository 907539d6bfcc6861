//! The bzImage (`vmlinuz`) format: real-mode setup sectors with the boot
//! protocol's setup header, then the "protected-mode code" — the boot
//! decompressor with the compressed vmlinux embedded as its payload.
//!
//! Offsets follow Documentation/arch/x86/boot.rst. Fields the image's protocol
//! version does not define, or that lie past the header's own end, read as 0.

use std::ops::Range;
use std::path::Path;

use crate::image::decompress::{self, Compression};
use crate::image::vmlinux::{self, Vmlinux};
use crate::{Error, Result};

use crate::bytes::{u16_at as le16, u32_at as le32, u64_at as le64};
use crate::image::bootproto::{off, BOOT_FLAG, HEADER_MAGIC};
pub use crate::image::bootproto::{LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64};

/// Start of the setup header in the image (and in boot_params).
pub const SETUP_HEADER_OFFSET: usize = off::HDR;
/// `setup_sects == 0` means 4 for historical reasons (boot.rst).
const DEFAULT_SETUP_SECTS: u8 = 4;
const SECTOR: usize = 512;

/// Boot protocol 2.12 introduced xloadflags (and with it XLF_KERNEL_64).
pub const MIN_64BIT_PROTOCOL: u16 = 0x020c;
/// Boot protocol 2.08 introduced payload_offset/payload_length.
pub const MIN_PAYLOAD_PROTOCOL: u16 = 0x0208;

/// Largest bzImage accepted (real ones are 5–20 MB).
pub const MAX_IMAGE_SIZE: u64 = crate::files::input::MAX_KERNEL_SIZE;

/// The parsed boot-protocol setup header of a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    /// As stored (0 means 4; see [`SetupHeader::setup_size`]).
    pub setup_sects: u8,
    /// Boot protocol version, e.g. 0x020f for 2.15.
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: bool,
    pub min_alignment: u8,
    pub cmdline_size: u32,
    pub hardware_subarch: u32,
    /// Relative to the start of the protected-mode code.
    pub payload_offset: u32,
    /// Includes the 4-byte uncompressed-size trailer.
    pub payload_length: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub handover_offset: u32,
    pub kernel_info_offset: u32,
    /// Raw bytes of the setup header: from `setup_sects` to where the jump at 0x200 lands.
    pub raw: Vec<u8>,
}

/// The kernel release (`uname -r`) from the setup header's kernel_version
/// pointer (the offset of a NUL-terminated string, minus 0x200), if any.
pub fn kernel_release(image: &[u8]) -> Option<String> {
    let ptr = le16(image, off::KERNEL_VERSION)?;
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr).checked_add(0x200)?;
    let text = image.get(start..image.len().min(start.saturating_add(256)))?;
    let end = text.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&text[..end]).ok()?;
    s.split_whitespace().next().map(str::to_string)
}

impl SetupHeader {
    /// Bytes of real-mode setup code before the protected-mode code,
    /// including the boot sector: `(setup_sects or 4) + 1` sectors.
    pub fn setup_size(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            DEFAULT_SETUP_SECTS
        } else {
            self.setup_sects
        };
        (usize::from(sects) + 1) * SECTOR
    }

    /// The protocol version as "2.15".
    pub fn version_string(&self) -> String {
        format!("{}.{:02}", self.version >> 8, self.version & 0xff)
    }

    /// Checks the kernel can be entered in 64-bit mode: protocol >= 2.12
    /// with XLF_KERNEL_64 in xloadflags.
    pub fn check_64bit_boot(&self, path: &Path) -> Result<()> {
        if self.version < MIN_64BIT_PROTOCOL {
            return Err(bad(
                path,
                format!(
                    "boot protocol {} (version at {:#x}) is older than 2.12, so the kernel declares no 64-bit entry point; use a kernel from v3.8 or later",
                    self.version_string(),
                    off::VERSION
                ),
            ));
        }
        if self.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(bad(
                path,
                format!(
                    "xloadflags at {:#x} is {:#06x} without XLF_KERNEL_64; this is not a 64-bit x86_64 kernel — use an x86_64 (amd64) kernel",
                    off::XLOADFLAGS,
                    self.xloadflags
                ),
            ));
        }
        Ok(())
    }
}

fn bad(path: &Path, problem: String) -> Error {
    Error::BadBzImage {
        path: path.to_path_buf(),
        problem,
    }
}

/// Whether `image` carries the boot sector flag and the "HdrS" header magic.
pub fn is_bzimage(image: &[u8]) -> bool {
    le16(image, off::BOOT_FLAG) == Some(BOOT_FLAG)
        && image.get(off::HEADER_MAGIC..off::HEADER_MAGIC + 4) == Some(&HEADER_MAGIC[..])
}

/// Parses the setup header: boot_flag 0xAA55 and the "HdrS" magic.
pub fn parse_setup_header(path: &Path, image: &[u8]) -> Result<SetupHeader> {
    crate::image::count::bump(crate::image::count::Kind::HeaderParse);
    const MIN_LEN: usize = off::VERSION + 2;
    if image.len() < MIN_LEN {
        return Err(bad(
            path,
            format!(
                "not a bzImage: the file is {} bytes, too short for a setup header (which ends past 0x{MIN_LEN:x}); pass a bzImage (vmlinuz) or a vmlinux ELF",
                image.len()
            ),
        ));
    }
    let boot_flag = le16(image, off::BOOT_FLAG).unwrap_or(0);
    if boot_flag != BOOT_FLAG {
        let hint = if vmlinux::is_elf(image) {
            "the file is an ELF (a vmlinux?), which needs no extraction: use it as the vmlinux directly"
        } else {
            "pass a bzImage (vmlinuz) or a vmlinux ELF"
        };
        return Err(bad(
            path,
            format!(
                "not a bzImage: boot_flag at {:#x} is {boot_flag:#06x}, expected 0xAA55 — {hint}",
                off::BOOT_FLAG
            ),
        ));
    }
    let magic = &image[off::HEADER_MAGIC..off::HEADER_MAGIC + 4];
    if magic != HEADER_MAGIC {
        return Err(bad(
            path,
            format!(
                "not a bzImage: header magic at {:#x} is {magic:02x?}, expected \"HdrS\" (boot protocol 2.00+) — pass a bzImage (vmlinuz) or a vmlinux ELF",
                off::HEADER_MAGIC
            ),
        ));
    }
    let header_end = off::HEADER_MAGIC + usize::from(image[off::JUMP_LEN]);
    if header_end < MIN_LEN {
        return Err(bad(
            path,
            format!(
                "setup header length byte at {:#x} is {:#x}, so the header would end at {header_end:#x}, before its version field; the image is corrupt",
                off::JUMP_LEN,
                image[off::JUMP_LEN]
            ),
        ));
    }
    if header_end > image.len() {
        return Err(bad(
            path,
            format!(
                "truncated: the setup header ends at {header_end:#x} but the file is {} bytes — re-copy the image",
                image.len()
            ),
        ));
    }
    let raw = image[SETUP_HEADER_OFFSET..header_end].to_vec();
    let version = le16(image, off::VERSION).unwrap_or(0);

    // A field exists if the protocol version defines it and it lies inside
    // the header; otherwise it reads 0 (boot.rst: fields are only valid for
    // the protocol versions that define them).
    let defined =
        |offset: usize, size: usize, since: u16| version >= since && offset + size <= header_end;
    let u8_at = |o: usize, since: u16| {
        if defined(o, 1, since) {
            image[o]
        } else {
            0
        }
    };
    let u16_at = |o: usize, since: u16| {
        if defined(o, 2, since) {
            le16(image, o).unwrap_or(0)
        } else {
            0
        }
    };
    let u32_at = |o: usize, since: u16| {
        if defined(o, 4, since) {
            le32(image, o).unwrap_or(0)
        } else {
            0
        }
    };
    let u64_at = |o: usize, since: u16| {
        if defined(o, 8, since) {
            le64(image, o).unwrap_or(0)
        } else {
            0
        }
    };

    let header = SetupHeader {
        setup_sects: image[off::HDR],
        version,
        loadflags: u8_at(off::LOADFLAGS, 0x0200),
        xloadflags: u16_at(off::XLOADFLAGS, MIN_64BIT_PROTOCOL),
        initrd_addr_max: u32_at(off::INITRD_ADDR_MAX, 0x0203),
        kernel_alignment: u32_at(off::KERNEL_ALIGNMENT, 0x0205),
        relocatable_kernel: u8_at(off::RELOCATABLE_KERNEL, 0x0205) != 0,
        min_alignment: u8_at(off::MIN_ALIGNMENT, 0x020a),
        cmdline_size: u32_at(off::CMDLINE_SIZE, 0x0206),
        hardware_subarch: u32_at(off::HARDWARE_SUBARCH, 0x0207),
        payload_offset: u32_at(off::PAYLOAD_OFFSET, MIN_PAYLOAD_PROTOCOL),
        payload_length: u32_at(off::PAYLOAD_LENGTH, MIN_PAYLOAD_PROTOCOL),
        pref_address: u64_at(off::PREF_ADDRESS, 0x020a),
        init_size: u32_at(off::INIT_SIZE, 0x020a),
        handover_offset: u32_at(off::HANDOVER_OFFSET, 0x020b),
        kernel_info_offset: u32_at(off::KERNEL_INFO_OFFSET, 0x020f),
        raw,
    };
    if header.setup_size() > image.len() {
        return Err(bad(
            path,
            format!(
                "truncated: setup_sects at {:#x} is {} so the protected-mode code starts at {:#x}, but the file is {} bytes — re-copy the image",
                off::HDR,
                header.setup_sects,
                header.setup_size(),
                image.len()
            ),
        ));
    }
    Ok(header)
}

/// The result of [`extract_vmlinux`].
#[derive(Debug, Clone)]
pub struct Extracted {
    pub header: SetupHeader,
    pub compression: Compression,
    /// The decompressed payload: the vmlinux ELF (on kernels with
    /// CONFIG_RANDOMIZE_BASE followed by the relocation table the boot
    /// decompressor uses for KASLR; loaders only read the PT_LOAD bytes).
    pub vmlinux: Vec<u8>,
    /// The validated ELF's entry point and PT_LOADs.
    pub elf: Vmlinux,
    /// Where the compressed payload (with its size trailer) sits in the file.
    pub payload_range: Range<usize>,
}

/// Locates the compressed payload of a bzImage, decompresses it and checks
/// the result is a loadable x86-64 vmlinux.
pub fn extract_vmlinux(path: &Path, image: &[u8]) -> Result<Extracted> {
    extract_with_header(path, image, parse_setup_header(path, image)?)
}

/// [`extract_vmlinux`] with the header already parsed from `image`.
pub fn extract_with_header(path: &Path, image: &[u8], header: SetupHeader) -> Result<Extracted> {
    let range = payload_range(path, &header, image)?;
    let payload = &image[range.clone()];
    let compression = decompress::detect(payload).ok_or_else(|| {
        let head: Vec<String> = payload.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Error::UnknownCompression {
            path: path.to_path_buf(),
            offset: range.start as u64,
            magic: head.join(" "),
        }
    })?;
    // payload_range guarantees at least 4 bytes.
    let (stream_without_size, size) = payload.split_at(payload.len() - 4);
    let size = le32(size, 0).unwrap_or(0) as usize;
    if size == 0 {
        return Err(bad(
            path,
            format!(
                "the payload's size trailer (last 4 bytes, at file offset {:#x}) is 0; the image is corrupt",
                range.end - 4
            ),
        ));
    }
    let stream = if compression.has_appended_size() {
        stream_without_size
    } else {
        payload
    };
    let vmlinux = decompress::decompress(path, compression, stream, Some(size))?;
    let elf = vmlinux::parse_vmlinux(path, &vmlinux).map_err(|e| match e {
        Error::BadVmlinux { path, problem } => Error::BadVmlinux {
            path,
            problem: format!("decompressed {compression} payload: {problem}"),
        },
        other => other,
    })?;
    Ok(Extracted {
        header,
        compression,
        vmlinux,
        elf,
        payload_range: range,
    })
}

/// File range of the payload: protected-mode start + payload_offset, for
/// payload_length bytes; bounds-checked against the file.
fn payload_range(path: &Path, h: &SetupHeader, image: &[u8]) -> Result<Range<usize>> {
    if h.version < MIN_PAYLOAD_PROTOCOL {
        return Err(bad(
            path,
            format!(
                "boot protocol {} (version at {:#x}) predates payload_offset/payload_length (2.08); the payload cannot be located — use a kernel from v2.6.26 or later",
                h.version_string(),
                off::VERSION
            ),
        ));
    }
    let pm_start = h.setup_size();
    let start = pm_start.checked_add(h.payload_offset as usize);
    let end = start.and_then(|s| s.checked_add(h.payload_length as usize));
    match (start, end) {
        (Some(start), Some(end)) if end <= image.len() => {
            if h.payload_length < 8 {
                return Err(bad(
                    path,
                    format!(
                        "payload_length at {:#x} is {}, too short for a compressed kernel plus its 4-byte size trailer; the image is corrupt",
                        off::PAYLOAD_LENGTH,
                        h.payload_length
                    ),
                ));
            }
            Ok(start..end)
        }
        _ => Err(bad(
            path,
            format!(
                "payload out of bounds: protected-mode code at {pm_start:#x} + payload_offset ({:#x}) {:#x} + payload_length ({:#x}) {:#x} ends past the end of the {}-byte file — the image is truncated or corrupt; re-copy it",
                off::PAYLOAD_OFFSET,
                h.payload_offset,
                off::PAYLOAD_LENGTH,
                h.payload_length,
                image.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kernel_release_from_kernel_version_pointer() {
        let mut img = vec![0u8; 0x400];
        assert_eq!(kernel_release(&img), None, "pointer 0 means no string");
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let text = b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP";
        img[0x300..0x300 + text.len()].copy_from_slice(text);
        assert_eq!(
            kernel_release(&img).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        img[0x300 + text.len()..].fill(b'x');
        assert_eq!(kernel_release(&img), None, "unterminated string");
        img[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert_eq!(kernel_release(&img), None, "pointer past the end");
    }
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const ELF: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vmlinux-tiny.elf"
    ));

    fn image(c: Compression) -> Vec<u8> {
        let p = format!("{FIXTURES}/bzImage-tiny.{c}");
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn put32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn problem(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::BadBzImage { problem, .. }) => problem,
            other => panic!("expected BadBzImage, got {other:?}"),
        }
    }

    #[test]
    fn every_format_extracts_to_the_exact_elf() {
        for c in Compression::ALL {
            let img = image(c);
            assert!(is_bzimage(&img));
            let x = extract_vmlinux(Path::new("bz"), &img).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(x.compression, c);
            assert!(
                x.vmlinux == ELF,
                "{c}: vmlinux differs from the fixture ELF"
            );
            assert_eq!(
                x.elf.entry,
                u64::from_le_bytes(ELF[0x18..0x20].try_into().unwrap())
            );
            x.header.check_64bit_boot(Path::new("bz")).unwrap();
        }
    }

    #[test]
    fn header_fields_come_from_their_offsets() {
        let img = image(Compression::Zstd);
        let h = parse_setup_header(Path::new("bz"), &img).unwrap();
        let u32_at = |o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap());
        assert_eq!(h.setup_sects, img[0x1f1]);
        assert_eq!(h.version, u16::from_le_bytes([img[0x206], img[0x207]]));
        assert_eq!(h.version_string(), "2.15");
        assert_eq!(h.loadflags, img[0x211]);
        assert_eq!(h.xloadflags, u16::from_le_bytes([img[0x236], img[0x237]]));
        assert_eq!(h.initrd_addr_max, u32_at(0x22c));
        assert_eq!(h.kernel_alignment, u32_at(0x230));
        assert_eq!(h.relocatable_kernel, img[0x234] != 0);
        assert_eq!(h.cmdline_size, u32_at(0x238));
        assert_eq!(h.payload_offset, u32_at(0x248));
        assert_eq!(h.payload_length, u32_at(0x24c));
        assert_eq!(
            h.pref_address,
            u64::from_le_bytes(img[0x258..0x260].try_into().unwrap())
        );
        assert_eq!(h.init_size, u32_at(0x260));
        assert_eq!(h.raw, &img[0x1f1..0x202 + usize::from(img[0x201])]);
        assert_eq!(h.setup_size(), (usize::from(img[0x1f1]) + 1) * 512);
    }

    #[test]
    fn setup_sects_zero_means_four() {
        // Move the protected-mode code from 2 to 5 sectors, as an old
        // kernel with setup_sects = 0 would have it.
        let img = image(Compression::Gzip);
        let mut moved = img[..1024].to_vec();
        moved.resize(5 * 512, 0);
        moved.extend_from_slice(&img[1024..]);
        moved[0x1f1] = 0;
        let x = extract_vmlinux(Path::new("bz"), &moved).unwrap();
        assert_eq!(x.header.setup_size(), 5 * 512);
        assert!(x.vmlinux == ELF);
    }

    #[test]
    fn not_a_bzimage() {
        let p = problem(parse_setup_header(Path::new("x"), &[0u8; 4096]));
        assert!(
            p.contains("boot_flag at 0x1fe is 0x0000, expected 0xAA55"),
            "{p}"
        );
        assert!(p.contains("pass a bzImage"), "{p}");

        let p = problem(parse_setup_header(Path::new("x"), ELF));
        assert!(p.contains("is an ELF"), "{p}");

        let mut img = image(Compression::Xz);
        img[0x202] = b'X';
        let p = problem(parse_setup_header(Path::new("x"), &img));
        assert!(p.contains("HdrS"), "{p}");
        assert!(!is_bzimage(&img));
        assert!(!is_bzimage(&[]));
    }

    #[test]
    fn truncated_image() {
        let img = image(Compression::Lz4);
        let p = problem(parse_setup_header(Path::new("x"), &img[..0x100]));
        assert!(p.contains("too short"), "{p}");
        let p = problem(parse_setup_header(Path::new("x"), &img[..0x240]));
        assert!(p.contains("truncated"), "{p}");
        let p = problem(parse_setup_header(Path::new("x"), &img[..0x300]));
        assert!(p.contains("protected-mode code starts at 0x400"), "{p}");
        // Cut inside the payload.
        let p = problem(extract_vmlinux(Path::new("x"), &img[..img.len() - 100]));
        assert!(p.contains("payload out of bounds"), "{p}");
    }

    #[test]
    fn payload_out_of_bounds() {
        let mut img = image(Compression::Bzip2);
        put32(&mut img, 0x24c, u32::MAX);
        let p = problem(extract_vmlinux(Path::new("x"), &img));
        assert!(
            p.contains("payload out of bounds") && p.contains("0x24c"),
            "{p}"
        );
        let mut img = image(Compression::Bzip2);
        put32(&mut img, 0x248, 0x10_0000);
        let p = problem(extract_vmlinux(Path::new("x"), &img));
        assert!(p.contains("payload_offset (0x248) 0x100000"), "{p}");
    }

    #[test]
    fn unknown_compression_magic() {
        let mut img = image(Compression::Zstd);
        let h = parse_setup_header(Path::new("x"), &img).unwrap();
        let start = h.setup_size() + h.payload_offset as usize;
        img[start..start + 4].copy_from_slice(b"ABCD");
        match extract_vmlinux(Path::new("x"), &img) {
            Err(Error::UnknownCompression { offset, magic, .. }) => {
                assert_eq!(offset, start as u64);
                assert!(magic.starts_with("41 42 43 44"), "{magic}");
            }
            other => panic!("expected UnknownCompression, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_payload_flipped_byte() {
        let mut img = image(Compression::Xz);
        let h = parse_setup_header(Path::new("x"), &img).unwrap();
        let start = h.setup_size() + h.payload_offset as usize;
        img[start + h.payload_length as usize / 2] ^= 0x40;
        let r = extract_vmlinux(Path::new("x"), &img);
        assert!(
            matches!(
                r,
                Err(Error::Decompress {
                    compression: Compression::Xz,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn size_trailer_mismatch() {
        for c in Compression::ALL {
            let mut img = image(c);
            let h = parse_setup_header(Path::new("x"), &img).unwrap();
            let end = h.setup_size() + (h.payload_offset + h.payload_length) as usize;
            if c == Compression::Gzip {
                // For gzip the trailer is the stream's own ISIZE; changing it
                // fails gzip's length check before ours.
                put32(&mut img, end - 4, ELF.len() as u32 + 1);
                assert!(extract_vmlinux(Path::new("x"), &img).is_err());
                continue;
            }
            put32(&mut img, end - 4, ELF.len() as u32 + 1);
            let err = extract_vmlinux(Path::new("x"), &img).unwrap_err();
            assert!(
                matches!(&err, Error::Decompress { problem, .. } if problem.contains("size trailer")),
                "{c}: {err}"
            );
            put32(&mut img, end - 4, 0);
            assert!(problem(extract_vmlinux(Path::new("x"), &img)).contains("is 0"));
        }
    }

    #[test]
    fn payload_that_is_not_a_vmlinux() {
        // A valid gzip stream of something that is not an ELF.
        let mut img = image(Compression::Gzip);
        let h = parse_setup_header(Path::new("x"), &img).unwrap();
        let start = h.setup_size() + h.payload_offset as usize;
        let not_elf = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&[0x55u8; 3000]).unwrap();
            e.finish().unwrap()
        };
        img.truncate(start);
        img.extend_from_slice(&not_elf);
        put32(&mut img, 0x24c, not_elf.len() as u32);
        let err = extract_vmlinux(Path::new("x"), &img).unwrap_err();
        assert!(
            matches!(&err, Error::BadVmlinux { problem, .. } if problem.starts_with("decompressed gzip payload: no ELF magic")),
            "{err}"
        );
    }

    #[test]
    fn check_64bit_boot_needs_protocol_and_flag() {
        let img = image(Compression::Lzo);
        let mut h = parse_setup_header(Path::new("x"), &img).unwrap();
        h.check_64bit_boot(Path::new("x")).unwrap();
        h.xloadflags &= !XLF_KERNEL_64;
        assert!(problem(h.check_64bit_boot(Path::new("x"))).contains("XLF_KERNEL_64"));
        let mut old = img.clone();
        old[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
        let h = parse_setup_header(Path::new("x"), &old).unwrap();
        assert_eq!(h.xloadflags, 0, "xloadflags is undefined before 2.12");
        assert!(problem(h.check_64bit_boot(Path::new("x"))).contains("older than 2.12"));
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(problem(extract_vmlinux(Path::new("x"), &old)).contains("predates payload_offset"));
    }

    #[test]
    fn mutated_images_never_panic() {
        let mut rng = crate::image::decompress::tests::XorShift(0x2545_f491_4f6c_dd1d);
        let mut rnd = || rng.next();
        for c in Compression::ALL {
            let img = image(c);
            for _ in 0..200 {
                let mut m = img.clone();
                // Mostly hit the header and the payload start.
                for _ in 0..=(rnd() % 3) {
                    let i = if rnd() % 2 == 0 {
                        0x1f0 + (rnd() as usize % 0x80)
                    } else {
                        rnd() as usize % m.len()
                    };
                    m[i] = rnd() as u8;
                }
                let cut = m.len() - (rnd() as usize % 64);
                let _ = extract_vmlinux(Path::new("m"), &m[..cut]);
            }
        }
    }
}
