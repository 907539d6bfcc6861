//! The generic blob both position-independent asm blobs (the purgatory and the staged-mode
//! trampoline) are instances of: a jump at 0, a magic at 0x08, the layout version at 0x10, the
//! end-of-code offset at 0x14, named u64 parameters, a TSC record, the code, then a stack. Each
//! blob is a [`Kind`] (its constants, fields and assembled bytes); [`Blob`] holds a patched copy,
//! and the layout check, the field patching and the asm routines both use live here once.

use crate::error::{Error, Result};
use std::marker::PhantomData;

/// Offset of the blob's magic (u64).
pub const OFF_MAGIC: usize = 0x08;
/// Offset of the layout version (u32).
pub const OFF_VERSION: usize = 0x10;
/// Offset of the end-of-instructions offset (u32).
pub const OFF_CODE_END: usize = 0x14;
/// Size of the TSC record (magic, TSC at entry, TSC before the jump, one blob-specific word).
pub const TSC_RECORD_SIZE: usize = 32;

/// A named little-endian u64 parameter of a blob, patched before the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub off: usize,
}

impl Field {
    pub const fn at(name: &'static str, off: usize) -> Self {
        Self { name, off }
    }
}

/// What one blob is: its layout promises, its patchable fields and its assembled bytes.
pub struct Layout {
    /// For messages and tests: "purgatory", "trampoline".
    pub name: &'static str,
    pub magic: u64,
    /// Bumped whenever an offset of the blob changes.
    pub version: u32,
    /// Offset of the TSC record: `tsc_magic`, the TSC at entry, the TSC before the jump, one
    /// blob-specific word.
    pub tsc_record: usize,
    pub tsc_magic: u64,
    /// Offset where the instructions start.
    pub code: usize,
    /// The built-in stack: the last this-many bytes of the blob.
    pub stack_size: usize,
    /// Where the blob copies its TSC record before the jump (0 = nowhere): physical, 8-byte
    /// aligned, [`TSC_RECORD_SIZE`] bytes reserved for the next kernel.
    pub tsc_out: Field,
    /// Every u64 parameter the loader patches (each starts zeroed in the assembled blob).
    pub fields: &'static [Field],
    /// The unpatched blob as assembled into this program (empty off x86-64).
    pub assembled: fn() -> &'static [u8],
    /// This blob's error variant.
    pub error: fn(String) -> Error,
}

/// A blob type: a marker that names its [`Layout`].
pub trait Kind {
    const LAYOUT: Layout;
}

/// A copy of a blob with its parameters filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob<K> {
    bytes: Vec<u8>,
    kind: PhantomData<K>,
}

impl<K: Kind> Blob<K> {
    /// A fresh copy of this program's blob.
    pub fn new() -> Result<Self> {
        Self::from_bytes((K::LAYOUT.assembled)().to_vec())
    }

    /// Wraps a blob after checking it has the layout the patching relies on.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        check(&bytes, &K::LAYOUT).map_err(K::LAYOUT.error)?;
        Ok(Self {
            bytes,
            kind: PhantomData,
        })
    }

    /// The patched bytes, to be loaded as one segment.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Offset of the end of the instructions (data and the stack follow).
    pub fn code_end(&self) -> usize {
        read_u32(&self.bytes, OFF_CODE_END) as usize
    }

    /// Offset just past the built-in stack: an initial %rsp relative to the load address.
    pub fn stack_end(&self) -> usize {
        self.bytes.len()
    }

    pub fn get(&self, f: Field) -> u64 {
        read_u64(&self.bytes, f.off)
    }

    pub fn set(&mut self, f: Field, v: u64) {
        write_u64(&mut self.bytes, f.off, v);
    }

    pub(crate) fn get_u32(&self, off: usize) -> u32 {
        read_u32(&self.bytes, off)
    }

    pub(crate) fn set_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn fill(&mut self, range: std::ops::Range<usize>, v: u8) {
        self.bytes[range].fill(v);
    }
}

/// The layout check; the error is the problem, for the kind's own error variant.
fn check(bytes: &[u8], l: &Layout) -> Result<(), String> {
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

// Callers pass offsets inside the length `check` accepted, so these cannot go out of bounds.

fn read_u64(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_le_bytes(b)
}

fn read_u32(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[off..off + 4]);
    u32::from_le_bytes(b)
}

fn write_u64(bytes: &mut [u8], off: usize, v: u64) {
    bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Defines `pub fn blob() -> &'static [u8]` as the bytes between two symbols a `global_asm!`
/// block of this program defines (empty off x86-64, where no blob is assembled).
macro_rules! assembled_between {
    ($start:ident, $end:ident) => {
        /// The unpatched blob, as assembled into this program.
        #[cfg(target_arch = "x86_64")]
        pub fn blob() -> &'static [u8] {
            extern "C" {
                static $start: u8;
                static $end: u8;
            }
            let start = core::ptr::addr_of!($start);
            let end = core::ptr::addr_of!($end);
            let len = (end as usize).saturating_sub(start as usize);
            // SAFETY: both symbols are defined by one global_asm! block of this crate, in one
            // section, `end` after `start`; the bytes between them are initialised
            // (instructions and data directives), part of this program's image and never
            // written, so they are valid for reads for the program's lifetime.
            unsafe { core::slice::from_raw_parts(start, len) }
        }

        /// The blobs are x86-64 code, assembled only into x86-64 builds.
        #[cfg(not(target_arch = "x86_64"))]
        pub fn blob() -> &'static [u8] {
            &[]
        }
    };
}
pub(crate) use assembled_between;

/// Assembles the blob `$layout` describes into section `.text.fastkexec_$name` between the symbols
/// `fastkexec_$name_start` and `_end`: the frame's head (the jump to the code, magic, version,
/// code end, the zeroed parameters, the TSC record), then the code, which starts by stamping the
/// TSC at entry and continues with `$asm`, which must define the local labels `_code_end` and
/// (for [`asm_stamp_exit`]) `_jump`; last the zeroed stack, ending at `_stack_end`. `$p` is the
/// blob's local-label prefix. The frame's operands (`{magic}`, `{off_tsc_out}`, `{seed}`, ...)
/// are defined here; `$operands` adds the blob's own.
macro_rules! global_blob {
    (
        layout: $layout:ident,
        name: $name:literal,
        prefix: $p:literal,
        asm: [$($asm:expr),* $(,)?],
        $($operands:tt)*
    ) => {
        #[cfg(target_arch = "x86_64")]
        core::arch::global_asm!(
            concat!(
                ".pushsection .text.fastkexec_", $name, ",\"ax\",@progbits\n",
                ".balign 16\n",
                ".globl fastkexec_", $name, "_start\n",
                ".hidden fastkexec_", $name, "_start\n",
                "fastkexec_", $name, "_start:\n",
                ".L", $p, "_base:\n",
                // A fixed-size jump, so the header lands at fixed offsets.
                ".byte 0xe9\n",
                ".long .L", $p, "_code - (. + 4)\n",
                ".skip {off_magic} - (. - .L", $p, "_base), 0\n",
                ".quad {magic}\n",
                ".long {version}\n",
                ".long .L", $p, "_code_end - .L", $p, "_base\n",
                // The parameters start zeroed; the loader patches them.
                ".skip {off_tsc_record} - (. - .L", $p, "_base), 0\n",
                ".quad {tsc_magic}\n",
                ".skip {off_code} - (. - .L", $p, "_base), 0\n",
                ".L", $p, "_code:\n",
            ),
            $crate::blobs::frame::asm_stamp_entry!($p),
            $($asm,)*
            concat!(
                ".balign 16\n",
                ".skip {stack_size}, 0\n",
                ".L", $p, "_stack_end:\n",
                ".globl fastkexec_", $name, "_end\n",
                ".hidden fastkexec_", $name, "_end\n",
                "fastkexec_", $name, "_end:\n",
                ".popsection\n",
            ),
            off_magic = const $crate::blobs::frame::OFF_MAGIC,
            magic = const $layout.magic,
            version = const $layout.version,
            off_tsc_record = const $layout.tsc_record,
            tsc_magic = const $layout.tsc_magic,
            off_tsc_entry = const $layout.tsc_record + 8,
            off_tsc_exit = const $layout.tsc_record + 16,
            off_tsc_out = const $layout.tsc_out.off,
            off_code = const $layout.code,
            stack_size = const $layout.stack_size,
            seed = const $crate::blobs::purgatory::CHECKSUM_SEED,
            $($operands)*
            options(att_syntax)
        );
    };
}
pub(crate) use global_blob;

// Assembly both blobs run, as template pieces for their code. `$p` is the blob's local-label
// prefix; `{off_tsc_*}` are operands [`global_blob`] defines.

/// `cli`, `cld`, then the TSC at entry into the record.
macro_rules! asm_stamp_entry {
    ($p:literal) => {
        concat!(
            "cli\n",
            "cld\n",
            "rdtsc\n",
            "shlq $32, %rdx\n",
            "orq %rdx, %rax\n",
            "movq %rax, .L",
            $p,
            "_base+{off_tsc_entry}(%rip)\n",
        )
    };
}
pub(crate) use asm_stamp_entry;

/// The TSC before the jump into the record, then the record copied to `tsc_out` if set;
/// falls through to (or jumps to) the local label `_jump`, which the blob defines next.
macro_rules! asm_stamp_exit {
    ($p:literal) => {
        concat!(
            "rdtsc\n",
            "shlq $32, %rdx\n",
            "orq %rdx, %rax\n",
            "movq %rax, .L",
            $p,
            "_base+{off_tsc_exit}(%rip)\n",
            "movq .L",
            $p,
            "_base+{off_tsc_out}(%rip), %rdi\n",
            "testq %rdi, %rdi\n",
            "jz .L",
            $p,
            "_jump\n",
            "leaq .L",
            $p,
            "_base+{off_tsc_record}(%rip), %rsi\n",
            "movq 0(%rsi), %rax\n",
            "movq %rax, 0(%rdi)\n",
            "movq 8(%rsi), %rax\n",
            "movq %rax, 8(%rdi)\n",
            "movq 16(%rsi), %rax\n",
            "movq %rax, 16(%rdi)\n",
            "movq 24(%rsi), %rax\n",
            "movq %rax, 24(%rdi)\n",
        )
    };
}
pub(crate) use asm_stamp_exit;

/// `_sum`: the purgatory checksum ([`crate::blobs::purgatory::checksum`]) of `$count` u64 words
/// at `$addr` into rax; clobbers rdx, `$addr` and `$count`. Needs the `{seed}` operand.
macro_rules! asm_checksum {
    ($p:literal, $addr:literal, $count:literal) => {
        concat!(
            ".L",
            $p,
            "_sum:\n",
            "movabsq ${seed}, %rax\n",
            "xorl %edx, %edx\n",
            "testq ",
            $count,
            ", ",
            $count,
            "\n",
            "jz .L",
            $p,
            "_sum_done\n",
            ".L",
            $p,
            "_sum_loop:\n",
            "addq (",
            $addr,
            "), %rax\n",
            "addq %rax, %rdx\n",
            "addq $8, ",
            $addr,
            "\n",
            "decq ",
            $count,
            "\n",
            "jnz .L",
            $p,
            "_sum_loop\n",
            ".L",
            $p,
            "_sum_done:\n",
            "rolq $32, %rdx\n",
            "xorq %rdx, %rax\n",
            "ret\n",
        )
    };
}
pub(crate) use asm_checksum;

/// `_puts` (rsi = NUL-terminated string; clobbers rax, rcx, rdx, rsi, r8), `_puthex` (rax as
/// "0x" and 16 hex digits; clobbers rax, rcx, rdx, r8, r9, r10) and `_putc` (cl on COM1, after
/// a bounded wait for an empty transmit register).
macro_rules! asm_uart {
    ($p:literal) => {
        concat!(
            ".L",
            $p,
            "_puts:\n",
            "movzbl (%rsi), %ecx\n",
            "testl %ecx, %ecx\n",
            "jz .L",
            $p,
            "_puts_done\n",
            "call .L",
            $p,
            "_putc\n",
            "incq %rsi\n",
            "jmp .L",
            $p,
            "_puts\n",
            ".L",
            $p,
            "_puts_done:\n",
            "ret\n",
            ".L",
            $p,
            "_puthex:\n",
            "movq %rax, %r9\n",
            "movl $0x30, %ecx\n",
            "call .L",
            $p,
            "_putc\n",
            "movl $0x78, %ecx\n",
            "call .L",
            $p,
            "_putc\n",
            "movl $16, %r10d\n",
            ".L",
            $p,
            "_puthex_loop:\n",
            "rolq $4, %r9\n",
            "movl %r9d, %ecx\n",
            "andl $0xf, %ecx\n",
            "cmpl $10, %ecx\n",
            "jb .L",
            $p,
            "_puthex_digit\n",
            "addl $0x27, %ecx\n",
            ".L",
            $p,
            "_puthex_digit:\n",
            "addl $0x30, %ecx\n",
            "call .L",
            $p,
            "_putc\n",
            "decl %r10d\n",
            "jnz .L",
            $p,
            "_puthex_loop\n",
            "ret\n",
            ".L",
            $p,
            "_putc:\n",
            "movl $0x3fd, %edx\n",
            "movl $0x100000, %r8d\n",
            ".L",
            $p,
            "_putc_wait:\n",
            "inb %dx, %al\n",
            "testb $0x20, %al\n",
            "jnz .L",
            $p,
            "_putc_send\n",
            "pause\n",
            "decl %r8d\n",
            "jnz .L",
            $p,
            "_putc_wait\n",
            ".L",
            $p,
            "_putc_send:\n",
            "movl $0x3f8, %edx\n",
            "movb %cl, %al\n",
            "outb %al, %dx\n",
            "ret\n",
        )
    };
}
pub(crate) use asm_uart;

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) mod tests;
