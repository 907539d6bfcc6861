use super::*;

/// xorshift64: cheap deterministic pseudo-random numbers for the mutation tests of the image
/// parsers (a stand-in for fuzzing that runs in every `cargo test`).
pub(crate) struct XorShift(pub u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{FIXTURES}/{name}");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The compressed stream (without the appended size) and the size, cut
/// out of a fixture bzImage by hand so this module is tested on its own.
fn fixture_stream(c: Compression) -> (Vec<u8>, usize) {
    let image = fixture(&format!("bzImage-tiny.{c}"));
    let le32 = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap()) as usize;
    let start = (usize::from(image[0x1f1]) + 1) * 512 + le32(0x248);
    let payload = &image[start..start + le32(0x24c)];
    let size = u32::from_le_bytes(payload[payload.len() - 4..].try_into().unwrap()) as usize;
    let stream = if c.has_appended_size() {
        &payload[..payload.len() - 4]
    } else {
        payload
    };
    (stream.to_vec(), size)
}

#[test]
fn every_format_round_trips_to_the_elf() {
    let elf = fixture("vmlinux-tiny.elf");
    for c in Compression::ALL {
        let (stream, size) = fixture_stream(c);
        assert_eq!(size, elf.len(), "{c}: size trailer");
        assert_eq!(detect(&stream), Some(c), "{c}: detection");
        let out = decompress(Path::new("fixture"), c, &stream, Some(size))
            .unwrap_or_else(|e| panic!("{c}: {e}"));
        assert!(out == elf, "{c}: output differs from vmlinux-tiny.elf");
        // Without a size hint the result is the same.
        let out = decompress(Path::new("fixture"), c, &stream, None).unwrap();
        assert!(out == elf, "{c}: output (no size hint) differs");
    }
}

#[test]
fn detect_rejects_non_magic() {
    assert_eq!(detect(b""), None);
    assert_eq!(detect(b"\x7fELF\x02\x01\x01"), None);
    assert_eq!(detect(b"BZh0"), None);
    assert_eq!(detect(b"BZh"), None);
    assert_eq!(detect(&[0x1f, 0x8b]), None);
    assert_eq!(detect(&[0x02, 0x21, 0x4c]), None);
    assert_eq!(detect(&[0x89, b'L', b'Z', b'O']), None);
}

#[test]
fn flipped_byte_in_a_checksummed_format_is_an_error() {
    // gzip (CRC32), bzip2 (block CRC), xz (CRC32 check), lzop (Adler-32),
    // zstd (content checksum). Flip a byte in the middle of the data.
    for c in [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Xz,
        Compression::Lzo,
        Compression::Zstd,
    ] {
        let (mut stream, size) = fixture_stream(c);
        let mid = stream.len() / 2;
        stream[mid] ^= 0x55;
        let err = decompress(Path::new("fixture"), c, &stream, Some(size));
        assert!(
            matches!(err, Err(Error::Decompress { compression, .. }) if compression == c),
            "{c}: corrupt stream accepted: {err:?}"
        );
    }
}

#[test]
fn truncated_stream_is_an_error_in_every_format() {
    for c in Compression::ALL {
        let (stream, size) = fixture_stream(c);
        let cut = &stream[..stream.len() * 2 / 3];
        let err = decompress(Path::new("fixture"), c, cut, Some(size));
        assert!(
            matches!(err, Err(Error::Decompress { .. })),
            "{c}: truncated stream accepted: {err:?}"
        );
    }
}

#[test]
fn size_mismatch_is_reported_both_ways() {
    let elf_len = fixture("vmlinux-tiny.elf").len();
    for c in Compression::ALL {
        let (stream, _) = fixture_stream(c);
        for wrong in [elf_len - 1, elf_len + 1, 16] {
            let err = decompress(Path::new("k"), c, &stream, Some(wrong)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("size trailer"), "{c}/{wrong}: {msg}");
        }
    }
}

#[test]
fn absurd_size_trailer_is_refused_before_decoding() {
    let (stream, _) = fixture_stream(Compression::Zstd);
    let err = decompress(
        Path::new("k"),
        Compression::Zstd,
        &stream,
        Some(MAX_OUTPUT + 1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn trailing_garbage_after_the_stream_is_an_error() {
    for c in Compression::ALL {
        let (mut stream, size) = fixture_stream(c);
        stream.extend_from_slice(&[1, 2, 3, 4]);
        match decompress(Path::new("k"), c, &stream, Some(size)) {
            // The LZ4 legacy frame has no end marker: the extra bytes
            // are read as the next block's header, which is invalid.
            Err(e) if c == Compression::Lz4 => {
                assert!(e.to_string().contains("LZ4 block 1"), "{e}")
            }
            Err(e) => assert!(e.to_string().contains("unexpected bytes"), "{c}: {e}"),
            Ok(_) => panic!("{c}: trailing bytes accepted"),
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn lzop_multi_block_with_crc32() {
    // lzop -9 --crc32 of 600000 bytes: three 256 KiB blocks.
    let stream = fixture("pattern-600k.lzo");
    let flags = u32::from_be_bytes(stream[0x11..0x15].try_into().unwrap());
    assert_ne!(flags & F_CRC32_D, 0, "fixture should use CRC32 checks");
    let out = decompress(Path::new("p"), Compression::Lzo, &stream, Some(600_000)).unwrap();
    assert!(out == pattern(600_000));
}

#[test]
fn lz4_legacy_multi_block_and_concatenated_frames() {
    // Built here because a multi-block legacy file (> 8 MiB input) is too
    // big to check in; the block codec is lz4_flex's own, what is tested
    // is the legacy framing.
    let data = pattern(LZ4_LEGACY_BLOCK * 2 + 12345);
    let mut stream = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    for (i, chunk) in data.chunks(LZ4_LEGACY_BLOCK).enumerate() {
        if i == 2 {
            // A second frame, as `cat a.lz4 b.lz4` would give.
            stream.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
        }
        let block = lz4_flex::block::compress(chunk);
        stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
        stream.extend_from_slice(&block);
    }
    let out = decompress(Path::new("p"), Compression::Lz4, &stream, Some(data.len())).unwrap();
    assert!(out == data);
    // A block length pointing past the end of the input.
    let mut bad = stream.clone();
    bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decompress(Path::new("p"), Compression::Lz4, &bad, None).is_err());
}

#[test]
fn output_is_capped_without_a_size_hint_too() {
    // A small stream that expands past `expected_len` must be stopped at
    // the cap, not decoded to the end.
    let stream = fixture("pattern-600k.lzo");
    let err = decompress(Path::new("p"), Compression::Lzo, &stream, Some(1000)).unwrap_err();
    assert!(
        err.to_string().contains("more than the 1000 bytes"),
        "{err}"
    );
}

#[test]
fn adler32_matches_known_values() {
    // Reference values of the Adler-32 definition (RFC 1950).
    assert_eq!(adler32(b""), 1);
    assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    let big = pattern(100_000);
    // The definition, computed naively.
    let (mut a, mut b) = (1u64, 0u64);
    for &x in &big {
        a = (a + u64::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!(adler32(&big), ((b << 16) | a) as u32);
}

#[test]
fn corrupt_inputs_never_panic() {
    // Deterministic byte mutations over every fixture stream: each must
    // decode or fail cleanly. (A cheap stand-in for fuzzing.)
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut rnd = || rng.next();
    for c in Compression::ALL {
        let (stream, size) = fixture_stream(c);
        for _ in 0..300 {
            let mut s = stream.clone();
            for _ in 0..=(rnd() % 4) {
                let i = (rnd() as usize) % s.len();
                s[i] = rnd() as u8;
            }
            let cut = s.len() - (rnd() as usize % 8).min(s.len());
            let _ = decompress(Path::new("m"), c, &s[..cut], Some(size));
            let _ = decompress(Path::new("m"), c, &s, None);
        }
    }
}
