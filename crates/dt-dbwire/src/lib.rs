//! Database wire protocols, pure: what a database access point reads from clients it does not
//! trust yet (PostgreSQL's startup phase and messages, MySQL's handshake and commands) and the
//! few messages it writes itself (errors a real `psql` or `mariadb` prints).
//!
//! Why a crate of its own: it parses untrusted bytes, so it is a test boundary (no runtime, no
//! I/O, property-tested, fuzzed), used by the database access point and by `dtsh`'s local
//! tunnels alike.

pub mod mysql;
pub mod pg;

/// Why bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("{what} length {len} is out of bounds")]
    Length { what: &'static str, len: usize },
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("unsupported protocol version {0:#x}")]
    UnsupportedProtocol(u32),
}

/// A bounds-checked reader over a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated("field"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16_be(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32_be(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u16_le(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32_le(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A MySQL length-encoded integer.
    pub(crate) fn lenenc_int(&mut self) -> Result<u64, WireError> {
        Ok(match self.u8()? {
            n @ 0..=0xfa => u64::from(n),
            0xfc => u64::from(self.u16_le()?),
            0xfd => {
                let b = self.take(3)?;
                u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16
            }
            0xfe => {
                let b = self.take(8)?;
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            _ => return Err(WireError::Malformed("length-encoded integer")),
        })
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(WireError::Truncated("string"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| WireError::Malformed("string is not UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string, or the rest when no NUL follows (MySQL's EOF strings).
    pub(crate) fn cstr_or_rest(&mut self) -> Result<&'a str, WireError> {
        if self.buf.contains(&0) {
            self.cstr()
        } else {
            let s = std::str::from_utf8(self.buf)
                .map_err(|_| WireError::Malformed("string is not UTF-8"))?;
            self.buf = &[];
            Ok(s)
        }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }
}
