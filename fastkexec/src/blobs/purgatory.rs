//! Our own purgatory: the few hundred bytes `kexec_load` jumps to after the
//! old kernel has copied every segment into place, and which jump into the
//! new kernel's 64-bit entry point.
//!
//! The kernel enters it in 64-bit mode on an identity map of RAM, with
//! interrupts off and "unspecified garbage" in the registers and segment
//! state. It then:
//! 1. stamps the TSC (the first instruction after `cli`/`cld`), so the
//!    tracer can split "relocation copy" from "purgatory";
//! 2. takes a stack (the `stack_top` parameter, or its own built-in one);
//! 3. loads its own GDT (null, unused, flat 64-bit code at selector 0x10,
//!    flat data at 0x18; GDTR base computed at run time), loads
//!    DS/ES/SS/FS/GS with 0x18 and reloads CS with 0x10 by a far return;
//! 4. optionally checks every entry of the verify table (see [`checksum`]);
//!    on a mismatch it prints the segment, address, length, expected and
//!    computed sums on the 16550 UART at I/O port 0x3f8 and halts forever;
//! 5. stamps the TSC again, copies the TSC record to `tsc_out` if set, puts
//!    the boot_params address in %rsi, clears the other registers and jumps
//!    to `entry` (the vmlinux `e_entry`, i.e. `phys_startup_64`).
//!
//! The code is position independent (rip-relative addressing only, no
//! relocations), so the same bytes run wherever the plan puts them; the
//! assembler resolves every reference because all of them point into the same
//! section. The blob is copied out of this program's own text at run time
//! (between the `fastkexec_purgatory_start`/`_end` symbols) and patched.
//!
//! Blob layout (byte offsets from the start; all fields little endian):
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0x000 | 5 | `jmp rel32` to the code (entry point = load address) |
//! | 0x008 | 8 | [`MAGIC`] `"FKXPURG1"` |
//! | 0x010 | 4 | layout version ([`LAYOUT_VERSION`]) |
//! | 0x014 | 4 | offset of the end of the instructions (data follows) |
//! | 0x018 | 8 | `entry`: physical address to jump to |
//! | 0x020 | 8 | `boot_params`: physical address passed in %rsi |
//! | 0x028 | 8 | `stack_top`: initial %rsp; 0 = the built-in stack |
//! | 0x030 | 8 | `tsc_out`: physical address to copy the TSC record to; 0 = none |
//! | 0x038 | 8 | reserved, 0 |
//! | 0x040 | 32 | TSC record: [`TSC_MAGIC`] `"FKXTSC01"`, TSC at entry, TSC before the jump, number of segments verified |
//! | 0x060 | 4 | number of verify entries in use (at most [`VERIFY_MAX`]) |
//! | 0x064 | 4 | reserved, 0 |
//! | 0x068 | 16 × 24 | verify table: `{u64 addr, u64 len (multiple of 8), u64 checksum}` |
//! | 0x1e8 | … | code, then GDT, messages and the built-in stack (which ends the blob) |

use crate::blobs::frame;
use crate::error::{Error, Result};

/// `"FKXPURG1"` at [`OFF_MAGIC`]: marks a fastkexec purgatory blob.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FKXPURG1");
/// `"FKXTSC01"`: first word of the TSC record, so the tracer can find and
/// validate a copy of it.
pub const TSC_MAGIC: u64 = u64::from_le_bytes(*b"FKXTSC01");
/// Bumped whenever an offset below changes.
pub const LAYOUT_VERSION: u32 = 1;

pub const OFF_MAGIC: usize = frame::OFF_MAGIC;
pub const OFF_VERSION: usize = frame::OFF_VERSION;
pub const OFF_CODE_END: usize = frame::OFF_CODE_END;
pub const OFF_ENTRY: usize = 0x18;
pub const OFF_BOOT_PARAMS: usize = 0x20;
pub const OFF_STACK_TOP: usize = 0x28;
pub const OFF_TSC_OUT: usize = 0x30;
pub const OFF_TSC_RECORD: usize = 0x40;
pub const OFF_TSC_ENTRY: usize = 0x48;
pub const OFF_TSC_EXIT: usize = 0x50;
pub const OFF_TSC_VERIFIED: usize = 0x58;
/// Size of the TSC record that starts at [`OFF_TSC_RECORD`] (and that is
/// copied to `tsc_out`).
pub const TSC_RECORD_SIZE: usize = 32;
pub const OFF_VERIFY_COUNT: usize = 0x60;
pub const OFF_VERIFY_TABLE: usize = 0x68;
/// One verify entry: addr, len, checksum.
pub const VERIFY_ENTRY_SIZE: usize = 24;
/// One entry per kexec segment at most (`KEXEC_SEGMENT_MAX`).
pub const VERIFY_MAX: usize = 16;
/// Where the instructions start.
pub const OFF_CODE: usize = OFF_VERIFY_TABLE + VERIFY_MAX * VERIFY_ENTRY_SIZE;
/// The built-in stack: the last this-many bytes of the blob.
pub const STACK_SIZE: usize = 4096;

const LAYOUT: frame::Layout = frame::Layout {
    magic: MAGIC,
    version: LAYOUT_VERSION,
    tsc_record: OFF_TSC_RECORD,
    tsc_magic: TSC_MAGIC,
    code: OFF_CODE,
    stack_size: STACK_SIZE,
};
/// Initial value of the checksum's running sum ("kexec_a1" read as a
/// little-endian u64), so all-zero data does not sum to zero.
pub const CHECKSUM_SEED: u64 = u64::from_le_bytes(*b"kexec_a1");

// The purgatory itself. It sits in an executable section of this program only
// so that the host test can call the checksum routine; nothing else of it ever
// runs here. Every memory reference is rip-relative to a local label of this
// one section, which the assembler resolves without relocations.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .text.fastkexec_purgatory,\"ax\",@progbits",
    ".balign 16",
    ".globl fastkexec_purgatory_start",
    ".hidden fastkexec_purgatory_start",
    "fastkexec_purgatory_start:",
    ".Lfkx_base:",
    // A fixed-size jump, so the header below lands at fixed offsets.
    ".byte 0xe9",
    ".long .Lfkx_code - (. + 4)",
    ".skip {off_magic} - (. - .Lfkx_base), 0",
    ".quad {magic}",
    ".long {version}",
    ".long .Lfkx_code_end - .Lfkx_base",
    ".quad 0", // entry
    ".quad 0", // boot_params
    ".quad 0", // stack_top
    ".quad 0", // tsc_out
    ".quad 0", // reserved
    ".skip {off_tsc_record} - (. - .Lfkx_base), 0",
    ".quad {tsc_magic}",
    ".quad 0", // TSC at entry
    ".quad 0", // TSC before the jump
    ".quad 0", // segments verified
    ".skip {off_verify_count} - (. - .Lfkx_base), 0",
    ".long 0",
    ".long 0",
    ".skip {off_verify_table} - (. - .Lfkx_base), 0",
    ".skip {verify_bytes}, 0",
    ".skip {off_code} - (. - .Lfkx_base), 0",
    ".Lfkx_code:",
    "cli",
    "cld",
    "rdtsc",
    "shlq $32, %rdx",
    "orq %rdx, %rax",
    "movq %rax, .Lfkx_base+{off_tsc_entry}(%rip)",
    // Stack: the parameter if set, else our own (the end of the blob).
    "movq .Lfkx_base+{off_stack_top}(%rip), %rsp",
    "testq %rsp, %rsp",
    "jnz .Lfkx_have_stack",
    "leaq .Lfkx_stack_end(%rip), %rsp",
    ".Lfkx_have_stack:",
    // GDT: its base is only known now.
    "leaq .Lfkx_gdt(%rip), %rax",
    "movq %rax, .Lfkx_gdtr+2(%rip)",
    "lgdt .Lfkx_gdtr(%rip)",
    "movl $0x18, %eax",
    "movl %eax, %ds",
    "movl %eax, %es",
    "movl %eax, %ss",
    "movl %eax, %fs",
    "movl %eax, %gs",
    "leaq .Lfkx_cs_reloaded(%rip), %rax",
    "pushq $0x10",
    "pushq %rax",
    "lretq",
    ".Lfkx_cs_reloaded:",
    // Verify table: r12 = entry, r13 = count, r14 = index.
    "movl .Lfkx_base+{off_verify_count}(%rip), %r13d",
    "cmpq ${verify_max}, %r13",
    "jbe .Lfkx_count_ok",
    "movl ${verify_max}, %r13d",
    ".Lfkx_count_ok:",
    "leaq .Lfkx_base+{off_verify_table}(%rip), %r12",
    "xorl %r14d, %r14d",
    ".Lfkx_verify_loop:",
    "cmpq %r13, %r14",
    "jae .Lfkx_verified",
    "movq (%r12), %rdi",
    "movq 8(%r12), %rsi",
    "shrq $3, %rsi",
    "call .Lfkx_checksum",
    "cmpq 16(%r12), %rax",
    "jne .Lfkx_mismatch",
    "addq ${verify_entry_size}, %r12",
    "incq %r14",
    "jmp .Lfkx_verify_loop",
    ".Lfkx_verified:",
    "movq %r14, .Lfkx_base+{off_tsc_verified}(%rip)",
    "rdtsc",
    "shlq $32, %rdx",
    "orq %rdx, %rax",
    "movq %rax, .Lfkx_base+{off_tsc_exit}(%rip)",
    // Hand the TSC record to the tracer's page, if it gave us one.
    "movq .Lfkx_base+{off_tsc_out}(%rip), %rdi",
    "testq %rdi, %rdi",
    "jz .Lfkx_jump",
    "leaq .Lfkx_base+{off_tsc_record}(%rip), %rsi",
    "movq 0(%rsi), %rax",
    "movq %rax, 0(%rdi)",
    "movq 8(%rsi), %rax",
    "movq %rax, 8(%rdi)",
    "movq 16(%rsi), %rax",
    "movq %rax, 16(%rdi)",
    "movq 24(%rsi), %rax",
    "movq %rax, 24(%rdi)",
    ".Lfkx_jump:",
    "movq .Lfkx_base+{off_boot_params}(%rip), %rsi",
    "movq .Lfkx_base+{off_entry}(%rip), %rax",
    "xorl %ebx, %ebx",
    "xorl %ecx, %ecx",
    "xorl %edx, %edx",
    "xorl %edi, %edi",
    "xorl %ebp, %ebp",
    "xorl %r8d, %r8d",
    "xorl %r9d, %r9d",
    "xorl %r10d, %r10d",
    "xorl %r11d, %r11d",
    "xorl %r12d, %r12d",
    "xorl %r13d, %r13d",
    "xorl %r14d, %r14d",
    "xorl %r15d, %r15d",
    "jmp *%rax",
    // checksum(rdi = address, rsi = number of u64 words) -> rax. SysV ABI,
    // touches only rax, rdx, rdi, rsi (so the host test can call it).
    ".globl fastkexec_purgatory_checksum",
    ".hidden fastkexec_purgatory_checksum",
    "fastkexec_purgatory_checksum:",
    ".Lfkx_checksum:",
    "movabsq ${seed}, %rax",
    "xorl %edx, %edx",
    "testq %rsi, %rsi",
    "jz .Lfkx_csum_done",
    ".Lfkx_csum_loop:",
    "addq (%rdi), %rax",
    "addq %rax, %rdx",
    "addq $8, %rdi",
    "decq %rsi",
    "jnz .Lfkx_csum_loop",
    ".Lfkx_csum_done:",
    "rolq $32, %rdx",
    "xorq %rdx, %rax",
    "ret",
    // Mismatch: r12 = entry, r14 = index, rax = computed sum.
    ".Lfkx_mismatch:",
    "movq %rax, %r15",
    "leaq .Lfkx_msg_seg(%rip), %rsi",
    "call .Lfkx_puts",
    "movq %r14, %rax",
    "call .Lfkx_puthex",
    "leaq .Lfkx_msg_at(%rip), %rsi",
    "call .Lfkx_puts",
    "movq (%r12), %rax",
    "call .Lfkx_puthex",
    "leaq .Lfkx_msg_len(%rip), %rsi",
    "call .Lfkx_puts",
    "movq 8(%r12), %rax",
    "call .Lfkx_puthex",
    "leaq .Lfkx_msg_expected(%rip), %rsi",
    "call .Lfkx_puts",
    "movq 16(%r12), %rax",
    "call .Lfkx_puthex",
    "leaq .Lfkx_msg_got(%rip), %rsi",
    "call .Lfkx_puts",
    "movq %r15, %rax",
    "call .Lfkx_puthex",
    "leaq .Lfkx_msg_halt(%rip), %rsi",
    "call .Lfkx_puts",
    ".Lfkx_halt:",
    "cli",
    "hlt",
    "jmp .Lfkx_halt",
    // puts(rsi = NUL-terminated string); clobbers rax, rcx, rdx, rsi, r8.
    ".Lfkx_puts:",
    "movzbl (%rsi), %ecx",
    "testl %ecx, %ecx",
    "jz .Lfkx_puts_done",
    "call .Lfkx_putc",
    "incq %rsi",
    "jmp .Lfkx_puts",
    ".Lfkx_puts_done:",
    "ret",
    // puthex(rax): "0x" and 16 hex digits; clobbers rax, rcx, rdx, r8, r9, r10.
    ".Lfkx_puthex:",
    "movq %rax, %r9",
    "movl $0x30, %ecx",
    "call .Lfkx_putc",
    "movl $0x78, %ecx",
    "call .Lfkx_putc",
    "movl $16, %r10d",
    ".Lfkx_puthex_loop:",
    "rolq $4, %r9",
    "movl %r9d, %ecx",
    "andl $0xf, %ecx",
    "cmpl $10, %ecx",
    "jb .Lfkx_puthex_digit",
    "addl $0x27, %ecx",
    ".Lfkx_puthex_digit:",
    "addl $0x30, %ecx",
    "call .Lfkx_putc",
    "decl %r10d",
    "jnz .Lfkx_puthex_loop",
    "ret",
    // putc(cl) on COM1: wait (bounded) for an empty transmit register, send.
    ".Lfkx_putc:",
    "movl $0x3fd, %edx",
    "movl $0x100000, %r8d",
    ".Lfkx_putc_wait:",
    "inb %dx, %al",
    "testb $0x20, %al",
    "jnz .Lfkx_putc_send",
    "pause",
    "decl %r8d",
    "jnz .Lfkx_putc_wait",
    ".Lfkx_putc_send:",
    "movl $0x3f8, %edx",
    "movb %cl, %al",
    "outb %al, %dx",
    "ret",
    ".Lfkx_code_end:",
    ".balign 16",
    ".Lfkx_gdt:",
    ".quad 0",
    ".quad 0",
    // 0x10: base 0, limit 4G, present, DPL 0, code execute/read, accessed, L=1.
    ".quad 0x00af9b000000ffff",
    // 0x18: base 0, limit 4G, present, DPL 0, data read/write, accessed, D/B=1.
    ".quad 0x00cf93000000ffff",
    ".Lfkx_gdt_end:",
    ".Lfkx_gdtr:",
    ".word .Lfkx_gdt_end - .Lfkx_gdt - 1",
    ".quad 0",
    ".Lfkx_msg_seg:",
    ".asciz \"\\r\\nfastkexec purgatory: checksum mismatch in segment \"",
    ".Lfkx_msg_at:",
    ".asciz \" at \"",
    ".Lfkx_msg_len:",
    ".asciz \" len \"",
    ".Lfkx_msg_expected:",
    ".asciz \": expected \"",
    ".Lfkx_msg_got:",
    ".asciz \", got \"",
    ".Lfkx_msg_halt:",
    ".asciz \"\\r\\nfastkexec purgatory: the loaded image was overwritten after load (DMA by a device not shut down?); halting\\r\\n\"",
    ".balign 16",
    ".skip {stack_size}, 0",
    ".Lfkx_stack_end:",
    ".globl fastkexec_purgatory_end",
    ".hidden fastkexec_purgatory_end",
    "fastkexec_purgatory_end:",
    ".popsection",
    off_magic = const OFF_MAGIC,
    magic = const MAGIC,
    version = const LAYOUT_VERSION,
    off_tsc_record = const OFF_TSC_RECORD,
    tsc_magic = const TSC_MAGIC,
    off_verify_count = const OFF_VERIFY_COUNT,
    off_verify_table = const OFF_VERIFY_TABLE,
    verify_bytes = const VERIFY_MAX * VERIFY_ENTRY_SIZE,
    off_code = const OFF_CODE,
    off_tsc_entry = const OFF_TSC_ENTRY,
    off_tsc_exit = const OFF_TSC_EXIT,
    off_tsc_verified = const OFF_TSC_VERIFIED,
    off_tsc_out = const OFF_TSC_OUT,
    off_stack_top = const OFF_STACK_TOP,
    off_boot_params = const OFF_BOOT_PARAMS,
    off_entry = const OFF_ENTRY,
    verify_max = const VERIFY_MAX,
    verify_entry_size = const VERIFY_ENTRY_SIZE,
    seed = const CHECKSUM_SEED,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    static fastkexec_purgatory_start: u8;
    static fastkexec_purgatory_end: u8;
}

#[cfg(all(test, target_arch = "x86_64"))]
extern "sysv64" {
    fn fastkexec_purgatory_checksum(addr: *const u8, words: u64) -> u64;
}

/// The unpatched purgatory blob, as assembled into this program.
#[cfg(target_arch = "x86_64")]
pub fn blob() -> &'static [u8] {
    let start = core::ptr::addr_of!(fastkexec_purgatory_start);
    let end = core::ptr::addr_of!(fastkexec_purgatory_end);
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: both symbols are defined by the global_asm! block above, in one
    // section, `end` after `start`; the bytes between them are initialised
    // (instructions and data directives), part of this program's image and
    // never written, so they are valid for reads for the program's lifetime.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The purgatory only exists for x86-64 hosts (it is x86-64 code and is
/// assembled into the program).
#[cfg(not(target_arch = "x86_64"))]
pub fn blob() -> &'static [u8] {
    &[]
}

/// The checksum the purgatory verifies segments with: a Fletcher-style pair
/// of wrapping 64-bit sums over little-endian u64 words (a short tail counts
/// as if zero-padded, which is what the page the kernel copied it into
/// holds), folded as `a ^ rotl(b, 32)`. About one add pair per 8 bytes, so
/// verifying a 60 MB kernel costs milliseconds, not the hundreds a SHA-256
/// takes; it is a guard against stray DMA, not against an attacker.
pub fn checksum(data: &[u8]) -> u64 {
    let mut a = CHECKSUM_SEED;
    let mut b = 0u64;
    for chunk in data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        a = a.wrapping_add(u64::from_le_bytes(word));
        b = b.wrapping_add(a);
    }
    a ^ b.rotate_left(32)
}

/// One entry of the purgatory's verify table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyEntry {
    pub addr: u64,
    /// Bytes checked; a multiple of 8.
    pub len: u64,
    pub sum: u64,
}

impl VerifyEntry {
    /// The entry that checks `data` once it sits at physical `addr` (the tail
    /// up to the next multiple of 8 is the zero fill the kernel writes).
    pub fn for_data(addr: u64, data: &[u8]) -> Self {
        let len = (data.len() as u64).div_ceil(8) * 8;
        Self {
            addr,
            len,
            sum: checksum(data),
        }
    }
}

/// A copy of the purgatory blob with its parameters filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purgatory {
    bytes: Vec<u8>,
}

impl Purgatory {
    /// A fresh copy of this program's purgatory.
    pub fn new() -> Result<Self> {
        Self::from_bytes(blob().to_vec())
    }

    /// Wraps a blob after checking it has the layout this module patches.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        frame::check(&bytes, &LAYOUT).map_err(|problem| Error::Purgatory { problem })?;
        Ok(Self { bytes })
    }

    /// The patched bytes, to be loaded as one segment.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Offset of the end of the instructions (GDT, messages and stack follow).
    pub fn code_end(&self) -> usize {
        self.read_u32(OFF_CODE_END) as usize
    }

    /// Offset just past the built-in stack: an initial %rsp relative to the
    /// load address.
    pub fn stack_end(&self) -> usize {
        self.bytes.len()
    }

    pub fn set_entry(&mut self, entry: u64) {
        self.write_u64(OFF_ENTRY, entry);
    }

    pub fn set_boot_params(&mut self, addr: u64) {
        self.write_u64(OFF_BOOT_PARAMS, addr);
    }

    /// `0` makes the purgatory use its built-in stack.
    pub fn set_stack_top(&mut self, addr: u64) {
        self.write_u64(OFF_STACK_TOP, addr);
    }

    /// Physical address (8-byte aligned, [`TSC_RECORD_SIZE`] bytes, reserved
    /// for the next kernel) where the TSC record is copied before the jump.
    pub fn set_tsc_out(&mut self, addr: u64) {
        self.write_u64(OFF_TSC_OUT, addr);
    }

    /// Fills the verify table; an empty slice disables verification.
    pub fn set_verify(&mut self, entries: &[VerifyEntry]) -> Result<()> {
        if entries.len() > VERIFY_MAX {
            return Err(Error::Purgatory {
                problem: format!(
                    "{} segments to verify, the table holds {VERIFY_MAX}",
                    entries.len()
                ),
            });
        }
        if let Some(e) = entries.iter().find(|e| e.len % 8 != 0) {
            return Err(Error::Purgatory {
                problem: format!(
                    "verify length {:#x} at {:#x} is not a multiple of 8",
                    e.len, e.addr
                ),
            });
        }
        let table = OFF_VERIFY_TABLE..OFF_VERIFY_TABLE + VERIFY_MAX * VERIFY_ENTRY_SIZE;
        self.bytes[table].fill(0);
        for (i, e) in entries.iter().enumerate() {
            let off = OFF_VERIFY_TABLE + i * VERIFY_ENTRY_SIZE;
            self.write_u64(off, e.addr);
            self.write_u64(off + 8, e.len);
            self.write_u64(off + 16, e.sum);
        }
        self.write_u32(OFF_VERIFY_COUNT, entries.len() as u32);
        Ok(())
    }

    /// The verify table as currently patched.
    pub fn verify_entries(&self) -> Vec<VerifyEntry> {
        let n = (self.read_u32(OFF_VERIFY_COUNT) as usize).min(VERIFY_MAX);
        (0..n)
            .map(|i| {
                let off = OFF_VERIFY_TABLE + i * VERIFY_ENTRY_SIZE;
                VerifyEntry {
                    addr: self.read_u64(off),
                    len: self.read_u64(off + 8),
                    sum: self.read_u64(off + 16),
                }
            })
            .collect()
    }

    pub fn entry(&self) -> u64 {
        self.read_u64(OFF_ENTRY)
    }

    pub fn boot_params(&self) -> u64 {
        self.read_u64(OFF_BOOT_PARAMS)
    }

    pub fn stack_top(&self) -> u64 {
        self.read_u64(OFF_STACK_TOP)
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

    fn write_u32(&mut self, off: usize, v: u32) {
        frame::write_u32(&mut self.bytes, off, v);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

    fn decode(p: &Purgatory, ip: u64) -> Vec<Instruction> {
        crate::blobs::frame::decode(p.bytes(), OFF_CODE, p.code_end(), ip)
    }

    #[test]
    fn header_fields_sit_at_documented_offsets() {
        let p = Purgatory::new().unwrap();
        let b = p.bytes();
        assert_eq!(&b[OFF_MAGIC..OFF_MAGIC + 8], b"FKXPURG1");
        assert_eq!(&b[OFF_TSC_RECORD..OFF_TSC_RECORD + 8], b"FKXTSC01");
        assert_eq!(u32::from_le_bytes(b[0x10..0x14].try_into().unwrap()), 1);
        assert_eq!(OFF_CODE, 0x1e8);
        assert_eq!(OFF_TSC_RECORD + TSC_RECORD_SIZE, OFF_VERIFY_COUNT);
        // Every parameter starts zeroed.
        for off in [
            OFF_ENTRY,
            OFF_BOOT_PARAMS,
            OFF_STACK_TOP,
            OFF_TSC_OUT,
            OFF_TSC_ENTRY,
            OFF_TSC_EXIT,
            OFF_TSC_VERIFIED,
        ] {
            assert_eq!(&b[off..off + 8], &[0; 8], "offset {off:#x}");
        }
        assert!(b[OFF_VERIFY_COUNT..OFF_CODE].iter().all(|&x| x == 0));
        // The blob ends with its zeroed stack.
        assert!(b[b.len() - STACK_SIZE..].iter().all(|&x| x == 0));
        assert!(p.code_end() > OFF_CODE && p.code_end() < b.len() - STACK_SIZE);
        assert_eq!(p.stack_end(), b.len());
        // The SysV/kernel entry convention wants a 16-byte aligned stack.
        assert_eq!(p.stack_end() % 16, 0);
    }

    #[test]
    fn first_instruction_jumps_to_the_code() {
        let p = Purgatory::new().unwrap();
        let ins = decode(&p, 0x7000_0000);
        assert_eq!(ins[0].code(), Code::Jmp_rel32_64);
        assert_eq!(ins[0].len(), 5);
        assert_eq!(ins[0].near_branch_target(), 0x7000_0000 + OFF_CODE as u64);
        assert_eq!(ins[1].mnemonic(), Mnemonic::Cli);
        assert_eq!(ins[3].mnemonic(), Mnemonic::Rdtsc);
    }

    #[test]
    fn patching_writes_exactly_the_documented_bytes() {
        let mut p = Purgatory::new().unwrap();
        let orig = p.bytes().to_vec();
        p.set_entry(0x0100_0000);
        p.set_boot_params(0x7ff0_0000);
        p.set_stack_top(0x7fe0_2000);
        p.set_tsc_out(0x1_2345_6780);
        let entries = [
            VerifyEntry::for_data(0x0100_0000, b"hello world"),
            VerifyEntry {
                addr: 0x2000,
                len: 0x1000,
                sum: 0xdead_beef_0bad_f00d,
            },
        ];
        p.set_verify(&entries).unwrap();
        let b = p.bytes();
        assert_eq!(&b[0x18..0x20], &0x0100_0000u64.to_le_bytes());
        assert_eq!(&b[0x20..0x28], &0x7ff0_0000u64.to_le_bytes());
        assert_eq!(&b[0x28..0x30], &0x7fe0_2000u64.to_le_bytes());
        assert_eq!(&b[0x30..0x38], &0x1_2345_6780u64.to_le_bytes());
        assert_eq!(&b[0x60..0x64], &2u32.to_le_bytes());
        assert_eq!(&b[0x68..0x70], &0x0100_0000u64.to_le_bytes());
        assert_eq!(&b[0x70..0x78], &16u64.to_le_bytes());
        assert_eq!(&b[0x78..0x80], &checksum(b"hello world").to_le_bytes());
        assert_eq!(&b[0x80..0x88], &0x2000u64.to_le_bytes());
        assert_eq!(&b[0x88..0x90], &0x1000u64.to_le_bytes());
        assert_eq!(&b[0x90..0x98], &0xdead_beef_0bad_f00du64.to_le_bytes());
        // Nothing else changed.
        let changed: Vec<usize> = (0..b.len()).filter(|&i| b[i] != orig[i]).collect();
        assert!(changed.iter().all(|&i| (0x18..0x38).contains(&i)
            || (0x60..0x64).contains(&i)
            || (0x68..0x98).contains(&i)));
        assert_eq!(p.verify_entries(), entries.to_vec());
        assert_eq!(
            (p.entry(), p.boot_params(), p.stack_top(), p.tsc_out()),
            (0x0100_0000, 0x7ff0_0000, 0x7fe0_2000, 0x1_2345_6780)
        );

        // A shorter table clears the old entries.
        p.set_verify(&entries[..1]).unwrap();
        assert_eq!(&p.bytes()[0x80..0x98], &[0u8; 24]);
        assert_eq!(p.verify_entries().len(), 1);
    }

    #[test]
    fn verify_table_limits_are_enforced() {
        let mut p = Purgatory::new().unwrap();
        let e = VerifyEntry {
            addr: 0,
            len: 8,
            sum: 0,
        };
        assert!(p.set_verify(&[e; VERIFY_MAX]).is_ok());
        assert!(p.set_verify(&[e; VERIFY_MAX + 1]).is_err());
        let odd = VerifyEntry { len: 12, ..e };
        assert!(p.set_verify(&[odd]).is_err());
    }

    #[test]
    fn from_bytes_rejects_foreign_blobs() {
        let good = blob().to_vec();
        assert!(Purgatory::from_bytes(good.clone()).is_ok());
        let mut bad = good.clone();
        bad[OFF_MAGIC] ^= 1;
        assert!(Purgatory::from_bytes(bad).is_err());
        let mut bad = good.clone();
        bad[OFF_VERSION] = 9;
        assert!(Purgatory::from_bytes(bad).is_err());
        assert!(Purgatory::from_bytes(good[..64].to_vec()).is_err());
        let mut bad = good;
        bad[OFF_CODE_END..OFF_CODE_END + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Purgatory::from_bytes(bad).is_err());
    }

    #[test]
    fn code_uses_no_absolute_addresses() {
        let p = Purgatory::new().unwrap();
        // Decoding at two different load addresses must give the same bytes
        // and every memory operand must be rip-relative or register-based.
        for ip in [0x1000u64, 0x7fff_f000] {
            for ins in decode(&p, ip) {
                assert_ne!(
                    ins.code(),
                    Code::INVALID,
                    "undecodable bytes at {:#x}",
                    ins.ip()
                );
                for op in 0..ins.op_count() {
                    match ins.op_kind(op) {
                        OpKind::Memory => {
                            let base = ins.memory_base();
                            assert!(
                                base != Register::None,
                                "absolute memory operand at {:#x}: {ins}",
                                ins.ip()
                            );
                            if base == Register::RIP {
                                // Stays inside the blob wherever it is loaded
                                // (the stack's end is one past its last byte).
                                let target = ins.memory_displacement64();
                                assert!(
                                    target >= ip && target <= ip + p.bytes().len() as u64,
                                    "rip-relative target {target:#x} outside the blob at {:#x}: {ins}",
                                    ins.ip()
                                );
                            }
                        }
                        OpKind::NearBranch64 => {
                            let t = ins.near_branch_target();
                            assert!(
                                t >= ip && t < ip + p.code_end() as u64,
                                "branch to {t:#x} leaves the code: {ins}"
                            );
                        }
                        OpKind::FarBranch16 | OpKind::FarBranch32 => {
                            panic!("absolute far branch at {:#x}: {ins}", ins.ip())
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn code_has_the_entry_contract_instructions() {
        let p = Purgatory::new().unwrap();
        let ins = decode(&p, 0x10_0000);
        let has = |f: &dyn Fn(&Instruction) -> bool| ins.iter().any(f);
        assert!(has(
            &|i| i.mnemonic() == Mnemonic::Lgdt && i.memory_base() == Register::RIP
        ));
        assert!(has(&|i| i.code() == Code::Retfq));
        assert!(has(
            &|i| i.code() == Code::Pushq_imm8 && i.immediate(0) == 0x10
        ));
        for seg in [
            Register::DS,
            Register::ES,
            Register::SS,
            Register::FS,
            Register::GS,
        ] {
            assert!(
                has(&|i| i.mnemonic() == Mnemonic::Mov && i.op0_register() == seg),
                "{seg:?} not loaded"
            );
        }
        assert!(has(&|i| i.mnemonic() == Mnemonic::Mov
            && i.op0_register() == Register::EAX
            && i.op_kind(1) == OpKind::Immediate32
            && i.immediate(1) == 0x18));
        assert!(has(
            &|i| i.code() == Code::Jmp_rm64 && i.op0_register() == Register::RAX
        ));
        assert!(has(&|i| i.mnemonic() == Mnemonic::Cli));
        assert_eq!(
            ins.iter()
                .filter(|i| i.mnemonic() == Mnemonic::Rdtsc)
                .count(),
            2
        );
        assert!(has(&|i| i.mnemonic() == Mnemonic::Out));
        assert!(has(&|i| i.mnemonic() == Mnemonic::Hlt));
        // rsi is loaded from the boot_params field right before the jump.
        let jmp = ins.iter().position(|i| i.code() == Code::Jmp_rm64).unwrap();
        let rsi_load = ins[..jmp]
            .iter()
            .rev()
            .find(|i| i.op0_register() == Register::RSI)
            .unwrap();
        assert_eq!(rsi_load.memory_base(), Register::RIP);
        assert_eq!(
            rsi_load.memory_displacement64(),
            0x10_0000 + OFF_BOOT_PARAMS as u64
        );
        // And the jump target register comes from the entry field.
        let rax_load = ins[..jmp]
            .iter()
            .rev()
            .find(|i| i.op0_register() == Register::RAX)
            .unwrap();
        assert_eq!(
            rax_load.memory_displacement64(),
            0x10_0000 + OFF_ENTRY as u64
        );
        // No register other than rsi/rax survives into the kernel with a
        // value from us: the instructions between the two loads and the jump
        // are the clearing xors.
        assert!(
            ins[..jmp]
                .iter()
                .rev()
                .take_while(|i| i.mnemonic() == Mnemonic::Xor)
                .count()
                >= 13
        );
    }

    #[test]
    fn gdt_descriptors_are_flat_code_and_data() {
        let p = Purgatory::new().unwrap();
        let b = p.bytes();
        let code: [u8; 8] = 0x00af9b000000ffffu64.to_le_bytes();
        let pos = b
            .windows(8)
            .position(|w| w == code)
            .expect("64-bit code descriptor");
        assert_eq!(pos % 8, 0);
        // GDT = null, unused, code (0x10), data (0x18).
        assert_eq!(&b[pos - 16..pos], &[0u8; 16]);
        assert_eq!(&b[pos + 8..pos + 16], &0x00cf93000000ffffu64.to_le_bytes());
        // GDTR limit follows: 4 descriptors.
        assert_eq!(&b[pos + 16..pos + 18], &31u16.to_le_bytes());
        let d = u64::from_le_bytes(b[pos..pos + 8].try_into().unwrap());
        assert_eq!(d >> 53 & 1, 1, "L bit");
        assert_eq!(d >> 54 & 1, 0, "D bit must be clear in 64-bit code");
        assert_eq!(d >> 47 & 1, 1, "present");
    }

    #[test]
    fn checksum_matches_known_vectors() {
        // Independent reference: the definition written out longhand.
        fn reference(data: &[u8]) -> u64 {
            let mut padded = data.to_vec();
            while !padded.len().is_multiple_of(8) {
                padded.push(0);
            }
            let (mut a, mut b) = (CHECKSUM_SEED as u128, 0u128);
            for w in padded.chunks_exact(8) {
                let mut v = 0u128;
                for (i, byte) in w.iter().enumerate() {
                    v |= (*byte as u128) << (8 * i);
                }
                a = (a + v) % (1u128 << 64);
                b = (b + a) % (1u128 << 64);
            }
            let b = b as u64;
            (a as u64) ^ b.rotate_right(32)
        }
        assert_eq!(checksum(&[]), CHECKSUM_SEED);
        // One zero word: a = seed, b = seed.
        assert_eq!(
            checksum(&[0; 8]),
            CHECKSUM_SEED ^ CHECKSUM_SEED.rotate_left(32)
        );
        for data in [&b"a"[..], b"abcdefgh", b"abcdefghi", &[0xff; 4096]] {
            assert_eq!(checksum(data), reference(data));
        }
        // Order matters (a plain sum would not see a swap).
        assert_ne!(checksum(b"AAAAAAAABBBBBBBB"), checksum(b"BBBBBBBBAAAAAAAA"));
        // The zero-padding rule: a short tail equals the padded tail.
        assert_eq!(checksum(b"xyz"), checksum(b"xyz\0\0\0\0\0"));
    }

    #[test]
    fn purgatory_checksum_routine_agrees_with_host_function() {
        let mut data = Vec::with_capacity(65536 + 8);
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..(65536 / 8) {
            // xorshift: cheap deterministic non-trivial data.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        for len in [0usize, 8, 16, 4096, 65536] {
            let slice = &data[..len];
            // SAFETY: the routine reads exactly `len / 8` u64 words from the
            // pointer, all inside `slice`, and follows the SysV ABI touching
            // only caller-saved registers (rax, rdx, rdi, rsi).
            let got = unsafe { fastkexec_purgatory_checksum(slice.as_ptr(), (len / 8) as u64) };
            assert_eq!(got, checksum(slice), "len {len}");
        }
        // A one-bit flip anywhere changes the sum.
        let mut flipped = data[..4096].to_vec();
        flipped[1234] ^= 0x10;
        // SAFETY: as above, 512 words inside `flipped`.
        let got = unsafe { fastkexec_purgatory_checksum(flipped.as_ptr(), 512) };
        assert_ne!(got, checksum(&data[..4096]));
        assert_eq!(got, checksum(&flipped));
    }
}
