//! The kernel's rules for a `kexec_load` segment list (`sanity_check_segment_list()`), checked
//! once, here, before any syscall: a bad plan is refused with a precise message instead of a
//! bare EINVAL/EADDRNOTAVAIL.

use super::sys::{SegmentSpec, KEXEC_SEGMENT_MAX, PAGE_SIZE};
use crate::{Error, Result};

/// Checks a segment list against every rule the kernel's `sanity_check_segment_list()` applies,
/// plus that `entry` lies inside a segment, so a bad plan is refused with a precise message
/// before the syscall instead of as a bare EINVAL/EADDRNOTAVAIL.
pub fn validate_segments(entry: u64, segments: &[SegmentSpec<'_>]) -> Result<()> {
    if segments.is_empty() {
        return Err(Error::InvalidSegments(
            "no segments (an empty list would unload the current image)".into(),
        ));
    }
    check_list(segments, &|i| format!("segment {i}"))?;
    let inside = segments
        .iter()
        .any(|s| entry >= s.mem && entry - s.mem < s.memsz);
    if !inside {
        return Err(Error::InvalidSegments(format!(
            "entry {entry:#x} is not inside any segment"
        )));
    }
    Ok(())
}

/// The kernel's rules for the list itself — at most [`KEXEC_SEGMENT_MAX`] segments, each page
/// aligned with its bytes fitting its memsz and its end an address, none overlapping another —
/// with `name(i)` naming segment `i` in the message. The one place these rules live: the
/// planner adds its own (RAM, reserved ranges) on top.
pub fn check_list(segments: &[SegmentSpec<'_>], name: &dyn Fn(usize) -> String) -> Result<()> {
    let bad = |msg: String| Err(Error::InvalidSegments(msg));
    if segments.len() > KEXEC_SEGMENT_MAX {
        return bad(format!(
            "{} segments, the kernel accepts at most {KEXEC_SEGMENT_MAX}",
            segments.len()
        ));
    }
    let mut ranges = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        if !s.mem.is_multiple_of(PAGE_SIZE) || !s.memsz.is_multiple_of(PAGE_SIZE) {
            return bad(format!(
                "{}: destination {:#x}+{:#x} is not page aligned",
                name(i),
                s.mem,
                s.memsz
            ));
        }
        let bufsz = s.data.len() as u64;
        if bufsz > s.memsz {
            return bad(format!(
                "{}: {bufsz:#x} bytes do not fit its memsz {:#x}",
                name(i),
                s.memsz
            ));
        }
        let Some(end) = s.mem.checked_add(s.memsz) else {
            return bad(format!(
                "{}: {:#x}+{:#x} overflows",
                name(i),
                s.mem,
                s.memsz
            ));
        };
        if usize::try_from(end).is_err() {
            return bad(format!("{}: end {end:#x} does not fit an address", name(i)));
        }
        ranges.push((s.mem, end, i));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if let [(_, a_end, a), (b_start, _, b)] = w {
            if b_start < a_end {
                return bad(format!("{} and {} overlap", name(*a), name(*b)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(data: &[u8], mem: u64, memsz: u64) -> SegmentSpec<'_> {
        SegmentSpec { data, mem, memsz }
    }

    #[test]
    fn validate_accepts_a_sane_plan() {
        let a = vec![0u8; 5000];
        let b = vec![0u8; 10];
        let segs = [seg(&a, 0x100_0000, 0x2000), seg(&b, 0x9000, 0x1000)];
        validate_segments(0x100_0000, &segs).unwrap();
    }

    #[test]
    fn validate_rejects_each_kernel_rule() {
        let d = vec![0u8; 0x1001];
        let cases: Vec<(u64, Vec<SegmentSpec<'_>>, &str)> = vec![
            (0, vec![], "no segments"),
            (
                0x1000,
                vec![seg(&d[..1], 0x1800, 0x1000)],
                "not page aligned",
            ),
            (
                0x1000,
                vec![seg(&d[..1], 0x1000, 0x800)],
                "not page aligned",
            ),
            (0x1000, vec![seg(&d, 0x1000, 0x1000)], "do not fit"),
            (
                0x1000,
                vec![seg(&d[..1], 0x1000, 0x2000), seg(&d[..1], 0x2000, 0x1000)],
                "overlap",
            ),
            (0x5000, vec![seg(&d[..1], 0x1000, 0x1000)], "entry"),
            (0x1000, vec![seg(&d[..1], !0xfff, 0x2000)], "overflows"),
        ];
        for (entry, segs, want) in cases {
            let err = validate_segments(entry, &segs).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        let many: Vec<_> = (0..17).map(|i| seg(&d[..1], i * 0x1000, 0x1000)).collect();
        let err = validate_segments(0, &many).unwrap_err().to_string();
        assert!(err.contains("at most 16"), "{err}");
    }
}
