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
//! | 0x008 | 8 | magic `"FKXPURG1"` |
//! | 0x010 | 4 | layout version ([`LAYOUT`]`.version`) |
//! | 0x014 | 4 | offset of the end of the instructions (data follows) |
//! | 0x018 | 8 | `entry`: physical address to jump to |
//! | 0x020 | 8 | `boot_params`: physical address passed in %rsi |
//! | 0x028 | 8 | `stack_top`: initial %rsp; 0 = the built-in stack |
//! | 0x030 | 8 | `tsc_out`: physical address to copy the TSC record to; 0 = none |
//! | 0x038 | 8 | reserved, 0 |
//! | 0x040 | 32 | TSC record: magic `"FKXTSC01"`, TSC at entry, TSC before the jump, number of segments verified |
//! | 0x060 | 4 | number of verify entries in use (at most [`VERIFY_MAX`]) |
//! | 0x064 | 4 | reserved, 0 |
//! | 0x068 | 16 × 24 | verify table: `{u64 addr, u64 len (multiple of 8), u64 checksum}` |
//! | 0x1e8 | … | code, then GDT, messages and the built-in stack (which ends the blob) |

use crate::blobs::frame::{self, Blob, Field};
use crate::error::{Error, Result};

pub use frame::{OFF_CODE_END, OFF_MAGIC, OFF_VERSION, TSC_RECORD_SIZE};

/// Physical address to jump to (the vmlinux `e_entry`).
pub const ENTRY: Field = Field::at("entry", 0x18);
/// Physical address passed in %rsi.
pub const BOOT_PARAMS: Field = Field::at("boot_params", 0x20);
/// Initial %rsp; 0 = the built-in stack.
pub const STACK_TOP: Field = Field::at("stack_top", 0x28);
/// Where the TSC record is copied before the jump; 0 = nowhere.
pub const TSC_OUT: Field = Field::at("tsc_out", 0x30);
pub const OFF_TSC_RECORD: usize = 0x40;
pub const OFF_TSC_ENTRY: usize = OFF_TSC_RECORD + 8;
pub const OFF_TSC_EXIT: usize = OFF_TSC_RECORD + 16;
pub const OFF_TSC_VERIFIED: usize = OFF_TSC_RECORD + 24;
pub const OFF_VERIFY_COUNT: usize = 0x60;
pub const OFF_VERIFY_TABLE: usize = 0x68;
/// One verify entry: addr, len, checksum.
pub const VERIFY_ENTRY_SIZE: usize = 24;
/// One entry per kexec segment at most (`KEXEC_SEGMENT_MAX`).
pub const VERIFY_MAX: usize = 16;
/// Where the instructions start.
pub const OFF_CODE: usize = OFF_VERIFY_TABLE + VERIFY_MAX * VERIFY_ENTRY_SIZE;

/// The purgatory's frame: magic `"FKXPURG1"`, TSC record magic `"FKXTSC01"` (so the tracer can
/// find and validate a copy of the record), a 4 KiB built-in stack.
pub const LAYOUT: frame::Layout = frame::Layout {
    name: "purgatory",
    magic: u64::from_le_bytes(*b"FKXPURG1"),
    version: 1,
    tsc_record: OFF_TSC_RECORD,
    tsc_magic: u64::from_le_bytes(*b"FKXTSC01"),
    code: OFF_CODE,
    stack_size: 4096,
    tsc_out: TSC_OUT,
    fields: &[ENTRY, BOOT_PARAMS, STACK_TOP, TSC_OUT],
    assembled: blob,
    error: |problem| Error::Purgatory { problem },
};

/// The purgatory as a [`frame::Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind;

impl frame::Kind for Kind {
    const LAYOUT: frame::Layout = LAYOUT;
}

/// A copy of the purgatory blob with its parameters filled in.
pub type Purgatory = Blob<Kind>;

frame::assembled_between!(fastkexec_purgatory_start, fastkexec_purgatory_end);

/// Initial value of the checksum's running sum ("kexec_a1" read as a
/// little-endian u64), so all-zero data does not sum to zero.
pub const CHECKSUM_SEED: u64 = u64::from_le_bytes(*b"kexec_a1");

// The purgatory itself. It sits in an executable section of this program only
// so that the host test can call the checksum routine; nothing else of it ever
// runs here. Every memory reference is rip-relative to a local label of this
// one section, which the assembler resolves without relocations.
frame::global_blob!(
    layout: LAYOUT,
    name: "purgatory",
    prefix: "fkx",
    asm: [
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
        "call .Lfkx_sum",
        "cmpq 16(%r12), %rax",
        "jne .Lfkx_mismatch",
        "addq ${verify_entry_size}, %r12",
        "incq %r14",
        "jmp .Lfkx_verify_loop",
        ".Lfkx_verified:",
        "movq %r14, .Lfkx_base+{off_tsc_verified}(%rip)",
        // Hand the TSC record to the tracer's page, if it gave us one.
        frame::asm_stamp_exit!("fkx"),
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
        frame::asm_checksum!("fkx", "%rdi", "%rsi"),
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
        frame::asm_uart!("fkx"),
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
    ],
    off_verify_count = const OFF_VERIFY_COUNT,
    off_verify_table = const OFF_VERIFY_TABLE,
    off_tsc_verified = const OFF_TSC_VERIFIED,
    off_stack_top = const STACK_TOP.off,
    off_boot_params = const BOOT_PARAMS.off,
    off_entry = const ENTRY.off,
    verify_max = const VERIFY_MAX,
    verify_entry_size = const VERIFY_ENTRY_SIZE,
);

#[cfg(all(test, target_arch = "x86_64"))]
extern "sysv64" {
    fn fastkexec_purgatory_checksum(addr: *const u8, words: u64) -> u64;
}

/// The checksum the purgatory verifies segments with: a Fletcher-style pair
/// of wrapping 64-bit sums over little-endian u64 words (a short tail counts
/// as if zero-padded, which is what the page the kernel copied it into
/// holds), folded as `a ^ rotl(b, 32)`. About one add pair per 8 bytes, so
/// verifying a 60 MB kernel costs milliseconds, not the hundreds a SHA-256
/// takes; it is a guard against stray DMA, not against an attacker.
pub fn checksum(data: &[u8]) -> u64 {
    let mut c = super::checksum::Checksum::new();
    c.update(data);
    c.finish()
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

impl Blob<Kind> {
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
        self.fill(
            OFF_VERIFY_TABLE..OFF_VERIFY_TABLE + VERIFY_MAX * VERIFY_ENTRY_SIZE,
            0,
        );
        for (i, e) in entries.iter().enumerate() {
            let [addr, len, sum] = verify_fields(i);
            self.set(addr, e.addr);
            self.set(len, e.len);
            self.set(sum, e.sum);
        }
        self.set_u32(OFF_VERIFY_COUNT, entries.len() as u32);
        Ok(())
    }

    /// The verify table as currently patched.
    pub fn verify_entries(&self) -> Vec<VerifyEntry> {
        let n = (self.get_u32(OFF_VERIFY_COUNT) as usize).min(VERIFY_MAX);
        (0..n)
            .map(|i| {
                let [addr, len, sum] = verify_fields(i);
                VerifyEntry {
                    addr: self.get(addr),
                    len: self.get(len),
                    sum: self.get(sum),
                }
            })
            .collect()
    }
}

/// The three u64 fields of verify entry `i`.
fn verify_fields(i: usize) -> [Field; 3] {
    let off = OFF_VERIFY_TABLE + i * VERIFY_ENTRY_SIZE;
    [
        Field {
            name: "verify.addr",
            off,
        },
        Field {
            name: "verify.len",
            off: off + 8,
        },
        Field {
            name: "verify.sum",
            off: off + 16,
        },
    ]
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
