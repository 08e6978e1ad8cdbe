//! A deliberately small DER writer (and an even smaller reader) for the certificates we issue.
//!
//! Why our own: the devtrust identity attributes live under the UUID arc
//! `2.25.112976937590999683324659271999942156561` (X.667). That arc does not fit in the `u64`
//! arcs of rcgen's `CustomDnType` nor in the `u32` arcs of `const-oid`, but it fits in a `u128`
//! (every UUID does), so [`oid`] takes `u128` arcs and encodes them base-128 (X.690 §8.19).
//!
//! Everything here writes DER (X.690 §10): definite, minimal lengths; minimal INTEGERs; BIT
//! STRINGs of named bits without trailing zero bits; times per RFC 5280 §4.1.2.5.

use time::{OffsetDateTime, UtcOffset};

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;

/// Context-specific, constructed, `[n]` (EXPLICIT tagging).
pub(crate) const fn explicit(n: u8) -> u8 {
    0xa0 | n
}

/// Context-specific, primitive, `[n]` (IMPLICIT tagging of a primitive type).
pub(crate) const fn implicit(n: u8) -> u8 {
    0x80 | n
}

/// Appends a DER length (X.690 §8.1.3: short form below 128, else minimal long form).
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Fits in 7 bits, checked just above.
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = &bytes[skip..];
    // At most size_of::<usize>() bytes, far below 127.
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

/// One TLV with the given tag and content.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A constructed TLV whose content is the concatenation of `parts`.
pub(crate) fn cons(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    push_len(&mut out, len);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    cons(TAG_SEQUENCE, parts)
}

pub(crate) fn set(parts: &[&[u8]]) -> Vec<u8> {
    cons(TAG_SET, parts)
}

/// The *content* octets of an OBJECT IDENTIFIER (X.690 §8.19), arcs as `u128`.
///
/// Returns `None` for fewer than two arcs or an invalid first pair (first arc > 2, or second
/// arc > 39 under arcs 0 and 1). The OIDs we write are constants built with [`base128`] at
/// compile time; this general form checks them in tests.
#[cfg(test)]
pub(crate) fn oid_content(arcs: &[u128]) -> Option<Vec<u8>> {
    let (&first, rest) = arcs.split_first()?;
    let (&second, rest) = rest.split_first()?;
    if first > 2 || (first < 2 && second > 39) {
        return None;
    }
    let mut out = Vec::new();
    for arc in
        std::iter::once(first.checked_mul(40)?.checked_add(second)?).chain(rest.iter().copied())
    {
        let (buf, start) = base128(arc);
        out.extend_from_slice(&buf[start..]);
    }
    Some(out)
}

/// A full OBJECT IDENTIFIER TLV from already-encoded content octets.
pub(crate) fn oid(content: &[u8]) -> Vec<u8> {
    tlv(TAG_OID, content)
}

/// Septets needed for any `u128`: ceil(128 / 7).
pub(crate) const BASE128_MAX: usize = 19;

/// One OID arc in base 128, big-endian, high bit set on every octet but the last, no leading
/// 0x80 (X.690 §8.19.2). The encoding is `buf[start..]`.
pub(crate) const fn base128(mut value: u128) -> ([u8; BASE128_MAX], usize) {
    let mut buf = [0u8; BASE128_MAX];
    let mut i = BASE128_MAX;
    loop {
        i -= 1;
        // Masked to 7 bits.
        let septet = (value & 0x7f) as u8;
        buf[i] = if i == BASE128_MAX - 1 {
            septet
        } else {
            septet | 0x80
        };
        value >>= 7;
        if value == 0 {
            break;
        }
    }
    (buf, i)
}

/// A non-negative INTEGER from big-endian magnitude bytes (X.690 §8.3: minimal two's
/// complement, so strip leading zeros and add one back when the high bit is set).
pub(crate) fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let m = &magnitude[skip..];
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(m);
    tlv(TAG_INTEGER, &content)
}

pub(crate) fn small_uint(v: u64) -> Vec<u8> {
    uint(&v.to_be_bytes())
}

pub(crate) fn boolean(v: bool) -> Vec<u8> {
    tlv(TAG_BOOLEAN, &[if v { 0xff } else { 0x00 }])
}

pub(crate) fn octet_string(content: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, content)
}

pub(crate) fn utf8_string(s: &str) -> Vec<u8> {
    tlv(TAG_UTF8_STRING, s.as_bytes())
}

/// A BIT STRING holding whole octets (no unused bits), e.g. a public key or signature.
pub(crate) fn bit_string_octets(content: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(content.len() + 1);
    c.push(0);
    c.extend_from_slice(content);
    tlv(TAG_BIT_STRING, &c)
}

/// A BIT STRING of named bits (bit 0 is the most significant bit of the first octet).
/// DER (X.690 §11.2.2) drops trailing zero bits, so the unused-bits count follows the lowest
/// set bit.
pub(crate) fn named_bits(bits: &[u8]) -> Vec<u8> {
    let Some(&max) = bits.iter().max() else {
        return tlv(TAG_BIT_STRING, &[0]);
    };
    let nbytes = usize::from(max / 8) + 1;
    let mut content = vec![0u8; nbytes + 1];
    for &bit in bits {
        content[1 + usize::from(bit / 8)] |= 0x80 >> (bit % 8);
    }
    content[0] = 7 - (max % 8);
    tlv(TAG_BIT_STRING, &content)
}

/// An X.509 `Time` (RFC 5280 §4.1.2.5): UTCTime for years 1950 through 2049, GeneralizedTime
/// otherwise, always UTC (`Z`) with whole seconds. Returns `None` for years outside 0..=9999.
pub(crate) fn x509_time(t: OffsetDateTime) -> Option<Vec<u8>> {
    let t = t.to_offset(UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let rest = format!(
        "{:02}{:02}{:02}{:02}{:02}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    Some(if (1950..2050).contains(&year) {
        tlv(
            TAG_UTC_TIME,
            format!("{:02}{rest}", year.rem_euclid(100)).as_bytes(),
        )
    } else {
        tlv(TAG_GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes())
    })
}

/// Reads one DER TLV from the front of `input`: `(tag, content, rest)`.
///
/// Only single-octet tags and definite, minimal lengths are accepted (DER).
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-octet tags never occur in what we read
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > std::mem::size_of::<usize>() || input.len() < n {
            return None; // indefinite length or absurd
        }
        let (len_bytes, after) = input.split_at(n);
        if len_bytes[0] == 0 {
            return None; // not minimal
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None; // should have used the short form
        }
        input = after;
        len
    };
    if input.len() < len {
        return None;
    }
    let (content, rest) = input.split_at(len);
    Some((tag, content, rest))
}

/// Reads one TLV and insists on its tag.
pub(crate) fn expect_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = read_tlv(input)?;
    (t == tag).then_some((content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn lengths_are_minimal() {
        assert_eq!(tlv(0x04, &[1; 5])[..2], [0x04, 5]);
        assert_eq!(tlv(0x04, &[0; 127])[..2], [0x04, 127]);
        assert_eq!(tlv(0x04, &[0; 128])[..3], [0x04, 0x81, 128]);
        assert_eq!(tlv(0x04, &[0; 256])[..4], [0x04, 0x82, 1, 0]);
        assert_eq!(tlv(0x04, &[0; 70000])[..5], [0x04, 0x83, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn reader_round_trips_and_rejects_non_der_lengths() {
        for n in [0usize, 1, 127, 128, 255, 256, 70000] {
            let mut enc = tlv(0x30, &vec![7; n]);
            enc.extend_from_slice(&[9, 9]);
            let (tag, content, rest) = read_tlv(&enc).unwrap();
            assert_eq!((tag, content.len(), rest), (0x30, n, &[9u8, 9][..]));
        }
        assert!(read_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none()); // long form for 5
        assert!(read_tlv(&[0x04, 0x82, 0x00, 0x81]).is_none()); // leading zero
        assert!(read_tlv(&[0x30, 0x80, 0, 0]).is_none()); // indefinite
        assert!(read_tlv(&[0x04, 3, 1, 2]).is_none()); // truncated
        assert!(read_tlv(&[]).is_none());
    }

    #[test]
    fn oid_small_arcs() {
        // 1.2.840.10045.4.3.2 ecdsa-with-SHA256
        assert_eq!(
            oid(&oid_content(&[1, 2, 840, 10045, 4, 3, 2]).unwrap()),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        );
        // 2.5.4.3 commonName
        assert_eq!(
            oid(&oid_content(&[2, 5, 4, 3]).unwrap()),
            [0x06, 0x03, 0x55, 0x04, 0x03]
        );
        // First pair above 127 under arc 2 needs base-128 too: 2.999.3 (X.690 example).
        assert_eq!(oid_content(&[2, 999, 3]).unwrap(), [0x88, 0x37, 0x03]);
        assert!(oid_content(&[1]).is_none());
        assert!(oid_content(&[3, 1]).is_none());
        assert!(oid_content(&[1, 40]).is_none());
    }

    #[test]
    fn oid_uuid_arc_matches_openssl() {
        // `openssl asn1parse -genstr 'OID:2.25.112976937590999683324659271999942156561.3.1'`
        let expected = hex::decode("06166981a9fec8c583d3c2affda5b2b2bbf1eae7c2110301").unwrap();
        let got =
            oid(&oid_content(&[2, 25, 112976937590999683324659271999942156561, 3, 1]).unwrap());
        assert_eq!(got, expected);
        // The largest UUID arc still fits.
        let max = oid_content(&[2, 25, u128::MAX]).unwrap();
        assert_eq!(max.len(), 1 + 19);
        assert_eq!(max[1], 0x83); // 128 bits = 2 bits + 18 * 7 bits
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(uint(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(uint(&[0, 0]), [0x02, 0x01, 0x00]);
        assert_eq!(uint(&[0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(uint(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0, 0, 0x01, 0x00]), [0x02, 0x02, 0x01, 0x00]);
        assert_eq!(small_uint(2), [0x02, 0x01, 0x02]);
    }

    #[test]
    fn named_bits_drop_trailing_zeros() {
        // digitalSignature only: 03 02 07 80
        assert_eq!(named_bits(&[0]), [0x03, 0x02, 0x07, 0x80]);
        // digitalSignature + keyCertSign + cRLSign: 03 02 01 86
        assert_eq!(named_bits(&[0, 5, 6]), [0x03, 0x02, 0x01, 0x86]);
        // decipherOnly (bit 8) spills into a second octet
        assert_eq!(named_bits(&[0, 8]), [0x03, 0x03, 0x07, 0x80, 0x80]);
        assert_eq!(named_bits(&[]), [0x03, 0x01, 0x00]);
    }

    #[test]
    fn times_follow_rfc5280() {
        assert_eq!(
            x509_time(datetime!(2049-12-31 23:59:59 UTC)).unwrap(),
            tlv(TAG_UTC_TIME, b"491231235959Z")
        );
        assert_eq!(
            x509_time(datetime!(2050-01-01 00:00:00 UTC)).unwrap(),
            tlv(TAG_GENERALIZED_TIME, b"20500101000000Z")
        );
        assert_eq!(
            x509_time(datetime!(1950-01-01 00:00:00 UTC)).unwrap(),
            tlv(TAG_UTC_TIME, b"500101000000Z")
        );
        assert_eq!(
            x509_time(datetime!(1949-12-31 23:59:59 UTC)).unwrap(),
            tlv(TAG_GENERALIZED_TIME, b"19491231235959Z")
        );
        // Offsets are converted to UTC, fractions dropped.
        assert_eq!(
            x509_time(datetime!(2026-01-01 01:30:00.75 +01:00)).unwrap(),
            tlv(TAG_UTC_TIME, b"260101003000Z")
        );
        assert!(x509_time(datetime!(-0001-01-01 00:00 UTC)).is_none());
    }
}
