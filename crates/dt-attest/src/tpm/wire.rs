//! Bounds-checked reading of TPM 2.0 marshalled data (TPM 2.0 Library Part 2, §5 "Data
//! Types": big-endian integers, `TPM2B_*` = `u16` size then that many bytes).
//!
//! Every read either returns the bytes it promised or a [`StructureError`]; nothing here
//! indexes a slice directly, so no input can make a parser panic.

use super::error::{Structure, StructureError, StructureErrorKind};

/// A cursor over untrusted bytes. `structure` names what is being parsed, for errors.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    structure: Structure,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], structure: Structure) -> Self {
        Self {
            buf,
            pos: 0,
            structure,
        }
    }

    pub(crate) fn err(&self, kind: StructureErrorKind) -> StructureError {
        StructureError {
            structure: self.structure,
            kind,
        }
    }

    pub(crate) fn bad_value(&self, field: &'static str, value: u32) -> StructureError {
        self.err(StructureErrorKind::BadValue { field, value })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes exactly `n` bytes.
    pub(crate) fn take(
        &mut self,
        field: &'static str,
        n: usize,
    ) -> Result<&'a [u8], StructureError> {
        let end = self.pos.checked_add(n).ok_or_else(|| {
            self.err(StructureErrorKind::Truncated {
                field,
                needed: n,
                remaining: self.remaining(),
            })
        })?;
        match self.buf.get(self.pos..end) {
            Some(bytes) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(self.err(StructureErrorKind::Truncated {
                field,
                needed: n,
                remaining: self.remaining(),
            })),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], StructureError> {
        let bytes = self.take(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, StructureError> {
        Ok(u8::from_be_bytes(self.array::<1>(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, StructureError> {
        Ok(u16::from_be_bytes(self.array::<2>(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, StructureError> {
        Ok(u32::from_be_bytes(self.array::<4>(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, StructureError> {
        Ok(u64::from_be_bytes(self.array::<8>(field)?))
    }

    /// A `TPM2B_*`: `u16` size, then the buffer. `max` is the largest size the structure's
    /// union allows (Part 2 gives each `TPM2B` a `sizeof(...)` bound); larger is rejected
    /// before anything is read.
    pub(crate) fn tpm2b(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], StructureError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(self.err(StructureErrorKind::TooLarge { field, size, max }));
        }
        self.take(field, size)
    }

    /// Everything must have been consumed: trailing bytes make the encoding ambiguous (two
    /// different byte strings would name the same object), so they are an error.
    pub(crate) fn finish(self) -> Result<(), StructureError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.err(StructureErrorKind::TrailingBytes(n))),
        }
    }
}

/// Appends a `TPM2B`: `u16` size then the bytes. Callers only pass buffers they built and
/// bounded themselves (digests, ECC coordinates, RSA ciphertexts).
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StructureError> {
    let size = u16::try_from(bytes.len()).map_err(|_| StructureError {
        structure: Structure::Output,
        kind: StructureErrorKind::TooLarge {
            field: "tpm2b",
            size: bytes.len(),
            max: usize::from(u16::MAX),
        },
    })?;
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// If `bytes` is a `TPM2B_*` wrapper whose size covers exactly the rest, returns the inner
/// bytes. Used where both the bare structure and its `TPM2B` form are accepted; the two are
/// unambiguous because the bare structures start with a tag (type, magic) that can never equal
/// `len - 2` for an input long enough to be valid.
pub(crate) fn strip_tpm2b(bytes: &[u8]) -> Option<&[u8]> {
    let (size, rest) = bytes.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*size)) == rest.len()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_reads_fail_without_panicking() {
        let mut r = Reader::new(&[0x00, 0x05, 1, 2], Structure::Public);
        let err = r.tpm2b("unique", 64).unwrap_err();
        assert!(matches!(
            err.kind,
            StructureErrorKind::Truncated {
                needed: 5,
                remaining: 2,
                ..
            }
        ));
        let mut r = Reader::new(&[], Structure::Public);
        assert!(r.u64("x").is_err());
        assert!(r.take("x", usize::MAX).is_err());
    }

    #[test]
    fn oversized_tpm2b_is_rejected_before_reading() {
        let mut r = Reader::new(&[0xff, 0xff], Structure::Public);
        let err = r.tpm2b("authPolicy", 64).unwrap_err();
        assert!(matches!(
            err.kind,
            StructureErrorKind::TooLarge {
                size: 65535,
                max: 64,
                ..
            }
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut r = Reader::new(&[0, 1, 9], Structure::Public);
        r.u16("x").unwrap();
        assert!(matches!(
            r.finish().unwrap_err().kind,
            StructureErrorKind::TrailingBytes(1)
        ));
    }

    #[test]
    fn strip_tpm2b_only_when_size_matches() {
        assert_eq!(strip_tpm2b(&[0, 2, 7, 8]), Some(&[7u8, 8][..]));
        assert_eq!(strip_tpm2b(&[0, 3, 7, 8]), None);
        assert_eq!(strip_tpm2b(&[0]), None);
    }
}
