//! Decoders for the compressed kernel payload inside a bzImage.
//!
//! The x86 kernel build compresses `vmlinux.bin` with one of seven tools
//! (scripts/Makefile.lib, arch/x86/boot/compressed/Makefile) and the boot
//! decompressor recognises the format by its magic; so do we. Everything here
//! is pure Rust so the static musl build needs no C toolchain.
//!
//! Two formats are decoded by hand because no suitable pure-Rust crate exists
//! for the container the kernel uses: the LZ4 *legacy* frame (`lz4 -l`) around
//! plain LZ4 blocks, and the lzop container around LZO1X blocks (the LZO1X
//! decoder below is written from the bitstream description in the kernel's
//! Documentation/staging/lzo.rst).

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// No decompressed kernel may exceed this; real ones are 50–70 MB. It bounds
/// every allocation driven by sizes read from the (untrusted) image.
pub const MAX_OUTPUT: usize = 1 << 30;

/// Largest LZMA/XZ dictionary we agree to allocate (the kernel uses 32 MiB
/// for xz and at most 64 MiB for `lzma -9`).
const MAX_DICT_KIB: u32 = 256 * 1024;

/// `zstd -22 --ultra` reading from a pipe uses a 128 MiB window (log 27).
const MAX_ZSTD_WINDOW: u64 = 128 << 20;

/// A compression format the kernel build can use for the bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

impl Compression {
    /// Every format, in the order of the kernel's Kconfig choice.
    pub const ALL: [Compression; 7] = [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Lzma,
        Compression::Xz,
        Compression::Lzo,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Lower-case name, as in `CONFIG_KERNEL_<NAME>`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Whether the kernel build appends its own 4-byte size after the
    /// compressed stream. gzip is the exception: the gzip trailer's ISIZE
    /// field already ends the stream with the little-endian size, so the build
    /// adds nothing and the trailer is part of the stream.
    pub fn has_appended_size(self) -> bool {
        self != Compression::Gzip
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const LZOP_MAGIC: &[u8] = &[0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Recognises the payload's format from its first bytes, the way the boot
/// decompressor does (lib/decompress.c), with the full magic where one exists.
pub fn detect(payload: &[u8]) -> Option<Compression> {
    if payload.starts_with(GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else if payload.len() >= 4
        && payload.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&payload[3])
    {
        Some(Compression::Bzip2)
    } else if payload.starts_with(XZ_MAGIC) {
        Some(Compression::Xz)
    } else if payload.starts_with(LZOP_MAGIC) {
        Some(Compression::Lzo)
    } else if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Some(Compression::Lz4)
    } else if payload.starts_with(ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else if payload.starts_with(&[0x5d, 0x00]) {
        // .lzma "alone" header: properties byte 0x5d (lc=3 lp=0 pb=2, what
        // every lzma preset writes), then the little-endian dictionary size,
        // whose low byte is 0 for all presets.
        Some(Compression::Lzma)
    } else {
        None
    }
}

/// Decompresses `stream` — the compressor's output exactly, *without* the
/// kernel build's appended size (see [`Compression::has_appended_size`]).
///
/// `expected_len` is the size the output must have (the bzImage size
/// trailer); it also bounds the output. Without it the output is bounded by
/// [`MAX_OUTPUT`]. Trailing bytes after the compressed stream are an error:
/// they mean the payload boundaries are wrong.
pub fn decompress(
    path: &Path,
    c: Compression,
    stream: &[u8],
    expected_len: Option<usize>,
) -> Result<Vec<u8>> {
    let fail = |problem: String| Error::Decompress {
        path: path.to_path_buf(),
        compression: c,
        problem,
    };
    let limit = match expected_len {
        Some(n) if n > MAX_OUTPUT => {
            return Err(fail(format!(
                "the size trailer claims {n} bytes, more than the {MAX_OUTPUT}-byte limit for a kernel; the image is corrupt"
            )))
        }
        Some(n) => n,
        None => MAX_OUTPUT,
    };
    // Every decoder reads at most `limit + 1` bytes so "too long" is visible
    // without decoding an arbitrarily large stream.
    let mut out = Vec::with_capacity(expected_len.unwrap_or(0));
    let outcome = match c {
        Compression::Gzip => gunzip(stream, limit, &mut out),
        Compression::Bzip2 => bunzip2(stream, limit, &mut out),
        Compression::Lzma => unlzma(stream, limit, &mut out),
        Compression::Xz => unxz(stream, limit, &mut out),
        Compression::Lzo => unlzop(stream, limit, &mut out),
        Compression::Lz4 => unlz4_legacy(stream, limit, &mut out),
        Compression::Zstd => unzstd(stream, limit, &mut out),
    };
    match outcome {
        Ok(()) => {}
        Err(Stop::TooLong) => {
            return Err(fail(match expected_len {
                Some(n) => format!(
                    "decompresses to more than the {n} bytes the size trailer states; the image is corrupt"
                ),
                None => format!("decompresses to more than the {MAX_OUTPUT}-byte limit for a kernel"),
            }))
        }
        Err(Stop::Bad(e)) => {
            return Err(fail(format!(
                "{e}; the image is corrupt or truncated — re-copy it or reinstall the kernel package"
            )))
        }
    }
    if let Some(n) = expected_len {
        if out.len() != n {
            return Err(fail(format!(
                "decompressed to {} bytes but the size trailer states {n}; the image is corrupt or truncated",
                out.len()
            )));
        }
    }
    Ok(out)
}

/// Why a decoder stopped before the end of its stream.
enum Stop {
    /// The output would grow past the limit.
    TooLong,
    /// The stream is malformed; the text says where. Becomes the `problem`
    /// of [`Error::Decompress`].
    Bad(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Self {
        Stop::Bad(s)
    }
}

impl From<&str> for Stop {
    fn from(s: &str) -> Self {
        Stop::Bad(s.to_string())
    }
}

type DecodeResult<T = ()> = std::result::Result<T, Stop>;

/// Reads `reader` to its end into `out`, stopping one byte past `limit`.
fn read_capped(reader: impl Read, limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(out)
        .map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(Stop::TooLong);
    }
    Ok(())
}

fn no_trailing(format: &str, rest: usize) -> DecodeResult {
    if rest == 0 {
        Ok(())
    } else {
        Err(Stop::Bad(format!(
            "{rest} unexpected bytes after the end of the {format} stream"
        )))
    }
}

fn gunzip(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    // bufread: the decoder takes bytes from the slice only as it needs them,
    // so what is left afterwards is exactly what follows the gzip member.
    let mut d = flate2::bufread::GzDecoder::new(stream);
    read_capped(&mut d, limit, out)?;
    no_trailing("gzip", d.into_inner().len())
}

fn bunzip2(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    let mut d = bzip2::bufread::BzDecoder::new(stream);
    read_capped(&mut d, limit, out)?;
    no_trailing("bzip2", d.into_inner().len())
}

fn unlzma(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    // The build writes the legacy .lzma header from a pipe: the size field is
    // "unknown" and the stream ends with an end marker.
    let mut d = lzma_rust2::LzmaReader::new_mem_limit(stream, MAX_DICT_KIB, None)
        .map_err(|e| format!("bad .lzma header: {e}"))?;
    read_capped(&mut d, limit, out)?;
    let (rest, buffered) = d.into_parts();
    no_trailing("lzma", rest.len().saturating_add(buffered.len()))
}

fn unxz(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    // One stream with the x86 BCJ filter and a CRC32 check (scripts/xz_wrap.sh);
    // the reader verifies the check and the index.
    let mut d = lzma_rust2::XzReader::new_mem_limit(stream, false, MAX_DICT_KIB);
    read_capped(&mut d, limit, out)?;
    // The reader pulls bytes straight from the slice (no read-ahead), so the
    // rest is what follows the stream footer.
    no_trailing("xz", d.into_inner().len())
}

fn unzstd(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    let mut d =
        ruzstd::decoding::StreamingDecoder::new_with_max_window_size(stream, MAX_ZSTD_WINDOW)
            .map_err(|e| format!("bad zstd frame header: {e}"))?;
    read_capped(&mut d, limit, out)?;
    // ruzstd computes the content checksum but leaves the comparison to us.
    let frame = &d.decoder;
    if let (Some(stored), Some(computed)) = (
        frame.get_checksum_from_data(),
        frame.get_calculated_checksum(),
    ) {
        if stored != computed {
            return Err(Stop::Bad(format!(
                "zstd content checksum mismatch (frame says {stored:#010x}, data hashes to {computed:#010x})"
            )));
        }
    }
    no_trailing("zstd", d.get_ref().len())
}

/// Each legacy-frame block decodes to at most 8 MiB (`lz4 -l`).
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The LZ4 legacy frame: the magic, then blocks each prefixed by their
/// little-endian compressed length, until the end of input. A repeated magic
/// starts a concatenated frame. There is no checksum in this format.
fn unlz4_legacy(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    let max_block_in = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
    let mut rest = stream
        .strip_prefix(&LZ4_LEGACY_MAGIC.to_le_bytes()[..])
        .ok_or("missing LZ4 legacy magic")?;
    // Decoding into a zeroed scratch block and copying out is cheaper than
    // growing `out` by a zero-filled 8 MiB for every block.
    let mut scratch = vec![0u8; LZ4_LEGACY_BLOCK.min(limit.saturating_add(1))];
    let mut block_no = 0usize;
    while !rest.is_empty() {
        let (len_bytes, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("LZ4 block {block_no}: truncated length field"))?;
        let n = u32::from_le_bytes(*len_bytes);
        rest = tail;
        if n == LZ4_LEGACY_MAGIC {
            continue;
        }
        let n = n as usize;
        if n > max_block_in {
            return Err(Stop::Bad(format!(
                "LZ4 block {block_no}: compressed length {n} exceeds the legacy-frame maximum {max_block_in}"
            )));
        }
        let block = rest.get(..n).ok_or_else(|| {
            format!(
                "LZ4 block {block_no}: {n} compressed bytes announced, {} left",
                rest.len()
            )
        })?;
        rest = &rest[n..];
        // One byte of room past the limit, so an over-long block is reported
        // as too long rather than as a decoding error.
        let room = LZ4_LEGACY_BLOCK.min(limit.saturating_add(1).saturating_sub(out.len()));
        let got = match lz4_flex::block::decompress_into(block, &mut scratch[..room]) {
            Ok(n) => n,
            // Room was cut short by the limit: the block is longer than
            // allowed, which the caller reports as a size problem.
            Err(lz4_flex::block::DecompressError::OutputTooSmall { .. })
                if room < LZ4_LEGACY_BLOCK =>
            {
                return Err(Stop::TooLong);
            }
            Err(e) => return Err(Stop::Bad(format!("LZ4 block {block_no}: {e}"))),
        };
        out.extend_from_slice(&scratch[..got]);
        if out.len() > limit {
            return Err(Stop::TooLong);
        }
        block_no += 1;
    }
    Ok(())
}

// lzop container flags (lzop's conf.h).
const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_MULTIPART: u32 = 0x0000_0400;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;

/// lzop's own ceiling on a block's uncompressed size.
const LZOP_MAX_BLOCK: usize = 64 << 20;

/// Bounds-checked big-endian cursor over the lzop container.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "lzop {what} at stream offset {:#x}: truncated",
                self.pos
            )),
        }
    }
    fn u8(&mut self, what: &str) -> std::result::Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> std::result::Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Adler-32 as lzop uses it (RFC 1950, initial value 1): the `adler2` crate's, the one
/// miniz_oxide (flate2's backend) checks zlib streams with.
fn adler32(data: &[u8]) -> u32 {
    adler2::adler32_slice(data)
}

fn check_sum(kind: &str, what: &str, stored: u32, computed: u32) -> DecodeResult {
    if stored == computed {
        Ok(())
    } else {
        Err(Stop::Bad(format!(
            "lzop {what}: {kind} mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )))
    }
}

/// The lzop container (`lzop -9`) around LZO1X blocks.
fn unlzop(stream: &[u8], limit: usize, out: &mut Vec<u8>) -> DecodeResult {
    let mut c = Cursor {
        buf: stream,
        pos: 0,
    };
    if c.take(LZOP_MAGIC.len(), "magic")? != LZOP_MAGIC {
        return Err("missing lzop magic".into());
    }
    let header_start = c.pos;
    let version = c.u16("version")?;
    let _lib_version = c.u16("library version")?;
    if version >= 0x0940 {
        let _needed = c.u16("version needed")?;
    }
    let method = c.u8("method")?;
    // 1, 2, 3: LZO1X-1, LZO1X-1(15), LZO1X-999 — one decoder reads all three.
    if !(1..=3).contains(&method) {
        return Err(Stop::Bad(format!(
            "lzop method {method} is not LZO1X (1..3); recompress with lzop -9"
        )));
    }
    if version >= 0x0940 {
        let _level = c.u8("level")?;
    }
    let flags = c.u32("flags")?;
    if flags & F_H_FILTER != 0 {
        return Err("lzop data filters are not supported (the kernel build uses none)".into());
    }
    if flags & F_MULTIPART != 0 {
        return Err("multi-part lzop archives are not supported".into());
    }
    let _mode = c.u32("mode")?;
    let _mtime = c.u32("mtime")?;
    if version >= 0x0940 {
        let _mtime_high = c.u32("mtime (high)")?;
    }
    let name_len = c.u8("name length")?;
    c.take(usize::from(name_len), "name")?;
    let header = &stream[header_start..c.pos];
    let stored = c.u32("header checksum")?;
    if flags & F_H_CRC32 != 0 {
        check_sum("CRC32", "header", stored, crc32fast::hash(header))?;
    } else {
        check_sum("Adler-32", "header", stored, adler32(header))?;
    }
    if flags & F_H_EXTRA_FIELD != 0 {
        let n = c.u32("extra field length")?;
        c.take(n as usize, "extra field")?;
        c.u32("extra field checksum")?;
    }

    let mut block_no = 0usize;
    loop {
        let what = format!("block {block_no}");
        let dst_len = c.u32(&what)? as usize;
        if dst_len == 0 {
            break;
        }
        if dst_len > LZOP_MAX_BLOCK {
            return Err(Stop::Bad(format!(
                "lzop {what}: uncompressed size {dst_len} exceeds lzop's maximum {LZOP_MAX_BLOCK}"
            )));
        }
        let src_len = c.u32(&what)? as usize;
        if src_len > dst_len {
            return Err(Stop::Bad(format!(
                "lzop {what}: compressed size {src_len} exceeds uncompressed size {dst_len}"
            )));
        }
        let d_adler = (flags & F_ADLER32_D != 0)
            .then(|| c.u32(&what))
            .transpose()?;
        let d_crc = (flags & F_CRC32_D != 0).then(|| c.u32(&what)).transpose()?;
        let stored_block = src_len == dst_len;
        let (c_adler, c_crc) = if stored_block {
            (None, None)
        } else {
            (
                (flags & F_ADLER32_C != 0)
                    .then(|| c.u32(&what))
                    .transpose()?,
                (flags & F_CRC32_C != 0).then(|| c.u32(&what)).transpose()?,
            )
        };
        let data = c.take(src_len, &what)?;
        if let Some(s) = c_adler {
            check_sum("Adler-32", &what, s, adler32(data))?;
        }
        if let Some(s) = c_crc {
            check_sum("CRC32", &what, s, crc32fast::hash(data))?;
        }
        if out.len().saturating_add(dst_len) > limit {
            return Err(Stop::TooLong);
        }
        let start = out.len();
        if stored_block {
            out.extend_from_slice(data);
        } else {
            lzo1x_decompress(data, out, dst_len).map_err(|e| format!("lzop {what}: {e}"))?;
        }
        let block = &out[start..];
        if let Some(s) = d_adler {
            check_sum("Adler-32", &what, s, adler32(block))?;
        }
        if let Some(s) = d_crc {
            check_sum("CRC32", &what, s, crc32fast::hash(block))?;
        }
        block_no += 1;
    }
    no_trailing("lzop", stream.len() - c.pos)
}

/// Decodes one LZO1X block, appending exactly `dst_len` bytes to `out`.
/// Back-references may only reach into this block's own output.
fn lzo1x_decompress(
    src: &[u8],
    out: &mut Vec<u8>,
    dst_len: usize,
) -> std::result::Result<(), String> {
    let base = out.len();
    let end = base + dst_len;
    let mut ip = 0usize;

    let next = |ip: &mut usize| -> std::result::Result<usize, String> {
        let b = *src
            .get(*ip)
            .ok_or_else(|| format!("input ends at offset {ip:#x} inside an instruction"))?;
        *ip += 1;
        Ok(usize::from(b))
    };
    // Length extension: each zero byte adds 255, the first non-zero byte ends it.
    let extend = |ip: &mut usize, base_len: usize| -> std::result::Result<usize, String> {
        let mut len = base_len;
        loop {
            let b = next(ip)?;
            if b != 0 {
                return Ok(len + b);
            }
            len += 255;
            if len > dst_len {
                return Err(format!(
                    "length run at offset {ip:#x} exceeds the block size"
                ));
            }
        }
    };
    let literals =
        |ip: &mut usize, out: &mut Vec<u8>, n: usize| -> std::result::Result<(), String> {
            let lit = src.get(*ip..).and_then(|s| s.get(..n)).ok_or_else(|| {
                format!("literal run of {n} at offset {ip:#x} runs past the input")
            })?;
            if out.len() + n > end {
                return Err(format!(
                    "literal run at offset {ip:#x} overruns the block size {dst_len}"
                ));
            }
            out.extend_from_slice(lit);
            *ip += n;
            Ok(())
        };
    let copy_match = |out: &mut Vec<u8>,
                      dist: usize,
                      len: usize,
                      at: usize|
     -> std::result::Result<(), String> {
        let have = out.len() - base;
        if dist > have {
            return Err(format!(
                "match at offset {at:#x} reaches {dist} bytes back, only {have} decoded"
            ));
        }
        if out.len() + len > end {
            return Err(format!(
                "match at offset {at:#x} overruns the block size {dst_len}"
            ));
        }
        // Overlapping matches repeat the last `dist` bytes; copy in runs that
        // only read bytes already written.
        let mut from = out.len() - dist;
        let mut left = len;
        while left > 0 {
            let n = left.min(out.len() - from);
            out.extend_from_within(from..from + n);
            from += n;
            left -= n;
        }
        Ok(())
    };

    // state: literals copied by the previous instruction (0..=3), or 4 for
    // "4 or more"; it selects the meaning of the next 0000xxxx instruction.
    let mut state;
    let first = next(&mut ip)?;
    if first > 17 {
        let n = first - 17;
        literals(&mut ip, out, n)?;
        state = n.min(4);
    } else {
        ip = 0;
        state = 0;
    }

    loop {
        let at = ip;
        let op = next(&mut ip)?;
        let (dist, len, trailing);
        if op < 16 {
            match state {
                0 => {
                    let l = op & 15;
                    let n = 3 + if l == 0 { extend(&mut ip, 15)? } else { l };
                    literals(&mut ip, out, n)?;
                    state = 4;
                    continue;
                }
                1..=3 => {
                    let h = next(&mut ip)?;
                    dist = (h << 2) + ((op >> 2) & 3) + 1;
                    len = 2;
                }
                _ => {
                    let h = next(&mut ip)?;
                    dist = (h << 2) + ((op >> 2) & 3) + 2049;
                    len = 3;
                }
            }
            trailing = op & 3;
        } else if op < 32 {
            let l = op & 7;
            len = 2 + if l == 0 { extend(&mut ip, 7)? } else { l };
            let lo = next(&mut ip)?;
            let hi = next(&mut ip)?;
            let d = (hi << 6) | (lo >> 2);
            dist = 16384 + ((op & 8) << 11) + d;
            trailing = lo & 3;
            if dist == 16384 {
                // End-of-stream marker.
                if ip != src.len() {
                    return Err(format!(
                        "{} bytes after the end-of-stream marker",
                        src.len() - ip
                    ));
                }
                if out.len() != end {
                    return Err(format!(
                        "block decodes to {} bytes, header says {dst_len}",
                        out.len() - base
                    ));
                }
                return Ok(());
            }
        } else if op < 64 {
            let l = op & 31;
            len = 2 + if l == 0 { extend(&mut ip, 31)? } else { l };
            let lo = next(&mut ip)?;
            let hi = next(&mut ip)?;
            dist = ((hi << 6) | (lo >> 2)) + 1;
            trailing = lo & 3;
        } else {
            let h = next(&mut ip)?;
            len = if op < 128 {
                3 + ((op >> 5) & 1)
            } else {
                5 + ((op >> 5) & 3)
            };
            dist = (h << 3) + ((op >> 2) & 7) + 1;
            trailing = op & 3;
        }
        copy_match(out, dist, len, at)?;
        literals(&mut ip, out, trailing)?;
        state = trailing;
    }
}

#[cfg(test)]
pub(crate) mod tests;
