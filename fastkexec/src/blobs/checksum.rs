//! The purgatory's checksum, computed on the host in pieces and fast: [`purgatory::checksum`]
//! (the verify table, the staged header) and a staged load's full sums and `exec`'s read-back
//! all go through [`Checksum`].
//!
//! A staged load sums every byte it staged (~90 MB with a server's initrd) for the record
//! `exec` checks against, and `exec` sums them again as it reads them back. The plain loop
//! carries `b` on `a` word by word: one long dependency chain, ~600 ms of a staged load under
//! TCG. The same value comes from [`LANES`] independent running sums per lane, folded once
//! per piece (below), which the compiler turns into vector adds.

use crate::blobs::purgatory;

/// Words summed side by side.
const LANES: usize = 8;

/// The purgatory's checksum fed in pieces: every piece but the last a multiple of 8 bytes.
#[derive(Clone, Copy, Debug)]
pub struct Checksum {
    a: u64,
    b: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Self {
        Self {
            a: purgatory::CHECKSUM_SEED,
            b: 0,
        }
    }

    /// Per word `w`: `a += w; b += a`. Over `n` groups of `LANES` words, lane `j` keeps `s[j]`,
    /// the sum of its words, and `t[j]`, the sum of `s[j]` as it stood before each group. Each
    /// group adds `LANES·a + Σ (LANES − j)·w[j]` to `b` (`a` as the group starts), so over all
    /// groups `b` grows by `LANES·(n·a₀ + Σ t) + Σ (LANES − j)·s[j]` and `a` by `Σ s`
    /// (all modulo 2⁶⁴, as the reference). The tail (< one group) goes word by word.
    pub fn update(&mut self, data: &[u8]) {
        let mut groups = data.chunks_exact(8 * LANES);
        let mut s = [0u64; LANES];
        let mut t = [0u64; LANES];
        let mut n = 0u64;
        for g in &mut groups {
            for (j, w) in g.chunks_exact(8).enumerate() {
                t[j] = t[j].wrapping_add(s[j]);
                s[j] = s[j].wrapping_add(word(w));
            }
            n += 1;
        }
        let mut t_sum = 0u64;
        let mut s_sum = 0u64;
        let mut weighted = 0u64;
        for j in 0..LANES {
            t_sum = t_sum.wrapping_add(t[j]);
            s_sum = s_sum.wrapping_add(s[j]);
            weighted = weighted.wrapping_add(s[j].wrapping_mul((LANES - j) as u64));
        }
        self.b = self
            .b
            .wrapping_add((LANES as u64).wrapping_mul(n.wrapping_mul(self.a).wrapping_add(t_sum)))
            .wrapping_add(weighted);
        self.a = self.a.wrapping_add(s_sum);
        for w in groups.remainder().chunks(8) {
            self.a = self.a.wrapping_add(word(w));
            self.b = self.b.wrapping_add(self.a);
        }
    }

    /// `bytes` (a multiple of 8) of zeros, without touching memory: `a` stays, `b` grows by
    /// `a` per word.
    pub fn zeros(&mut self, bytes: u64) {
        self.b = self.b.wrapping_add(self.a.wrapping_mul(bytes / 8));
    }

    pub fn finish(self) -> u64 {
        self.a ^ self.b.rotate_left(32)
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded (the purgatory's rule for the tail).
fn word(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..w.len()].copy_from_slice(w);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that are not all alike (xorshift), so a misplaced weight shows.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The definition, word by word (the purgatory's asm is held to it in
    /// `blobs::purgatory`'s tests).
    fn reference(data: &[u8]) -> u64 {
        let mut a = purgatory::CHECKSUM_SEED;
        let mut b = 0u64;
        for w in data.chunks(8) {
            a = a.wrapping_add(word(w));
            b = b.wrapping_add(a);
        }
        a ^ b.rotate_left(32)
    }

    fn fast(data: &[u8]) -> u64 {
        let mut c = Checksum::new();
        c.update(data);
        c.finish()
    }

    #[test]
    fn equals_the_word_by_word_definition_for_every_length_around_the_group_size() {
        for len in 0..(8 * LANES * 3 + 9) {
            let data = noise(len, len as u64 + 7);
            assert_eq!(fast(&data), reference(&data), "length {len}");
        }
        let big = noise(1 << 20 | 13, 99);
        assert_eq!(fast(&big), reference(&big));
        let ones = vec![0xffu8; 8 * LANES * 1000 + 24];
        assert_eq!(fast(&ones), reference(&ones));
    }

    #[test]
    fn pieces_and_zero_fill_give_the_whole_sum() {
        let data = noise(5000, 3);
        for cut in [0usize, 8, 64, 72, 512, 4096, 4992] {
            let mut c = Checksum::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            assert_eq!(c.finish(), reference(&data), "cut at {cut}");
        }
        let mut padded = data.clone();
        padded.resize(5000 + 8 * 37, 0);
        let mut c = Checksum::new();
        c.update(&data);
        c.zeros(8 * 37);
        assert_eq!(c.finish(), reference(&padded));
    }

    #[test]
    fn one_changed_byte_anywhere_changes_the_sum() {
        let data = noise(8 * LANES * 4, 5);
        let whole = fast(&data);
        for at in 0..data.len() {
            let mut d = data.clone();
            d[at] ^= 0x10;
            assert_ne!(fast(&d), whole, "byte {at}");
        }
    }
}
