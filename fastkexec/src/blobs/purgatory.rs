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
mod tests;
