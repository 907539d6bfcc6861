//! Little-endian fields in byte buffers: the one place the record, the tracer and BTF read
//! and write them. Out-of-range access is `None` (reads) or nothing written (`put`), never a
//! panic: these buffers come from files and other kernels.

/// The `N` bytes at `off`, if `b` holds them.
fn array_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    array_at(b, off).map(u16::from_le_bytes)
}

pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    array_at(b, off).map(u32::from_le_bytes)
}

pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    array_at(b, off).map(u64::from_le_bytes)
}

/// Copies `bytes` to `off` when they fit; returns whether they did.
pub fn put(b: &mut [u8], off: usize, bytes: &[u8]) -> bool {
    match off
        .checked_add(bytes.len())
        .and_then(|end| b.get_mut(off..end))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_little_endian_and_out_of_range_is_none() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 0), Some(0x0201));
        assert_eq!(u32_at(&b, 1), Some(0x0504_0302));
        assert_eq!(u64_at(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(u64_at(&b, 2), None);
        assert_eq!(u32_at(&b, usize::MAX - 1), None);
    }

    #[test]
    fn put_writes_only_what_fits() {
        let mut b = [0u8; 6];
        assert!(put(&mut b, 2, &0xaabb_ccddu32.to_le_bytes()));
        assert_eq!(b, [0, 0, 0xdd, 0xcc, 0xbb, 0xaa]);
        assert!(!put(&mut b, 3, &[1, 2, 3, 4]));
        assert!(!put(&mut b, usize::MAX, &[1]));
        assert_eq!(b, [0, 0, 0xdd, 0xcc, 0xbb, 0xaa]);
    }
}
