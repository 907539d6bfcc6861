//! The machine's physical memory map as the firmware reported it, read from
//! `/sys/firmware/memmap`, and the free-RAM arithmetic the loader places
//! segments with.
//!
//! `/sys/firmware/memmap` holds the map the firmware gave the running kernel
//! (before the kernel carved its own reservations out of it), which is what
//! the next kernel must be told too: each entry `N/` has `start`, `end`
//! (inclusive) and a `type` string.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// An e820 memory type. The named ones are those the next kernel acts on;
/// anything else is carried through by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum E820Type {
    /// 1: usable RAM.
    Ram,
    /// 2: reserved (also what "Unknown E820 type" in sysfs falls back to).
    Reserved,
    /// 3: ACPI tables, reclaimable once parsed.
    Acpi,
    /// 4: ACPI non-volatile storage.
    Nvs,
    /// 5: memory the firmware found faulty.
    Unusable,
    /// 7: persistent memory.
    Pmem,
    /// Any other type, kept by number (e.g. 12 legacy persistent memory,
    /// 0xefffffff soft reserved).
    Other(u32),
}

impl E820Type {
    /// Legacy (pre-ACPI-6) persistent memory.
    pub const PRAM: u32 = 12;
    /// EFI "specific purpose" memory the kernel keeps away from the page allocator.
    pub const SOFT_RESERVED: u32 = 0xefff_ffff;

    /// The type for an e820 number.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::Acpi,
            4 => Self::Nvs,
            5 => Self::Unusable,
            7 => Self::Pmem,
            n => Self::Other(n),
        }
    }

    /// The e820 number written into boot_params.
    pub fn raw(self) -> u32 {
        match self {
            Self::Ram => 1,
            Self::Reserved => 2,
            Self::Acpi => 3,
            Self::Nvs => 4,
            Self::Unusable => 5,
            Self::Pmem => 7,
            Self::Other(n) => n,
        }
    }

    /// The type for a `/sys/firmware/memmap/N/type` string (the kernel's
    /// `e820_type_to_string` names), or `None` for one we do not know.
    ///
    /// "Unknown E820 type" is what the kernel prints for numbers it has no
    /// name for; the number itself is lost, so it becomes Reserved, which keeps
    /// the next kernel's hands off it.
    pub fn from_sysfs_name(name: &str) -> Option<Self> {
        Some(match name.trim() {
            "System RAM" => Self::Ram,
            "Reserved" | "reserved" | "Unknown E820 type" => Self::Reserved,
            "ACPI Tables" => Self::Acpi,
            "ACPI Non-volatile Storage" => Self::Nvs,
            "Unusable memory" => Self::Unusable,
            "Persistent Memory" => Self::Pmem,
            "Persistent Memory (legacy)" => Self::Other(Self::PRAM),
            "Soft Reserved" => Self::Other(Self::SOFT_RESERVED),
            _ => return None,
        })
    }
}

impl fmt::Display for E820Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ram => f.write_str("RAM"),
            Self::Reserved => f.write_str("reserved"),
            Self::Acpi => f.write_str("ACPI"),
            Self::Nvs => f.write_str("ACPI NVS"),
            Self::Unusable => f.write_str("unusable"),
            Self::Pmem => f.write_str("pmem"),
            Self::Other(n) => write!(f, "type {n:#x}"),
        }
    }
}

/// One e820 entry: `size` bytes from `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    /// Exclusive end; saturates so a map entry reaching the top of the
    /// address space cannot wrap.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// The 20-byte packed `struct boot_e820_entry` (u64 addr, u64 size, u32 type).
    pub fn to_boot_bytes(&self) -> [u8; BOOT_E820_ENTRY_SIZE] {
        let mut out = [0u8; BOOT_E820_ENTRY_SIZE];
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16..20].copy_from_slice(&self.kind.raw().to_le_bytes());
        out
    }
}

/// Size of one packed `struct boot_e820_entry`.
pub const BOOT_E820_ENTRY_SIZE: usize = 20;

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    /// `[start, end)`; `end < start` gives an empty range at `start`.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end: end.max(start),
        }
    }

    /// `len` bytes from `start`, clamped at the top of the address space.
    pub fn from_len(start: u64, len: u64) -> Self {
        Self::new(start, start.saturating_add(len))
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn overlaps(&self, other: &PhysRange) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    pub fn contains_range(&self, other: &PhysRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}-{:#x})", self.start, self.end)
    }
}

/// Reads `dir` (normally `/sys/firmware/memmap`): one subdirectory per entry
/// with `start`, `end` (inclusive) and `type`. The result is sorted by address.
pub fn read_sysfs_memmap(dir: &Path) -> Result<Vec<E820Entry>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut entries = Vec::new();
    for item in rd {
        let item = item.map_err(|e| Error::io(dir, e))?;
        let name = item.file_name();
        // Only the numbered entry directories; anything else is not ours to read.
        let Some(name) = name.to_str() else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let entry_dir = item.path();
        let start = read_hex_file(&entry_dir.join("start"))?;
        let end_path = entry_dir.join("end");
        let end = read_hex_file(&end_path)?;
        let type_path = entry_dir.join("type");
        let type_text = read_text(&type_path)?;
        let kind = E820Type::from_sysfs_name(&type_text).ok_or_else(|| Error::Parse {
            path: type_path.clone(),
            what: "e820 type name (\"System RAM\", \"Reserved\", \"ACPI Tables\", ...)",
            content: type_text.trim().to_string(),
        })?;
        let size = end
            .checked_sub(start)
            .and_then(|d| d.checked_add(1))
            .ok_or_else(|| Error::Parse {
                path: end_path.clone(),
                what: "inclusive end address not below start and below 2^64",
                content: format!("start {start:#x}, end {end:#x}"),
            })?;
        entries.push(E820Entry {
            addr: start,
            size,
            kind,
        });
    }
    if entries.is_empty() {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            what: "firmware memory map (no numbered entries)",
            content: String::new(),
        });
    }
    sort(&mut entries);
    Ok(entries)
}

/// Sorts by address (then size, then type) so the next kernel gets an
/// ordered table and output is deterministic.
pub fn sort(entries: &mut [E820Entry]) {
    entries.sort_by_key(|e| (e.addr, e.size, e.kind.raw()));
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_hex_file(path: &Path) -> Result<u64> {
    let text = read_text(path)?;
    parse_hex(text.trim()).ok_or_else(|| Error::Parse {
        path: path.to_path_buf(),
        what: "hexadecimal address",
        content: text.trim().to_string(),
    })
}

/// Parses `0x1234`, `0X1234` or bare hex digits.
pub(crate) fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// RAM the loader may use: every RAM entry, minus whatever a non-RAM entry
/// also claims (firmware maps occasionally overlap, and then the stricter type
/// wins), minus `used`. Sorted, disjoint, non-empty.
pub fn free_ranges(map: &[E820Entry], used: &[PhysRange]) -> Vec<PhysRange> {
    let mut free: Vec<PhysRange> = map
        .iter()
        .filter(|e| e.kind == E820Type::Ram)
        .map(|e| PhysRange::new(e.addr, e.end()))
        .filter(|r| !r.is_empty())
        .collect();
    free = merge(free);
    let blocked = map
        .iter()
        .filter(|e| e.kind != E820Type::Ram)
        .map(|e| PhysRange::new(e.addr, e.end()))
        .chain(used.iter().copied());
    for b in blocked {
        free = subtract(&free, &b);
    }
    free
}

/// Sorts and coalesces overlapping or touching ranges.
pub fn merge(mut ranges: Vec<PhysRange>) -> Vec<PhysRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort();
    let mut out: Vec<PhysRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn subtract(ranges: &[PhysRange], cut: &PhysRange) -> Vec<PhysRange> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for r in ranges {
        if !r.overlaps(cut) {
            out.push(*r);
            continue;
        }
        if r.start < cut.start {
            out.push(PhysRange::new(r.start, cut.start));
        }
        if cut.end < r.end {
            out.push(PhysRange::new(cut.end, r.end));
        }
    }
    out
}

/// The parts of `a` that are also in `b` (both sorted and disjoint, as
/// [`merge`] and [`free_ranges`] return them).
pub fn intersect(a: &[PhysRange], b: &[PhysRange]) -> Vec<PhysRange> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].start.max(b[j].start);
        let hi = a[i].end.min(b[j].end);
        if lo < hi {
            out.push(PhysRange::new(lo, hi));
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Whether all of `range` is RAM in `map` (possibly spread over several
/// touching RAM entries) and no non-RAM entry overlaps it.
pub fn is_ram(map: &[E820Entry], range: &PhysRange) -> bool {
    if range.is_empty() {
        return true;
    }
    free_ranges(map, &[])
        .iter()
        .any(|r| r.contains_range(range))
}

/// Where to look for a hole and which end of it to prefer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoleRequest {
    pub size: u64,
    /// Power of two.
    pub align: u64,
    /// Lowest acceptable start.
    pub min: u64,
    /// Highest acceptable exclusive end.
    pub max_end: u64,
    /// Highest address first (true) or lowest first (false).
    pub top_down: bool,
}

/// The start of a `size`-byte, `align`-aligned block inside one of `free`
/// (sorted, disjoint) that lies within `[min, max_end)`.
pub fn find_hole(free: &[PhysRange], req: &HoleRequest) -> Option<u64> {
    if req.size == 0 || !req.align.is_power_of_two() {
        return None;
    }
    let window = PhysRange::new(req.min, req.max_end);
    let fit = |r: &PhysRange| -> Option<u64> {
        let lo = r.start.max(window.start);
        let hi = r.end.min(window.end);
        if hi <= lo {
            return None;
        }
        if req.top_down {
            let start = align_down(hi.checked_sub(req.size)?, req.align);
            (start >= lo).then_some(start)
        } else {
            let start = align_up(lo, req.align)?;
            (start.checked_add(req.size)? <= hi).then_some(start)
        }
    };
    if req.top_down {
        free.iter().rev().find_map(fit)
    } else {
        free.iter().find_map(fit)
    }
}

/// Rounds down to a power-of-two alignment.
pub fn align_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

/// Rounds up to a power-of-two alignment; `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name)
            .join("sys/firmware/memmap")
    }

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Type::Ram,
        }
    }

    #[test]
    fn qemu_memmap_parses_sorted_with_inclusive_end() {
        let map = read_sysfs_memmap(&fixture("qemu-seabios")).unwrap();
        assert_eq!(map.len(), 7);
        // Directory order 0..6 is not address order in the fixture (5 and 6
        // were written out of order on purpose); the reader must sort.
        assert!(map.windows(2).all(|w| w[0].addr < w[1].addr));
        assert_eq!(map[0], ram(0, 0x9fc00));
        assert_eq!(
            map[1],
            E820Entry {
                addr: 0x9fc00,
                size: 0x400,
                kind: E820Type::Reserved
            }
        );
        assert_eq!(map[3], ram(0x100000, 0x7ffe0000 - 0x100000));
        let last = map[map.len() - 1];
        assert_eq!(last.addr, 0xfffc0000);
        assert_eq!(last.end(), 0x1_0000_0000);
    }

    #[test]
    fn efi_memmap_keeps_every_type() {
        let map = read_sysfs_memmap(&fixture("efi-large")).unwrap();
        assert!(
            map.len() > 128,
            "fixture must exceed the zero page's 128 slots"
        );
        for k in [
            E820Type::Ram,
            E820Type::Reserved,
            E820Type::Acpi,
            E820Type::Nvs,
            E820Type::Other(E820Type::SOFT_RESERVED),
        ] {
            assert!(map.iter().any(|e| e.kind == k), "{k} missing");
        }
    }

    #[test]
    fn sysfs_type_names_map_to_numbers() {
        let cases = [
            ("System RAM\n", 1),
            ("Reserved\n", 2),
            ("ACPI Tables", 3),
            ("ACPI Non-volatile Storage", 4),
            ("Unusable memory", 5),
            ("Persistent Memory", 7),
            ("Persistent Memory (legacy)", 12),
            ("Soft Reserved", 0xefff_ffff),
            ("Unknown E820 type", 2),
        ];
        for (name, raw) in cases {
            assert_eq!(
                E820Type::from_sysfs_name(name).map(E820Type::raw),
                Some(raw)
            );
        }
        assert_eq!(E820Type::from_sysfs_name("Bogus"), None);
        for raw in [1, 2, 3, 4, 5, 7, 12, 0x1234] {
            assert_eq!(E820Type::from_raw(raw).raw(), raw);
        }
    }

    #[test]
    fn bad_sysfs_content_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path().join("0");
        std::fs::create_dir(&e).unwrap();
        std::fs::write(e.join("start"), "0x1000\n").unwrap();
        std::fs::write(e.join("end"), "0xfff\n").unwrap();
        std::fs::write(e.join("type"), "System RAM\n").unwrap();
        let err = read_sysfs_memmap(dir.path()).unwrap_err().to_string();
        assert!(err.contains("end"), "{err}");

        std::fs::write(e.join("end"), "zz\n").unwrap();
        let err = read_sysfs_memmap(dir.path()).unwrap_err().to_string();
        assert!(err.contains("hexadecimal"), "{err}");

        std::fs::write(e.join("end"), "0x1fff\n").unwrap();
        std::fs::write(e.join("type"), "Mystery\n").unwrap();
        let err = read_sysfs_memmap(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Mystery"), "{err}");

        std::fs::write(e.join("type"), "System RAM\n").unwrap();
        let map = read_sysfs_memmap(dir.path()).unwrap();
        assert_eq!(map, vec![ram(0x1000, 0x1000)]);

        let empty = tempfile::tempdir().unwrap();
        assert!(read_sysfs_memmap(empty.path()).is_err());
        assert!(read_sysfs_memmap(&empty.path().join("missing")).is_err());
    }

    #[test]
    fn full_address_space_entry_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path().join("0");
        std::fs::create_dir(&e).unwrap();
        std::fs::write(e.join("start"), "0x0\n").unwrap();
        std::fs::write(e.join("end"), "0xffffffffffffffff\n").unwrap();
        std::fs::write(e.join("type"), "Reserved\n").unwrap();
        assert!(read_sysfs_memmap(dir.path()).is_err());
    }

    #[test]
    fn free_ranges_subtracts_reserved_overlaps_and_used() {
        let map = vec![
            ram(0, 0x9fc00),
            ram(0x100000, 0x7ff00000),
            // A reserved entry overlapping RAM must win.
            E820Entry {
                addr: 0x200000,
                size: 0x1000,
                kind: E820Type::Reserved,
            },
        ];
        let used = [PhysRange::new(0x1000000, 0x2000000)];
        let free = free_ranges(&map, &used);
        assert_eq!(
            free,
            vec![
                PhysRange::new(0, 0x9fc00),
                PhysRange::new(0x100000, 0x200000),
                PhysRange::new(0x201000, 0x1000000),
                PhysRange::new(0x2000000, 0x80000000),
            ]
        );
        assert!(is_ram(&map, &PhysRange::new(0x100000, 0x200000)));
        assert!(!is_ram(&map, &PhysRange::new(0x100000, 0x201000)));
        assert!(!is_ram(&map, &PhysRange::new(0x9f000, 0x101000)));
    }

    #[test]
    fn intersect_keeps_common_parts_only() {
        let a = vec![PhysRange::new(0, 0x1000), PhysRange::new(0x2000, 0x8000)];
        let b = vec![
            PhysRange::new(0x800, 0x2800),
            PhysRange::new(0x3000, 0x4000),
            PhysRange::new(0x7fff, 0x9000),
        ];
        assert_eq!(
            intersect(&a, &b),
            vec![
                PhysRange::new(0x800, 0x1000),
                PhysRange::new(0x2000, 0x2800),
                PhysRange::new(0x3000, 0x4000),
                PhysRange::new(0x7fff, 0x8000),
            ]
        );
        assert_eq!(intersect(&a, &[]), vec![]);
    }

    #[test]
    fn touching_ram_entries_count_as_one() {
        let map = vec![ram(0x100000, 0x100000), ram(0x200000, 0x100000)];
        assert!(is_ram(&map, &PhysRange::new(0x180000, 0x280000)));
    }

    #[test]
    fn find_hole_top_down_and_bottom_up() {
        let free = vec![
            PhysRange::new(0x100000, 0x200000),
            PhysRange::new(0x300000, 0x380000),
        ];
        let mut req = HoleRequest {
            size: 0x10000,
            align: 0x1000,
            min: 0,
            max_end: u64::MAX,
            top_down: true,
        };
        assert_eq!(find_hole(&free, &req), Some(0x370000));
        req.top_down = false;
        assert_eq!(find_hole(&free, &req), Some(0x100000));
        // Too big for the upper range: falls to the lower one.
        req.top_down = true;
        req.size = 0x90000;
        assert_eq!(find_hole(&free, &req), Some(0x170000));
        // A ceiling cuts the upper range off.
        req.size = 0x1000;
        req.max_end = 0x300800;
        assert_eq!(find_hole(&free, &req), Some(0x1ff000));
        // Alignment larger than the hole.
        req.max_end = u64::MAX;
        req.align = 0x400000;
        req.top_down = false;
        assert_eq!(find_hole(&free, &req), None);
        req.align = 0x100000;
        assert_eq!(find_hole(&free, &req), Some(0x100000));
        req.top_down = true;
        assert_eq!(find_hole(&free, &req), Some(0x300000));
        req.size = 0;
        assert_eq!(find_hole(&free, &req), None);
    }

    #[test]
    fn boot_entry_bytes_are_packed_little_endian() {
        let e = E820Entry {
            addr: 0x1122_3344_5566_7788,
            size: 0x99aa_bbcc_ddee_ff00,
            kind: E820Type::Other(E820Type::SOFT_RESERVED),
        };
        let b = e.to_boot_bytes();
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[8..16], &0x99aa_bbcc_ddee_ff00u64.to_le_bytes());
        assert_eq!(&b[16..20], &[0xff, 0xff, 0xff, 0xef]);
    }
}
