//! The frame shared by our position-independent assembly blobs (the purgatory
//! and the staged-mode trampoline): a jump at 0, a magic at 0x08, the layout
//! version at 0x10, the end-of-code offset at 0x14, a TSC record in the
//! parameter block, the code, then a stack. The layout check and the
//! little-endian accessors live here once; each blob supplies its constants.

/// Offset of the blob's magic (u64).
pub const OFF_MAGIC: usize = 0x08;
/// Offset of the layout version (u32).
pub const OFF_VERSION: usize = 0x10;
/// Offset of the end-of-instructions offset (u32).
pub const OFF_CODE_END: usize = 0x14;

/// What one blob promises about its own layout.
pub struct Layout {
    pub magic: u64,
    pub version: u32,
    pub tsc_record: usize,
    pub tsc_magic: u64,
    /// Offset where the instructions start.
    pub code: usize,
    pub stack_size: usize,
}

/// Checks `bytes` has the layout the patching code relies on; the error is
/// the problem, for the caller's own error variant.
pub fn check(bytes: &[u8], l: &Layout) -> Result<(), String> {
    if bytes.len() < l.code + l.stack_size {
        return Err(format!(
            "blob is {} bytes, shorter than its header and stack ({} bytes); this build of fastkexec is broken",
            bytes.len(),
            l.code + l.stack_size
        ));
    }
    if read_u64(bytes, OFF_MAGIC) != l.magic {
        return Err(format!(
            "magic at {OFF_MAGIC:#x} is {:#018x}, expected {:#018x}",
            read_u64(bytes, OFF_MAGIC),
            l.magic
        ));
    }
    if read_u32(bytes, OFF_VERSION) != l.version {
        return Err(format!(
            "layout version {} at {OFF_VERSION:#x}, expected {}",
            read_u32(bytes, OFF_VERSION),
            l.version
        ));
    }
    if read_u64(bytes, l.tsc_record) != l.tsc_magic {
        return Err(format!("TSC record magic at {:#x} missing", l.tsc_record));
    }
    let code_end = read_u32(bytes, OFF_CODE_END) as usize;
    if code_end <= l.code || code_end > bytes.len() - l.stack_size {
        return Err(format!("code end offset {code_end:#x} outside the blob"));
    }
    Ok(())
}

// Callers pass constant offsets inside the length `check` accepted, so these
// cannot go out of bounds.

pub fn read_u64(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_le_bytes(b)
}

pub fn read_u32(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[off..off + 4]);
    u32::from_le_bytes(b)
}

pub fn write_u64(bytes: &mut [u8], off: usize, v: u64) {
    bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn write_u32(bytes: &mut [u8], off: usize, v: u32) {
    bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Decodes a blob's instructions as they would run at `ip`: the jump at 0 and
/// the code from `code` to `code_end` (the parameter block in between is data).
#[cfg(all(test, target_arch = "x86_64"))]
pub fn decode(bytes: &[u8], code: usize, code_end: usize, ip: u64) -> Vec<iced_x86::Instruction> {
    use iced_x86::{Decoder, DecoderOptions};
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, &bytes[..OFF_MAGIC], ip, DecoderOptions::NONE);
    out.push(d.decode());
    let mut d = Decoder::with_ip(
        64,
        &bytes[code..code_end],
        ip + code as u64,
        DecoderOptions::NONE,
    );
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}
