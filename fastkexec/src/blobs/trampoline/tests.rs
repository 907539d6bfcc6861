use super::*;
use crate::blobs::frame::tests::decode;
use iced_x86::{Code, Mnemonic, OpKind, Register};

#[test]
fn header_fields_sit_at_documented_offsets() {
    let t = Trampoline::new().unwrap();
    let b = t.bytes();
    assert_eq!(&b[OFF_MAGIC..OFF_MAGIC + 8], b"FKXTRMP1");
    assert_eq!(&b[OFF_TSC_RECORD..OFF_TSC_RECORD + 8], b"FKXTRM01");
    assert_eq!(OFF_TSC_RECORD + TSC_RECORD_SIZE, OFF_CODE - 8);
    // The fields sit where the layout table in the module documentation says.
    let offs: Vec<usize> = LAYOUT.fields.iter().map(|f| f.off).collect();
    assert_eq!(offs, [0x18, 0x20, 0x28, 0x30, 0x38, 0x40, 0x48]);
    assert_eq!(
        (OFF_TSC_ENTRY, OFF_TSC_EXIT, OFF_RESULT),
        (0x60, 0x68, 0x70)
    );
    assert!(b[OFF_TSC_ENTRY..OFF_CODE].iter().all(|&x| x == 0));
    // "A page or so": the whole normal image is one page.
    assert!(b.len() <= 4096, "{} bytes", b.len());
}

#[test]
fn patching_writes_exactly_the_documented_bytes() {
    let mut t = Trampoline::new().unwrap();
    let orig = t.bytes().to_vec();
    t.set(TARGET, 0x7400_0000);
    t.set_header(0x74f0_0000, 0x3_0000, 0x1122_3344_5566_7788);
    t.set_nonce(&[0xab; 16]);
    t.set(TSC_OUT, 0x5000_0100);
    let b = t.bytes();
    assert_eq!(&b[0x18..0x20], &0x7400_0000u64.to_le_bytes());
    assert_eq!(&b[0x20..0x28], &0x74f0_0000u64.to_le_bytes());
    assert_eq!(&b[0x28..0x30], &0x3_0000u64.to_le_bytes());
    assert_eq!(&b[0x30..0x38], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[0x38..0x48], &[0xab; 16]);
    assert_eq!(&b[0x48..0x50], &0x5000_0100u64.to_le_bytes());
    let changed: Vec<usize> = (0..b.len()).filter(|&i| b[i] != orig[i]).collect();
    assert!(changed.iter().all(|&i| (0x18..0x50).contains(&i)));
    assert_eq!(t.header(), (0x74f0_0000, 0x3_0000, 0x1122_3344_5566_7788));
    assert_eq!(t.nonce(), [0xab; 16]);
}

#[test]
fn code_stamps_checks_and_resets_through_the_firmware() {
    let t = Trampoline::new().unwrap();
    let ins = decode(&t, 0x20_0000);
    // The jump into the staged purgatory takes its target from the field.
    let jmp = ins.iter().position(|i| i.code() == Code::Jmp_rm64).unwrap();
    let load = ins[..jmp]
        .iter()
        .rev()
        .find(|i| i.op0_register() == Register::RAX)
        .unwrap();
    assert_eq!(load.memory_displacement64(), 0x20_0000 + TARGET.off as u64);
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
