//! The staged-mode trampoline: the one-page *normal* kexec image that runs
//! after `fastkexec exec` and jumps into the kernel staged in the
//! crashkernel reservation (see [`staged`](crate::staged)).
//!
//! The old kernel's `relocate_kernel` enters it like any purgatory: 64-bit
//! mode, identity map of RAM (the reservation included), interrupts off,
//! garbage in the other registers and segment state. It then:
//! 1. stamps the TSC (the first instruction after `cli`/`cld`), so the
//!    tracer can split "relocation copy" (one page here) from the rest;
//! 2. takes its own small stack at the end of the blob;
//! 3. checks that the reservation still holds what `fastkexec load` staged
//!    there ([`fastkexec_trampoline_check`]: the staged header's magic,
//!    length and nonce against its own copy, the header's checksum, then
//!    every range the header lists — small ones summed in full, large ones
//!    one 64-bit word per [`SAMPLE_BLOCK`] of 64 KiB);
//! 4. if all match: stamps the TSC again, copies its TSC record to `tsc_out`
//!    if set, and jumps to `target` (the staged purgatory of the normal path,
//!    which sets up its GDT and stack and enters the kernel);
//! 5. if anything differs (e.g. a kdump service reloaded the crash kernel
//!    after us): prints the reason on the 16550 UART at 0x3f8 and resets the
//!    machine through the firmware — the keyboard controller's reset line
//!    (0xfe to port 0x64), then the reset control register (port 0xcf9),
//!    then a triple fault — instead of jumping into a kernel that is not the
//!    one loaded.
//!
//! Position independent like the purgatory (rip-relative only); copied out of
//! this program's text and patched.
//!
//! Blob layout (byte offsets; little endian):
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0x00 | 5 | `jmp rel32` to the code |
//! | 0x08 | 8 | [`MAGIC`] `"FKXTRMP1"` |
//! | 0x10 | 4 | layout version ([`LAYOUT_VERSION`]) |
//! | 0x14 | 4 | offset of the end of the instructions |
//! | 0x18 | 8 | `target`: physical address to jump to when the check passes |
//! | 0x20 | 8 | `header_addr`: physical address of the staged header |
//! | 0x28 | 8 | `header_len`: its length in bytes (a multiple of 8) |
//! | 0x30 | 8 | `header_sum`: [`checksum`](crate::blobs::purgatory::checksum) of the header |
//! | 0x38 | 16 | `nonce`: must equal the header's |
//! | 0x48 | 8 | `tsc_out`: where to copy the TSC record; 0 = nowhere |
//! | 0x50 | 8 | reserved, 0 |
//! | 0x58 | 32 | TSC record: [`TSC_MAGIC`] `"FKXTRM01"`, TSC at entry, TSC before the jump, check result (0 = passed) |
//! | 0x80 | … | code, then messages, the null IDT descriptor and the stack |
//!
//! Staged header (written into the reservation by `fastkexec load`):
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0x00 | 8 | [`HEADER_MAGIC`] `"FKXSTAG1"` |
//! | 0x08 | 4 | version ([`HEADER_VERSION`]), then 4 reserved bytes |
//! | 0x10 | 8 | total length in bytes (a multiple of 8) |
//! | 0x18 | 16 | nonce |
//! | 0x28 | 8 | number of fully summed ranges (at most [`HEADER_RANGES_MAX`]) |
//! | 0x30 | 8 | number of block-sampled ranges (at most [`HEADER_RANGES_MAX`]) |
//! | 0x38 | 8 | reserved, 0 |
//! | 0x40 | 24 each | fully summed ranges: `{addr, len (multiple of 8), checksum}` |
//! | …    | 24 each | sampled ranges: `{addr (page aligned), blocks, offset of its sample table from the header start}` |
//! | …    | 16 each | sample tables: per 64 KiB block `{offset in the block (8-aligned), expected u64}` |

use crate::blobs::frame;
use crate::error::{Error, Result};

/// `"FKXTRMP1"`: marks a fastkexec trampoline blob.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FKXTRMP1");
/// `"FKXTRM01"`: first word of the trampoline's TSC record (distinct from the
/// purgatory's, so a reader can tell the two stamps apart).
pub const TSC_MAGIC: u64 = u64::from_le_bytes(*b"FKXTRM01");
pub const LAYOUT_VERSION: u32 = 1;

pub const OFF_MAGIC: usize = frame::OFF_MAGIC;
pub const OFF_VERSION: usize = frame::OFF_VERSION;
pub const OFF_CODE_END: usize = frame::OFF_CODE_END;
pub const OFF_TARGET: usize = 0x18;
pub const OFF_HEADER_ADDR: usize = 0x20;
pub const OFF_HEADER_LEN: usize = 0x28;
pub const OFF_HEADER_SUM: usize = 0x30;
pub const OFF_NONCE: usize = 0x38;
pub const OFF_TSC_OUT: usize = 0x48;
pub const OFF_TSC_RECORD: usize = 0x58;
pub const OFF_TSC_ENTRY: usize = 0x60;
pub const OFF_TSC_EXIT: usize = 0x68;
pub const OFF_RESULT: usize = 0x70;
pub const TSC_RECORD_SIZE: usize = 32;
pub const OFF_CODE: usize = 0x80;
/// The built-in stack: the last this-many bytes of the blob.
pub const STACK_SIZE: usize = 512;

const LAYOUT: frame::Layout = frame::Layout {
    magic: MAGIC,
    version: LAYOUT_VERSION,
    tsc_record: OFF_TSC_RECORD,
    tsc_magic: TSC_MAGIC,
    code: OFF_CODE,
    stack_size: STACK_SIZE,
};

/// `"FKXSTAG1"` at the start of the staged header.
pub const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"FKXSTAG1");
pub const HEADER_VERSION: u32 = 1;
pub const HDR_MAGIC: usize = 0x00;
pub const HDR_VERSION: usize = 0x08;
pub const HDR_LEN: usize = 0x10;
pub const HDR_NONCE: usize = 0x18;
pub const HDR_N_FULL: usize = 0x28;
pub const HDR_N_SAMPLED: usize = 0x30;
pub const HDR_ENTRIES: usize = 0x40;
pub const HDR_RANGE_SIZE: usize = 24;
pub const HDR_SAMPLE_SIZE: usize = 16;
/// Most ranges of each kind (one per kexec segment at most).
pub const HEADER_RANGES_MAX: usize = 16;
/// Big ranges are checked one 64-bit word per block of this size. Any crash-kernel load writes
/// a kernel image of megabytes, so a replaced image never escapes; and ~800 scattered loads
/// for a 50 MiB kernel keep the check well under a millisecond even under emulation, where
/// every newly touched page costs a software TLB fill.
pub const SAMPLE_BLOCK: u64 = 64 << 10;

/// Low byte of a failed check's result: what did not match. The rest of the
/// value carries the range index (bits 8–15) and, for samples, the block
/// index inside the range (bits 16–63).
pub const FAIL_HEADER: u64 = 1;
pub const FAIL_NONCE: u64 = 2;
pub const FAIL_HEADER_SUM: u64 = 3;
pub const FAIL_COUNTS: u64 = 4;
pub const FAIL_RANGE_SUM: u64 = 5;
pub const FAIL_SAMPLE: u64 = 6;

/// What a non-zero check result means, for messages.
pub fn describe_result(result: u64) -> String {
    let range = (result >> 8) & 0xff;
    let block = result >> 16;
    match result & 0xff {
        0 => "passed".into(),
        FAIL_HEADER => "the staged header's magic or length differs".into(),
        FAIL_NONCE => "the staged header's nonce differs (another load's header)".into(),
        FAIL_HEADER_SUM => "the staged header's checksum differs".into(),
        FAIL_COUNTS => "the staged header lists too many ranges".into(),
        FAIL_RANGE_SUM => format!("fully summed range #{range} differs"),
        FAIL_SAMPLE => format!("64 KiB block {block} of sampled range #{range} differs"),
        other => format!("unknown check result {other:#x}"),
    }
}

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .text.fastkexec_trampoline,\"ax\",@progbits",
    ".balign 16",
    ".globl fastkexec_trampoline_start",
    ".hidden fastkexec_trampoline_start",
    "fastkexec_trampoline_start:",
    ".Lfkt_base:",
    ".byte 0xe9",
    ".long .Lfkt_code - (. + 4)",
    ".skip {off_magic} - (. - .Lfkt_base), 0",
    ".quad {magic}",
    ".long {version}",
    ".long .Lfkt_code_end - .Lfkt_base",
    ".quad 0", // target
    ".quad 0", // header_addr
    ".quad 0", // header_len
    ".quad 0", // header_sum
    ".quad 0", // nonce, low half
    ".quad 0", // nonce, high half
    ".quad 0", // tsc_out
    ".quad 0", // reserved
    ".skip {off_tsc_record} - (. - .Lfkt_base), 0",
    ".quad {tsc_magic}",
    ".quad 0", // TSC at entry
    ".quad 0", // TSC before the jump
    ".quad 0", // check result
    ".skip {off_code} - (. - .Lfkt_base), 0",
    ".Lfkt_code:",
    "cli",
    "cld",
    "rdtsc",
    "shlq $32, %rdx",
    "orq %rdx, %rax",
    "movq %rax, .Lfkt_base+{off_tsc_entry}(%rip)",
    "leaq .Lfkt_stack_end(%rip), %rsp",
    "leaq .Lfkt_base(%rip), %rdi",
    "call .Lfkt_check",
    "movq %rax, .Lfkt_base+{off_result}(%rip)",
    "testq %rax, %rax",
    "jnz .Lfkt_refuse",
    "rdtsc",
    "shlq $32, %rdx",
    "orq %rdx, %rax",
    "movq %rax, .Lfkt_base+{off_tsc_exit}(%rip)",
    "movq .Lfkt_base+{off_tsc_out}(%rip), %rdi",
    "testq %rdi, %rdi",
    "jz .Lfkt_jump",
    "leaq .Lfkt_base+{off_tsc_record}(%rip), %rsi",
    "movq 0(%rsi), %rax",
    "movq %rax, 0(%rdi)",
    "movq 8(%rsi), %rax",
    "movq %rax, 8(%rdi)",
    "movq 16(%rsi), %rax",
    "movq %rax, 16(%rdi)",
    "movq 24(%rsi), %rax",
    "movq %rax, 24(%rdi)",
    ".Lfkt_jump:",
    "movq .Lfkt_base+{off_target}(%rip), %rax",
    "jmp *%rax",
    // check(rdi = parameter block) -> rax = 0 or a FAIL_* result. SysV ABI,
    // touches only caller-saved registers (rax, rcx, rdx, rsi, rdi, r8-r11),
    // so the host tests call it on buffers in ordinary memory.
    ".globl fastkexec_trampoline_check",
    ".hidden fastkexec_trampoline_check",
    "fastkexec_trampoline_check:",
    ".Lfkt_check:",
    "movq {off_header_addr}(%rdi), %r8",
    "movabsq ${header_magic}, %rax",
    "cmpq %rax, {hdr_magic}(%r8)",
    "jne .Lfkt_bad_header",
    "movq {off_header_len}(%rdi), %rcx",
    "cmpq %rcx, {hdr_len}(%r8)",
    "jne .Lfkt_bad_header",
    "movq {off_nonce}(%rdi), %rax",
    "cmpq %rax, {hdr_nonce}(%r8)",
    "jne .Lfkt_bad_nonce",
    "movq {off_nonce}+8(%rdi), %rax",
    "cmpq %rax, {hdr_nonce}+8(%r8)",
    "jne .Lfkt_bad_nonce",
    "movq %r8, %rsi",
    "movq %rcx, %r9",
    "shrq $3, %r9",
    "call .Lfkt_sum",
    "cmpq {off_header_sum}(%rdi), %rax",
    "jne .Lfkt_bad_sum",
    // Fully summed ranges: rcx = range, r11 = count, rdi = index.
    "movq {hdr_n_full}(%r8), %r11",
    "cmpq ${ranges_max}, %r11",
    "ja .Lfkt_bad_counts",
    "leaq {hdr_entries}(%r8), %rcx",
    "xorl %edi, %edi",
    ".Lfkt_full_loop:",
    "cmpq %r11, %rdi",
    "jae .Lfkt_full_done",
    "movq 0(%rcx), %rsi",
    "movq 8(%rcx), %r9",
    "shrq $3, %r9",
    "call .Lfkt_sum",
    "cmpq 16(%rcx), %rax",
    "jne .Lfkt_bad_range",
    "addq ${range_size}, %rcx",
    "incq %rdi",
    "jmp .Lfkt_full_loop",
    ".Lfkt_full_done:",
    // Sampled ranges: rsi = block, r9 = blocks left, r10 = sample.
    "movq {hdr_n_sampled}(%r8), %r11",
    "cmpq ${ranges_max}, %r11",
    "ja .Lfkt_bad_counts",
    "xorl %edi, %edi",
    ".Lfkt_range_loop:",
    "cmpq %r11, %rdi",
    "jae .Lfkt_passed",
    "movq 0(%rcx), %rsi",
    "movq 8(%rcx), %r9",
    "movq 16(%rcx), %r10",
    "addq %r8, %r10",
    ".Lfkt_block_loop:",
    "testq %r9, %r9",
    "jz .Lfkt_range_next",
    "movq 0(%r10), %rax",
    // Stay inside the block whatever the table says.
    "andl ${block_mask}, %eax",
    "movq (%rsi,%rax), %rdx",
    "cmpq 8(%r10), %rdx",
    "jne .Lfkt_bad_sample",
    "addq ${sample_block}, %rsi",
    "addq ${sample_size}, %r10",
    "decq %r9",
    "jmp .Lfkt_block_loop",
    ".Lfkt_range_next:",
    "addq ${range_size}, %rcx",
    "incq %rdi",
    "jmp .Lfkt_range_loop",
    ".Lfkt_passed:",
    "xorl %eax, %eax",
    "ret",
    ".Lfkt_bad_header:",
    "movl ${fail_header}, %eax",
    "ret",
    ".Lfkt_bad_nonce:",
    "movl ${fail_nonce}, %eax",
    "ret",
    ".Lfkt_bad_sum:",
    "movl ${fail_header_sum}, %eax",
    "ret",
    ".Lfkt_bad_counts:",
    "movl ${fail_counts}, %eax",
    "ret",
    ".Lfkt_bad_range:",
    "movq %rdi, %rax",
    "shlq $8, %rax",
    "orq ${fail_range_sum}, %rax",
    "ret",
    ".Lfkt_bad_sample:",
    "subq 0(%rcx), %rsi",
    "shrq ${block_shift}, %rsi",
    "shlq $16, %rsi",
    "movq %rdi, %rax",
    "shlq $8, %rax",
    "orq %rsi, %rax",
    "orq ${fail_sample}, %rax",
    "ret",
    // sum(rsi = address, r9 = number of u64 words) -> rax: the purgatory's
    // checksum; clobbers rdx, rsi, r9.
    ".Lfkt_sum:",
    "movabsq ${seed}, %rax",
    "xorl %edx, %edx",
    "testq %r9, %r9",
    "jz .Lfkt_sum_done",
    ".Lfkt_sum_loop:",
    "addq (%rsi), %rax",
    "addq %rax, %rdx",
    "addq $8, %rsi",
    "decq %r9",
    "jnz .Lfkt_sum_loop",
    ".Lfkt_sum_done:",
    "rolq $32, %rdx",
    "xorq %rdx, %rax",
    "ret",
    // The staged image is not ours: say so, then reset.
    ".Lfkt_refuse:",
    "movq %rax, %r15",
    "leaq .Lfkt_msg_refuse(%rip), %rsi",
    "call .Lfkt_puts",
    "movq %r15, %rax",
    "call .Lfkt_puthex",
    "leaq .Lfkt_msg_reset(%rip), %rsi",
    "call .Lfkt_puts",
    // 1. The keyboard controller pulses the CPU reset line.
    "movl $0x10000, %ecx",
    ".Lfkt_kbc_wait:",
    "inb $0x64, %al",
    "testb $2, %al",
    "jz .Lfkt_kbc_ready",
    "pause",
    "decl %ecx",
    "jnz .Lfkt_kbc_wait",
    ".Lfkt_kbc_ready:",
    "movb $0xfe, %al",
    "outb %al, $0x64",
    "call .Lfkt_delay",
    // 2. The chipset's reset control register: system reset, then full reset.
    "movl $0xcf9, %edx",
    "movb $0x02, %al",
    "outb %al, %dx",
    "call .Lfkt_delay",
    "movb $0x0e, %al",
    "outb %al, %dx",
    "call .Lfkt_delay",
    // 3. A triple fault: no IDT, then an exception.
    "lidt .Lfkt_null_idtr(%rip)",
    "int3",
    ".Lfkt_halt:",
    "cli",
    "hlt",
    "jmp .Lfkt_halt",
    // delay: about a millisecond of writes to the POST port; clobbers ecx.
    ".Lfkt_delay:",
    "movl $1000, %ecx",
    ".Lfkt_delay_loop:",
    "outb %al, $0x80",
    "decl %ecx",
    "jnz .Lfkt_delay_loop",
    "ret",
    // puts(rsi = NUL-terminated string); clobbers rax, rcx, rdx, rsi, r8.
    ".Lfkt_puts:",
    "movzbl (%rsi), %ecx",
    "testl %ecx, %ecx",
    "jz .Lfkt_puts_done",
    "call .Lfkt_putc",
    "incq %rsi",
    "jmp .Lfkt_puts",
    ".Lfkt_puts_done:",
    "ret",
    // puthex(rax): "0x" and 16 hex digits; clobbers rax, rcx, rdx, r8, r9, r10.
    ".Lfkt_puthex:",
    "movq %rax, %r9",
    "movl $0x30, %ecx",
    "call .Lfkt_putc",
    "movl $0x78, %ecx",
    "call .Lfkt_putc",
    "movl $16, %r10d",
    ".Lfkt_puthex_loop:",
    "rolq $4, %r9",
    "movl %r9d, %ecx",
    "andl $0xf, %ecx",
    "cmpl $10, %ecx",
    "jb .Lfkt_puthex_digit",
    "addl $0x27, %ecx",
    ".Lfkt_puthex_digit:",
    "addl $0x30, %ecx",
    "call .Lfkt_putc",
    "decl %r10d",
    "jnz .Lfkt_puthex_loop",
    "ret",
    // putc(cl) on COM1: wait (bounded) for an empty transmit register, send.
    ".Lfkt_putc:",
    "movl $0x3fd, %edx",
    "movl $0x100000, %r8d",
    ".Lfkt_putc_wait:",
    "inb %dx, %al",
    "testb $0x20, %al",
    "jnz .Lfkt_putc_send",
    "pause",
    "decl %r8d",
    "jnz .Lfkt_putc_wait",
    ".Lfkt_putc_send:",
    "movl $0x3f8, %edx",
    "movb %cl, %al",
    "outb %al, %dx",
    "ret",
    ".Lfkt_code_end:",
    ".Lfkt_msg_refuse:",
    ".asciz \"\\r\\nfastkexec trampoline: the kernel staged in the crashkernel reservation is not the one `fastkexec load` put there (replaced or overwritten since; check result \"",
    ".Lfkt_msg_reset:",
    ".asciz \"); resetting the machine through the firmware instead of booting it\\r\\n\"",
    ".balign 8",
    ".Lfkt_null_idtr:",
    ".word 0",
    ".quad 0",
    ".balign 16",
    ".skip {stack_size}, 0",
    ".Lfkt_stack_end:",
    ".globl fastkexec_trampoline_end",
    ".hidden fastkexec_trampoline_end",
    "fastkexec_trampoline_end:",
    ".popsection",
    off_magic = const OFF_MAGIC,
    magic = const MAGIC,
    version = const LAYOUT_VERSION,
    off_tsc_record = const OFF_TSC_RECORD,
    tsc_magic = const TSC_MAGIC,
    off_code = const OFF_CODE,
    off_tsc_entry = const OFF_TSC_ENTRY,
    off_tsc_exit = const OFF_TSC_EXIT,
    off_result = const OFF_RESULT,
    off_tsc_out = const OFF_TSC_OUT,
    off_target = const OFF_TARGET,
    off_header_addr = const OFF_HEADER_ADDR,
    off_header_len = const OFF_HEADER_LEN,
    off_header_sum = const OFF_HEADER_SUM,
    off_nonce = const OFF_NONCE,
    header_magic = const HEADER_MAGIC,
    hdr_magic = const HDR_MAGIC,
    hdr_len = const HDR_LEN,
    hdr_nonce = const HDR_NONCE,
    hdr_n_full = const HDR_N_FULL,
    hdr_n_sampled = const HDR_N_SAMPLED,
    hdr_entries = const HDR_ENTRIES,
    range_size = const HDR_RANGE_SIZE,
    sample_size = const HDR_SAMPLE_SIZE,
    ranges_max = const HEADER_RANGES_MAX,
    sample_block = const SAMPLE_BLOCK,
    block_mask = const SAMPLE_BLOCK - 8,
    block_shift = const SAMPLE_BLOCK.trailing_zeros(),
    fail_header = const FAIL_HEADER,
    fail_nonce = const FAIL_NONCE,
    fail_header_sum = const FAIL_HEADER_SUM,
    fail_counts = const FAIL_COUNTS,
    fail_range_sum = const FAIL_RANGE_SUM,
    fail_sample = const FAIL_SAMPLE,
    seed = const crate::blobs::purgatory::CHECKSUM_SEED,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    static fastkexec_trampoline_start: u8;
    static fastkexec_trampoline_end: u8;
}

#[cfg(all(test, target_arch = "x86_64"))]
extern "sysv64" {
    fn fastkexec_trampoline_check(params: *const u8) -> u64;
}

/// The unpatched trampoline blob, as assembled into this program.
#[cfg(target_arch = "x86_64")]
pub fn blob() -> &'static [u8] {
    let start = core::ptr::addr_of!(fastkexec_trampoline_start);
    let end = core::ptr::addr_of!(fastkexec_trampoline_end);
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: both symbols are defined by the global_asm! block above, in one
    // section, `end` after `start`; the bytes between them are initialised
    // (instructions and data directives), part of this program's image and
    // never written, so they are valid for reads for the program's lifetime.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The trampoline only exists for x86-64 hosts.
#[cfg(not(target_arch = "x86_64"))]
pub fn blob() -> &'static [u8] {
    &[]
}

/// A copy of the trampoline blob with its parameters filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trampoline {
    bytes: Vec<u8>,
}

impl Trampoline {
    /// A fresh copy of this program's trampoline.
    pub fn new() -> Result<Self> {
        Self::from_bytes(blob().to_vec())
    }

    /// Wraps a blob after checking it has the layout this module patches.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        frame::check(&bytes, &LAYOUT).map_err(|problem| Error::Trampoline { problem })?;
        Ok(Self { bytes })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn code_end(&self) -> usize {
        self.read_u32(OFF_CODE_END) as usize
    }

    /// Where to jump once the check passed (the normal path's purgatory).
    pub fn set_target(&mut self, addr: u64) {
        self.write_u64(OFF_TARGET, addr);
    }

    /// The staged header to check: physical address, length, checksum.
    pub fn set_header(&mut self, addr: u64, len: u64, sum: u64) {
        self.write_u64(OFF_HEADER_ADDR, addr);
        self.write_u64(OFF_HEADER_LEN, len);
        self.write_u64(OFF_HEADER_SUM, sum);
    }

    pub fn set_nonce(&mut self, nonce: &[u8; 16]) {
        self.bytes[OFF_NONCE..OFF_NONCE + 16].copy_from_slice(nonce);
    }

    /// Physical address (8-byte aligned, [`TSC_RECORD_SIZE`] bytes) where the
    /// TSC record is copied before the jump; 0 = nowhere.
    pub fn set_tsc_out(&mut self, addr: u64) {
        self.write_u64(OFF_TSC_OUT, addr);
    }

    pub fn target(&self) -> u64 {
        self.read_u64(OFF_TARGET)
    }

    pub fn header(&self) -> (u64, u64, u64) {
        (
            self.read_u64(OFF_HEADER_ADDR),
            self.read_u64(OFF_HEADER_LEN),
            self.read_u64(OFF_HEADER_SUM),
        )
    }

    pub fn nonce(&self) -> [u8; 16] {
        let mut n = [0u8; 16];
        n.copy_from_slice(&self.bytes[OFF_NONCE..OFF_NONCE + 16]);
        n
    }

    pub fn tsc_out(&self) -> u64 {
        self.read_u64(OFF_TSC_OUT)
    }

    fn read_u64(&self, off: usize) -> u64 {
        frame::read_u64(&self.bytes, off)
    }

    fn read_u32(&self, off: usize) -> u32 {
        frame::read_u32(&self.bytes, off)
    }

    fn write_u64(&mut self, off: usize, v: u64) {
        frame::write_u64(&mut self.bytes, off, v);
    }
}

/// Runs the trampoline's own check routine on this (host) machine, against a
/// header and ranges at ordinary addresses: the tests use it to prove the
/// assembly agrees with the Rust verifier.
///
/// # Safety
/// `params` must hold a trampoline parameter block whose `header_addr` points
/// to a readable header of `header_len` bytes, and every range the header
/// lists (once its checksum matched) must be readable memory of this process.
#[cfg(all(test, target_arch = "x86_64"))]
pub unsafe fn run_check(params: &[u8]) -> u64 {
    assert!(params.len() >= OFF_TSC_RECORD);
    // SAFETY: forwarded from the caller's contract; the routine follows the
    // SysV ABI and touches only caller-saved registers.
    unsafe { fastkexec_trampoline_check(params.as_ptr()) }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

    fn decode(t: &Trampoline, ip: u64) -> Vec<Instruction> {
        crate::blobs::frame::decode(t.bytes(), OFF_CODE, t.code_end(), ip)
    }

    #[test]
    fn header_fields_sit_at_documented_offsets() {
        let t = Trampoline::new().unwrap();
        let b = t.bytes();
        assert_eq!(&b[OFF_MAGIC..OFF_MAGIC + 8], b"FKXTRMP1");
        assert_eq!(&b[OFF_TSC_RECORD..OFF_TSC_RECORD + 8], b"FKXTRM01");
        assert_eq!(OFF_TSC_RECORD + TSC_RECORD_SIZE, OFF_CODE - 8);
        for off in [
            OFF_TARGET,
            OFF_HEADER_ADDR,
            OFF_HEADER_LEN,
            OFF_HEADER_SUM,
            OFF_NONCE,
            OFF_NONCE + 8,
            OFF_TSC_OUT,
            OFF_TSC_ENTRY,
            OFF_TSC_EXIT,
            OFF_RESULT,
        ] {
            assert_eq!(&b[off..off + 8], &[0; 8], "offset {off:#x}");
        }
        assert!(b[b.len() - STACK_SIZE..].iter().all(|&x| x == 0));
        assert_eq!(b.len() % 16, 0, "stack end must be 16-byte aligned");
        // "A page or so": the whole normal image is one page.
        assert!(b.len() <= 4096, "{} bytes", b.len());
    }

    #[test]
    fn patching_writes_exactly_the_documented_bytes() {
        let mut t = Trampoline::new().unwrap();
        let orig = t.bytes().to_vec();
        t.set_target(0x7400_0000);
        t.set_header(0x74f0_0000, 0x3_0000, 0x1122_3344_5566_7788);
        t.set_nonce(&[0xab; 16]);
        t.set_tsc_out(0x5000_0100);
        let b = t.bytes();
        assert_eq!(&b[0x18..0x20], &0x7400_0000u64.to_le_bytes());
        assert_eq!(&b[0x20..0x28], &0x74f0_0000u64.to_le_bytes());
        assert_eq!(&b[0x28..0x30], &0x3_0000u64.to_le_bytes());
        assert_eq!(&b[0x30..0x38], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[0x38..0x48], &[0xab; 16]);
        assert_eq!(&b[0x48..0x50], &0x5000_0100u64.to_le_bytes());
        let changed: Vec<usize> = (0..b.len()).filter(|&i| b[i] != orig[i]).collect();
        assert!(changed.iter().all(|&i| (0x18..0x50).contains(&i)));
        assert_eq!(t.target(), 0x7400_0000);
        assert_eq!(t.header(), (0x74f0_0000, 0x3_0000, 0x1122_3344_5566_7788));
        assert_eq!(t.nonce(), [0xab; 16]);
        assert_eq!(t.tsc_out(), 0x5000_0100);
    }

    #[test]
    fn from_bytes_rejects_foreign_blobs() {
        let good = blob().to_vec();
        assert!(Trampoline::from_bytes(good.clone()).is_ok());
        let mut bad = good.clone();
        bad[OFF_MAGIC] ^= 1;
        assert!(Trampoline::from_bytes(bad).is_err());
        let mut bad = good.clone();
        bad[OFF_VERSION] = 7;
        assert!(Trampoline::from_bytes(bad).is_err());
        assert!(Trampoline::from_bytes(good[..100].to_vec()).is_err());
        // A purgatory is not a trampoline.
        assert!(Trampoline::from_bytes(crate::blobs::purgatory::blob().to_vec()).is_err());
    }

    #[test]
    fn code_uses_no_absolute_addresses() {
        let t = Trampoline::new().unwrap();
        for ip in [0x1000u64, 0x7fff_f000] {
            for ins in decode(&t, ip) {
                assert_ne!(ins.code(), Code::INVALID, "bad bytes at {:#x}", ins.ip());
                for op in 0..ins.op_count() {
                    match ins.op_kind(op) {
                        OpKind::Memory => {
                            let base = ins.memory_base();
                            assert!(base != Register::None, "absolute operand: {ins}");
                            if base == Register::RIP {
                                let target = ins.memory_displacement64();
                                assert!(
                                    target >= ip && target <= ip + t.bytes().len() as u64,
                                    "rip-relative target outside the blob: {ins}"
                                );
                            }
                        }
                        OpKind::NearBranch64 => {
                            let target = ins.near_branch_target();
                            assert!(
                                target >= ip && target < ip + t.code_end() as u64,
                                "branch leaves the code: {ins}"
                            );
                        }
                        OpKind::FarBranch16 | OpKind::FarBranch32 => {
                            panic!("far branch: {ins}")
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn code_stamps_checks_and_resets_through_the_firmware() {
        let t = Trampoline::new().unwrap();
        let ins = decode(&t, 0x20_0000);
        assert_eq!(ins[0].code(), Code::Jmp_rel32_64);
        assert_eq!(ins[0].near_branch_target(), 0x20_0000 + OFF_CODE as u64);
        assert_eq!(ins[1].mnemonic(), Mnemonic::Cli);
        assert_eq!(ins[3].mnemonic(), Mnemonic::Rdtsc);
        assert_eq!(
            ins.iter()
                .filter(|i| i.mnemonic() == Mnemonic::Rdtsc)
                .count(),
            2
        );
        // The jump into the staged purgatory takes its target from the field.
        let jmp = ins.iter().position(|i| i.code() == Code::Jmp_rm64).unwrap();
        let load = ins[..jmp]
            .iter()
            .rev()
            .find(|i| i.op0_register() == Register::RAX)
            .unwrap();
        assert_eq!(load.memory_displacement64(), 0x20_0000 + OFF_TARGET as u64);
        // Keyboard-controller reset: 0xfe out to port 0x64.
        let kbc = ins
            .iter()
            .position(|i| {
                i.mnemonic() == Mnemonic::Out
                    && i.op_kind(0) == OpKind::Immediate8
                    && i.immediate(0) == 0x64
            })
            .expect("out to 0x64");
        assert!(ins[..kbc]
            .iter()
            .rev()
            .take(2)
            .any(|i| i.mnemonic() == Mnemonic::Mov && i.immediate(1) == 0xfe));
        // Then port 0xcf9, then the triple fault.
        assert!(ins.iter().any(|i| i.mnemonic() == Mnemonic::Mov
            && i.op0_register() == Register::EDX
            && i.immediate(1) == 0xcf9));
        let lidt = ins
            .iter()
            .position(|i| i.mnemonic() == Mnemonic::Lidt)
            .expect("lidt");
        assert!(lidt > kbc);
        assert_eq!(ins[lidt + 1].mnemonic(), Mnemonic::Int3);
        // The null IDT descriptor has limit 0 and base 0.
        let idtr = ins[lidt].memory_displacement64() - 0x20_0000;
        let idtr = idtr as usize;
        assert_eq!(&t.bytes()[idtr..idtr + 10], &[0u8; 10]);
    }
}
