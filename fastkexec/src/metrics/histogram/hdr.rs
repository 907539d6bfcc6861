//! Histograms in HdrHistogram's V2 deflate encoding, base64: written for other tools, read
//! back with every header checked before anything is allocated.

use super::*;

/// The V2 deflate encoding of `h`, base64: the form every HdrHistogram implementation reads
/// (interval logs, `HdrHistogram.decode` in Python, `Histogram.decodeFromCompressedByteBuffer`).
pub fn encode_histogram(h: &Histogram<u64>, what: &str) -> Result<String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| Error::HistogramEncode {
            what: what.to_string(),
            problem: format!("{e:?}"),
        })?;
    Ok(BASE64.encode(buf))
}

/// Reverses `encode_histogram` for histograms of our shape (1 ns..=`MAX_DURATION_NS`, 3 digits).
///
/// The headers are checked before the histogram is built, with every size bounded: a damaged
/// length or range must not make the decoder allocate gigabytes.
pub fn decode_histogram(b64: &str) -> std::result::Result<Histogram<u64>, String> {
    pub(super) const COMPRESSED_COOKIE: u32 = 0x1c84_9314;
    pub(super) const COOKIE: u32 = 0x1c84_9313;
    pub(super) const HEADER: usize = 40;
    // Our ~38k buckets take at most 9 bytes each as varints.
    pub(super) const MAX_INNER: u64 = 1 << 20;
    let be32 = |b: &[u8], at: usize| -> Option<u32> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes(s.try_into().ok()?))
    };
    let be64 = |b: &[u8], at: usize| -> Option<u64> {
        let s = b.get(at..at.checked_add(8)?)?;
        Some(u64::from_be_bytes(s.try_into().ok()?))
    };
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|e| format!("not base64: {e}"))?;
    if be32(&bytes, 0) != Some(COMPRESSED_COOKIE) {
        return Err("not a V2 compressed HdrHistogram (cookie)".into());
    }
    let len = be32(&bytes, 4).ok_or("truncated header")? as usize;
    let deflated = bytes
        .get(8..8usize.saturating_add(len))
        .ok_or("shorter than its length field")?;
    let mut inner = Vec::new();
    flate2::read::ZlibDecoder::new(deflated)
        .take(MAX_INNER + 1)
        .read_to_end(&mut inner)
        .map_err(|e| format!("bad zlib stream: {e}"))?;
    if inner.len() as u64 > MAX_INNER {
        return Err(format!("decompresses to more than {MAX_INNER} bytes"));
    }
    let payload = be32(&inner, 4).ok_or("truncated V2 header")? as usize;
    let digits = be32(&inner, 12).ok_or("truncated V2 header")?;
    let low = be64(&inner, 16).ok_or("truncated V2 header")?;
    let high = be64(&inner, 24).ok_or("truncated V2 header")?;
    if be32(&inner, 0) != Some(COOKIE) || HEADER.checked_add(payload) != Some(inner.len()) {
        return Err("inner V2 header damaged (cookie or payload length)".into());
    }
    if digits != u32::from(SIGNIFICANT_DIGITS)
        || low != 1
        || !(MAX_DURATION_NS..=MAX_DURATION_NS.saturating_mul(2)).contains(&high)
    {
        return Err(format!(
            "range 1..={MAX_DURATION_NS} ns at {SIGNIFICANT_DIGITS} digits expected, found \
             {low}..={high} at {digits}"
        ));
    }
    Deserializer::new()
        .deserialize(&mut inner.as_slice())
        .map_err(|e| format!("not a V2 HdrHistogram: {e:?}"))
}
