//! Just enough of a BTF reader to find struct member offsets and function
//! names in the running kernel's `/sys/kernel/btf/vmlinux`.
//!
//! The tracer's device probe reads `dev->kobj.name`, `dev->bus->name` and
//! `dev->driver->name`; where those members sit depends on the kernel version
//! and configuration, so their offsets come from BTF at run time (aya's own
//! BTF type does not expose its types). BTF layout: a header, then the type
//! section (one `struct btf_type` plus kind-specific trailing data per type,
//! ids from 1), then the string section.

use std::path::Path;

use crate::bytes::{u16_at, u32_at};
use crate::{Error, Result};

/// `BTF_MAGIC`, little endian.
const MAGIC: u16 = 0xeb9f;

const KIND_INT: u8 = 1;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_ENUM64: u8 = 19;
/// Highest kind this reader knows the trailing-data size of.
const KIND_MAX: u8 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    offset_bits: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u8,
    members: Vec<Member>,
}

/// A parsed BTF blob.
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads and parses a BTF file (e.g. `/sys/kernel/btf/vmlinux`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|problem| Error::Btf {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(b: &[u8]) -> std::result::Result<Self, String> {
        let bad = |what: &str| format!("truncated or malformed BTF ({what})");
        if u16_at(b, 0) != Some(MAGIC) {
            return Err("no BTF magic 0xeb9f (not BTF, or big-endian)".into());
        }
        let hdr_len = u32_at(b, 4).ok_or_else(|| bad("header"))? as usize;
        let type_off = u32_at(b, 8).ok_or_else(|| bad("header"))? as usize;
        let type_len = u32_at(b, 12).ok_or_else(|| bad("header"))? as usize;
        let str_off = u32_at(b, 16).ok_or_else(|| bad("header"))? as usize;
        let str_len = u32_at(b, 20).ok_or_else(|| bad("header"))? as usize;
        let range = |off: usize, len: usize| -> Option<&[u8]> {
            let start = hdr_len.checked_add(off)?;
            b.get(start..start.checked_add(len)?)
        };
        let tsec = range(type_off, type_len).ok_or_else(|| bad("type section"))?;
        let strings = range(str_off, str_len)
            .ok_or_else(|| bad("string section"))?
            .to_vec();

        let mut types = Vec::new();
        let mut o = 0usize;
        while o < tsec.len() {
            let name_off = u32_at(tsec, o).ok_or_else(|| bad("type"))?;
            let info = u32_at(tsec, o + 4).ok_or_else(|| bad("type"))?;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 != 0;
            o += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let name_off = u32_at(tsec, m).ok_or_else(|| bad("member"))?;
                        let type_id = u32_at(tsec, m + 4).ok_or_else(|| bad("member"))?;
                        let raw = u32_at(tsec, m + 8).ok_or_else(|| bad("member"))?;
                        // With kind_flag the top 8 bits are a bitfield size.
                        let offset_bits = if kflag { raw & 0x00ff_ffff } else { raw };
                        members.push(Member {
                            name_off,
                            type_id,
                            offset_bits,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                k if k <= KIND_MAX => 0,
                k => return Err(format!("unknown BTF kind {k} at type offset {o}")),
            };
            o = o.checked_add(extra).ok_or_else(|| bad("type"))?;
            if o > tsec.len() {
                return Err(bad("type data runs past the section"));
            }
            types.push(Type {
                name_off,
                kind,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let tail = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        tail.get(..end).unwrap_or(&[])
    }

    /// Type by BTF id (ids start at 1).
    fn by_id(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Whether a `FUNC` named `name` exists (fentry/fexit can only attach to those).
    pub fn has_func(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name.as_bytes())
    }

    /// Byte offset of `member` in `struct name` (first definition with
    /// members), looking through anonymous struct/union members.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let t = self.types.iter().find(|t| {
            t.kind == KIND_STRUCT
                && !t.members.is_empty()
                && self.name(t.name_off) == name.as_bytes()
        })?;
        let bits = self.find_member(t, member.as_bytes(), 0)?;
        if bits % 8 != 0 {
            return None;
        }
        Some(bits / 8)
    }

    fn find_member(&self, t: &Type, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if self.name(m.name_off) == member {
                return Some(m.offset_bits);
            }
        }
        // Anonymous members: search inside and add their offset.
        for m in t.members.iter().filter(|m| m.name_off == 0) {
            let Some(inner) = self.by_id(m.type_id) else {
                continue;
            };
            if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                if let Some(off) = self.find_member(inner, member, depth + 1) {
                    return m.offset_bits.checked_add(off);
                }
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob type by type.
    #[derive(Default)]
    struct Builder {
        strings: Vec<u8>,
        tsec: Vec<u8>,
    }

    impl Builder {
        fn s(&mut self, s: &str) -> u32 {
            if self.strings.is_empty() {
                self.strings.push(0);
            }
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn ty(&mut self, name: &str, kind: u8, vlen: u32, size: u32, extra: &[u32]) {
            let n = self.s(name);
            for w in [n, (u32::from(kind) << 24) | vlen, size]
                .iter()
                .chain(extra)
            {
                self.tsec.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn bytes(mut self) -> Vec<u8> {
            self.s("");
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.tsec.len() as u32,
                self.tsec.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            b.extend_from_slice(&self.tsec);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    /// A BTF blob that has a FUNC entry for each name (fixtures for other modules' tests).
    pub(crate) fn with_funcs(names: &[&str]) -> Vec<u8> {
        let mut b = Builder::default();
        b.ty("int", KIND_INT, 0, 4, &[32]);
        for n in names {
            b.ty(n, KIND_FUNC, 0, 1, &[]);
        }
        b.bytes()
    }

    /// A BTF blob with one struct `name` holding an int `member` at byte 8.
    pub(crate) fn with_struct(name: &str, member: &str) -> Vec<u8> {
        let mut b = Builder::default();
        let m = b.s(member);
        b.ty("int", KIND_INT, 0, 4, &[32]);
        b.ty(name, KIND_STRUCT, 1, 16, &[m, 1, 64]);
        b.bytes()
    }

    fn sample() -> Vec<u8> {
        let mut b = Builder::default();
        let name = b.s("name");
        let pad = b.s("pad");
        b.ty("int", KIND_INT, 0, 4, &[32]); // id 1
        b.ty("", KIND_PTR_FOR_TESTS, 0, 1, &[]); // id 2: char *
        b.ty("", KIND_UNION, 1, 8, &[name, 2, 0]); // id 3: union { char *name; }
                                                   // id 4: struct kobject { int pad; union { char *name; } at byte 16 }
        b.ty("kobject", KIND_STRUCT, 2, 24, &[pad, 1, 0, 0, 3, 128]);
        b.ty("kernel_kexec", KIND_FUNC, 0, 6, &[]); // id 5
        b.ty("kobject", 7, 0, 0, &[]); // id 6: a forward declaration (FWD)
        b.bytes()
    }

    const KIND_PTR_FOR_TESTS: u8 = 2;

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("kobject", "name"), Some(16));
        assert_eq!(btf.member_offset("kobject", "pad"), Some(0));
        assert_eq!(btf.member_offset("kobject", "missing"), None);
        assert_eq!(btf.member_offset("nosuch", "name"), None);
        assert!(btf.has_func("kernel_kexec"));
        assert!(!btf.has_func("kobject"));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let good = sample();
        // Every truncation and every single-byte corruption of a valid blob
        // either parses or errors cleanly.
        for n in 0..good.len() {
            let _ = Btf::parse(&good[..n]);
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            if let Ok(btf) = Btf::parse(&b) {
                let _ = btf.member_offset("kobject", "name");
            }
        }
    }

    #[test]
    fn running_kernel_btf_has_the_device_members() {
        // The host's own BTF, when it has one: the members the tracer needs.
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: {} not present", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let kobj = btf.member_offset("device", "kobj").unwrap();
        assert_eq!(btf.member_offset("kobject", "name"), Some(0));
        assert!(kobj < 4096);
        assert!(btf.member_offset("device", "driver").is_some());
        assert!(btf.member_offset("device", "bus").is_some());
        assert_eq!(btf.member_offset("device_driver", "name"), Some(0));
        assert_eq!(btf.member_offset("bus_type", "name"), Some(0));
        assert_eq!(
            btf.member_offset("notifier_block", "notifier_call"),
            Some(0)
        );
        assert_eq!(btf.member_offset("notifier_block", "next"), Some(8));
        assert!(btf
            .member_offset("blocking_notifier_head", "head")
            .is_some());
        // (This host's kernel may lack kexec; these are on every kernel.)
        assert!(btf.has_func("device_shutdown"));
        assert!(btf.has_func("pm_runtime_barrier"));
        assert!(!btf.has_func("no_such_function_in_any_kernel"));
    }
}
