//! The checks every blob must pass, run on both kinds.

use super::*;
use crate::blobs::{purgatory, trampoline};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// A blob's instructions as they would run at `ip`: the jump at 0 and the code from
/// the layout's `code` to its code end (the parameter block in between is data).
pub(crate) fn decode<K: Kind>(b: &Blob<K>, ip: u64) -> Vec<Instruction> {
    let bytes = b.bytes();
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, &bytes[..OFF_MAGIC], ip, DecoderOptions::NONE);
    out.push(d.decode());
    let code = &bytes[K::LAYOUT.code..b.code_end()];
    let mut d = Decoder::with_ip(64, code, ip + K::LAYOUT.code as u64, DecoderOptions::NONE);
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

fn fields_start_zeroed_inside_the_parameter_block<K: Kind>() {
    let b = Blob::<K>::new().unwrap();
    let bytes = b.bytes();
    for f in K::LAYOUT.fields {
        assert!(
            f.off >= OFF_CODE_END + 4 && f.off + 8 <= K::LAYOUT.tsc_record,
            "{} {}",
            K::LAYOUT.name,
            f.name
        );
        assert_eq!(
            &bytes[f.off..f.off + 8],
            &[0; 8],
            "{} {}",
            K::LAYOUT.name,
            f.name
        );
    }
    // The record's three stamps start zeroed; only its magic is set.
    let rec = K::LAYOUT.tsc_record;
    assert!(bytes[rec + 8..rec + TSC_RECORD_SIZE]
        .iter()
        .all(|&x| x == 0));
    assert!(
        rec + TSC_RECORD_SIZE <= K::LAYOUT.code,
        "{}",
        K::LAYOUT.name
    );
    // The blob ends with its zeroed stack, 16-byte aligned for the entry convention.
    assert!(bytes[bytes.len() - K::LAYOUT.stack_size..]
        .iter()
        .all(|&x| x == 0));
    assert!(b.code_end() > K::LAYOUT.code && b.code_end() <= bytes.len() - K::LAYOUT.stack_size);
    assert_eq!(b.stack_end(), bytes.len());
    assert_eq!(b.stack_end() % 16, 0, "{}", K::LAYOUT.name);
}

fn patching_a_field_writes_exactly_its_bytes<K: Kind>() {
    let mut b = Blob::<K>::new().unwrap();
    let orig = b.bytes().to_vec();
    for (i, f) in K::LAYOUT.fields.iter().enumerate() {
        let v = 0x1122_3344_5566_7700 + i as u64;
        b.set(*f, v);
        assert_eq!(&b.bytes()[f.off..f.off + 8], &v.to_le_bytes(), "{}", f.name);
    }
    for (i, f) in K::LAYOUT.fields.iter().enumerate() {
        assert_eq!(b.get(*f), 0x1122_3344_5566_7700 + i as u64, "{}", f.name);
    }
    let bytes = b.bytes();
    for i in (0..bytes.len()).filter(|&i| bytes[i] != orig[i]) {
        assert!(
            K::LAYOUT
                .fields
                .iter()
                .any(|f| (f.off..f.off + 8).contains(&i)),
            "{}: byte {i:#x} changed outside every field",
            K::LAYOUT.name
        );
    }
}

fn from_bytes_rejects_foreign_blobs<K: Kind, Other: Kind>() {
    let good = (K::LAYOUT.assembled)().to_vec();
    assert!(Blob::<K>::from_bytes(good.clone()).is_ok());
    let mut bad = good.clone();
    bad[OFF_MAGIC] ^= 1;
    assert!(Blob::<K>::from_bytes(bad).is_err());
    let mut bad = good.clone();
    bad[OFF_VERSION] = 9;
    assert!(Blob::<K>::from_bytes(bad).is_err());
    let mut bad = good.clone();
    bad[K::LAYOUT.tsc_record] ^= 1;
    assert!(Blob::<K>::from_bytes(bad).is_err());
    assert!(Blob::<K>::from_bytes(good[..64].to_vec()).is_err());
    let mut bad = good;
    bad[OFF_CODE_END..OFF_CODE_END + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Blob::<K>::from_bytes(bad).is_err());
    // The other blob is not this one.
    assert!(Blob::<K>::from_bytes((Other::LAYOUT.assembled)().to_vec()).is_err());
}

fn code_uses_no_absolute_addresses<K: Kind>() {
    let b = Blob::<K>::new().unwrap();
    // Decoded at two load addresses, every memory operand must be rip-relative or
    // register-based and every branch must stay in the code.
    for ip in [0x1000u64, 0x7fff_f000] {
        for ins in decode(&b, ip) {
            assert_ne!(ins.code(), Code::INVALID, "bad bytes at {:#x}", ins.ip());
            for op in 0..ins.op_count() {
                match ins.op_kind(op) {
                    OpKind::Memory => {
                        let base = ins.memory_base();
                        assert!(base != Register::None, "absolute operand: {ins}");
                        if base == Register::RIP {
                            // Inside the blob (the stack's end is one past its last byte).
                            let target = ins.memory_displacement64();
                            assert!(
                                target >= ip && target <= ip + b.bytes().len() as u64,
                                "rip-relative target outside the blob: {ins}"
                            );
                        }
                    }
                    OpKind::NearBranch64 => {
                        let target = ins.near_branch_target();
                        assert!(
                            target >= ip && target < ip + b.code_end() as u64,
                            "branch leaves the code: {ins}"
                        );
                    }
                    OpKind::FarBranch16 | OpKind::FarBranch32 => panic!("far branch: {ins}"),
                    _ => {}
                }
            }
        }
    }
}

fn code_jumps_in_and_stamps_the_tsc_twice<K: Kind>() {
    let b = Blob::<K>::new().unwrap();
    let ins = decode(&b, 0x20_0000);
    assert_eq!(ins[0].code(), Code::Jmp_rel32_64);
    assert_eq!(ins[0].len(), 5);
    assert_eq!(
        ins[0].near_branch_target(),
        0x20_0000 + K::LAYOUT.code as u64
    );
    assert_eq!(ins[1].mnemonic(), Mnemonic::Cli);
    assert_eq!(ins[3].mnemonic(), Mnemonic::Rdtsc);
    let rdtsc = ins.iter().filter(|i| i.mnemonic() == Mnemonic::Rdtsc);
    assert_eq!(rdtsc.count(), 2, "{}", K::LAYOUT.name);
    // The first stamp lands in the record's second word.
    let store = &ins[6];
    assert_eq!(store.memory_base(), Register::RIP);
    let want = 0x20_0000 + K::LAYOUT.tsc_record as u64 + 8;
    assert_eq!(store.memory_displacement64(), want, "{}", K::LAYOUT.name);
}

#[test]
fn fields_start_zeroed_inside_the_parameter_block_of_both_blobs() {
    fields_start_zeroed_inside_the_parameter_block::<purgatory::Kind>();
    fields_start_zeroed_inside_the_parameter_block::<trampoline::Kind>();
}

#[test]
fn patching_a_field_of_either_blob_writes_exactly_its_bytes() {
    patching_a_field_writes_exactly_its_bytes::<purgatory::Kind>();
    patching_a_field_writes_exactly_its_bytes::<trampoline::Kind>();
}

#[test]
fn both_blobs_reject_foreign_bytes() {
    from_bytes_rejects_foreign_blobs::<purgatory::Kind, trampoline::Kind>();
    from_bytes_rejects_foreign_blobs::<trampoline::Kind, purgatory::Kind>();
}

#[test]
fn neither_blob_uses_absolute_addresses() {
    code_uses_no_absolute_addresses::<purgatory::Kind>();
    code_uses_no_absolute_addresses::<trampoline::Kind>();
}

#[test]
fn both_blobs_jump_in_and_stamp_the_tsc_twice() {
    code_jumps_in_and_stamps_the_tsc_twice::<purgatory::Kind>();
    code_jumps_in_and_stamps_the_tsc_twice::<trampoline::Kind>();
}
