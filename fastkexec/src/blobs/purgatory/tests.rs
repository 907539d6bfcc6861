use super::*;
use crate::blobs::frame::tests::decode;
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

#[test]
fn header_fields_sit_at_documented_offsets() {
    let p = Purgatory::new().unwrap();
    let b = p.bytes();
    assert_eq!(&b[OFF_MAGIC..OFF_MAGIC + 8], b"FKXPURG1");
    assert_eq!(&b[OFF_TSC_RECORD..OFF_TSC_RECORD + 8], b"FKXTSC01");
    assert_eq!(u32::from_le_bytes(b[0x10..0x14].try_into().unwrap()), 1);
    assert_eq!(OFF_CODE, 0x1e8);
    assert_eq!(OFF_TSC_RECORD + TSC_RECORD_SIZE, OFF_VERIFY_COUNT);
    // The fields sit where the layout table in the module documentation says.
    let offs: Vec<usize> = [ENTRY, BOOT_PARAMS, STACK_TOP, TSC_OUT]
        .iter()
        .map(|f| f.off)
        .collect();
    assert_eq!(offs, [0x18, 0x20, 0x28, 0x30]);
    assert_eq!(
        (OFF_TSC_ENTRY, OFF_TSC_EXIT, OFF_TSC_VERIFIED),
        (0x48, 0x50, 0x58)
    );
    assert!(b[OFF_VERIFY_COUNT..OFF_CODE].iter().all(|&x| x == 0));
}

#[test]
fn patching_writes_exactly_the_documented_bytes() {
    let mut p = Purgatory::new().unwrap();
    let orig = p.bytes().to_vec();
    p.set(ENTRY, 0x0100_0000);
    p.set(BOOT_PARAMS, 0x7ff0_0000);
    p.set(STACK_TOP, 0x7fe0_2000);
    p.set(TSC_OUT, 0x1_2345_6780);
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
        0x10_0000 + BOOT_PARAMS.off as u64
    );
    // And the jump target register comes from the entry field.
    let rax_load = ins[..jmp]
        .iter()
        .rev()
        .find(|i| i.op0_register() == Register::RAX)
        .unwrap();
    assert_eq!(
        rax_load.memory_displacement64(),
        0x10_0000 + ENTRY.off as u64
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
