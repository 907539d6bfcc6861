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
//! | 0x08 | 8 | magic `"FKXTRMP1"` |
//! | 0x10 | 4 | layout version ([`LAYOUT`]`.version`) |
//! | 0x14 | 4 | offset of the end of the instructions |
//! | 0x18 | 8 | `target`: physical address to jump to when the check passes |
//! | 0x20 | 8 | `header_addr`: physical address of the staged header |
//! | 0x28 | 8 | `header_len`: its length in bytes (a multiple of 8) |
//! | 0x30 | 8 | `header_sum`: [`checksum`](crate::blobs::purgatory::checksum) of the header |
//! | 0x38 | 16 | `nonce`: must equal the header's |
//! | 0x48 | 8 | `tsc_out`: where to copy the TSC record; 0 = nowhere |
//! | 0x50 | 8 | reserved, 0 |
//! | 0x58 | 32 | TSC record: magic `"FKXTRM01"`, TSC at entry, TSC before the jump, check result (0 = passed) |
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

use crate::blobs::frame::{self, Blob, Field};
use crate::error::Error;

pub use frame::{OFF_CODE_END, OFF_MAGIC, OFF_VERSION, TSC_RECORD_SIZE};

/// Where to jump once the check passed (the normal path's purgatory).
pub const TARGET: Field = Field::at("target", 0x18);
/// The staged header to check: physical address, length (a multiple of 8), checksum.
pub const HEADER_ADDR: Field = Field::at("header_addr", 0x20);
pub const HEADER_LEN: Field = Field::at("header_len", 0x28);
pub const HEADER_SUM: Field = Field::at("header_sum", 0x30);
/// The 16-byte nonce, as two little-endian halves.
pub const NONCE_LO: Field = Field::at("nonce[0..8]", 0x38);
pub const NONCE_HI: Field = Field::at("nonce[8..16]", 0x40);
/// Where the TSC record is copied before the jump; 0 = nowhere.
pub const TSC_OUT: Field = Field::at("tsc_out", 0x48);
pub const OFF_TSC_RECORD: usize = 0x58;
pub const OFF_TSC_ENTRY: usize = OFF_TSC_RECORD + 8;
pub const OFF_TSC_EXIT: usize = OFF_TSC_RECORD + 16;
pub const OFF_RESULT: usize = OFF_TSC_RECORD + 24;
pub const OFF_CODE: usize = 0x80;

/// The trampoline's frame: magic `"FKXTRMP1"`, TSC record magic `"FKXTRM01"` (distinct from
/// the purgatory's, so a reader can tell the two stamps apart), a 512-byte stack.
pub const LAYOUT: frame::Layout = frame::Layout {
    name: "trampoline",
    magic: u64::from_le_bytes(*b"FKXTRMP1"),
    version: 1,
    tsc_record: OFF_TSC_RECORD,
    tsc_magic: u64::from_le_bytes(*b"FKXTRM01"),
    code: OFF_CODE,
    stack_size: 512,
    tsc_out: TSC_OUT,
    fields: &[
        TARGET,
        HEADER_ADDR,
        HEADER_LEN,
        HEADER_SUM,
        NONCE_LO,
        NONCE_HI,
        TSC_OUT,
    ],
    assembled: blob,
    error: |problem| Error::Trampoline { problem },
};

/// The trampoline as a [`frame::Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind;

impl frame::Kind for Kind {
    const LAYOUT: frame::Layout = LAYOUT;
}

/// A copy of the trampoline blob with its parameters filled in.
pub type Trampoline = Blob<Kind>;

frame::assembled_between!(fastkexec_trampoline_start, fastkexec_trampoline_end);

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

frame::global_blob!(
    layout: LAYOUT,
    name: "trampoline",
    prefix: "fkt",
    asm: [
        "leaq .Lfkt_stack_end(%rip), %rsp",
        "leaq .Lfkt_base(%rip), %rdi",
        "call .Lfkt_check",
        "movq %rax, .Lfkt_base+{off_result}(%rip)",
        "testq %rax, %rax",
        "jnz .Lfkt_refuse",
        frame::asm_stamp_exit!("fkt"),
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
        frame::asm_checksum!("fkt", "%rsi", "%r9"),
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
        frame::asm_uart!("fkt"),
        ".Lfkt_code_end:",
        ".Lfkt_msg_refuse:",
        ".asciz \"\\r\\nfastkexec trampoline: the kernel staged in the crashkernel reservation is not the one `fastkexec load` put there (replaced or overwritten since; check result \"",
        ".Lfkt_msg_reset:",
        ".asciz \"); resetting the machine through the firmware instead of booting it\\r\\n\"",
        ".balign 8",
        ".Lfkt_null_idtr:",
        ".word 0",
        ".quad 0",
    ],
    off_result = const OFF_RESULT,
    off_target = const TARGET.off,
    off_header_addr = const HEADER_ADDR.off,
    off_header_len = const HEADER_LEN.off,
    off_header_sum = const HEADER_SUM.off,
    off_nonce = const NONCE_LO.off,
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
);

#[cfg(all(test, target_arch = "x86_64"))]
extern "sysv64" {
    fn fastkexec_trampoline_check(params: *const u8) -> u64;
}

impl Blob<Kind> {
    /// The staged header to check: physical address, length, checksum.
    pub fn set_header(&mut self, addr: u64, len: u64, sum: u64) {
        self.set(HEADER_ADDR, addr);
        self.set(HEADER_LEN, len);
        self.set(HEADER_SUM, sum);
    }

    pub fn header(&self) -> (u64, u64, u64) {
        (
            self.get(HEADER_ADDR),
            self.get(HEADER_LEN),
            self.get(HEADER_SUM),
        )
    }

    pub fn set_nonce(&mut self, nonce: &[u8; 16]) {
        let (lo, hi) = nonce.split_at(8);
        self.set(NONCE_LO, u64_le(lo));
        self.set(NONCE_HI, u64_le(hi));
    }

    pub fn nonce(&self) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.get(NONCE_LO).to_le_bytes());
        n[8..].copy_from_slice(&self.get(NONCE_HI).to_le_bytes());
        n
    }
}

fn u64_le(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_le_bytes(w)
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
mod tests;
