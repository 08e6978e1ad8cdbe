//! The PostgreSQL frontend/backend protocol (version 3.0), as much as a relaying access point
//! needs: the startup phase (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), the
//! framing of regular messages, the statements a client sends (simple `Query`, extended
//! `Parse`) for audit, and the backend messages it writes itself (`ErrorResponse`, the one
//! byte answers to SSLRequest).
//!
//! Every reader is bounds-checked and returns `Ok(None)` while it needs more bytes, so a
//! caller can feed it a growing buffer; nothing here panics on any input (a property test
//! and the fuzz target `pg_frontend` check it).

use crate::{Reader, WireError};

/// The longest startup packet accepted (PostgreSQL's own `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The longest regular message accepted from a client (1 GiB is PostgreSQL's limit; an
/// access point has no reason to take more than this).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;

/// The 8 bytes of an SSLRequest.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// The backend's answer to SSLRequest: go ahead with TLS.
pub const SSL_ACCEPTED: u8 = b'S';
/// The backend's answer to SSLRequest or GSSENCRequest: not offered.
pub const NOT_OFFERED: u8 = b'N';

/// A message of the startup phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    CancelRequest {
        process_id: u32,
        secret_key: u32,
    },
    Startup {
        protocol: u32,
        params: Vec<(String, String)>,
    },
}

impl Startup {
    /// The value of a startup parameter (`user`, `database`, ...).
    pub fn param(&self, key: &str) -> Option<&str> {
        match self {
            Startup::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Read one startup-phase message from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the message and how many bytes it took.
pub fn read_startup(buf: &[u8]) -> Result<Option<(Startup, usize)>, WireError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let mut r = Reader::new(buf);
    let len = r.u32_be()? as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::Length {
            what: "startup packet",
            len,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut r = Reader::new(&buf[4..len]);
    let code = r.u32_be()?;
    let msg = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if len != 8 => {
            return Err(WireError::Malformed("SSLRequest with a body"));
        }
        SSL_REQUEST_CODE => Startup::SslRequest,
        GSSENC_REQUEST_CODE => Startup::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            let process_id = r.u32_be()?;
            let secret_key = r.u32_be()?;
            r.end()?;
            Startup::CancelRequest {
                process_id,
                secret_key,
            }
        }
        protocol if protocol >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let key = r.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                if params.iter().any(|(k, _)| k == key) {
                    return Err(WireError::Malformed("duplicate startup parameter"));
                }
                params.push((key.to_string(), value.to_string()));
            }
            r.end()?;
            Startup::Startup { protocol, params }
        }
        other => return Err(WireError::UnsupportedProtocol(other)),
    };
    Ok(Some((msg, len)))
}

/// A StartupMessage (protocol 3.0) with these parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// One regular message: its type byte and body (without the length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub tag: u8,
    pub body: &'a [u8],
}

/// Read one regular message (type byte, then a length that counts itself) from the front of
/// `buf`: `Ok(None)` when more bytes are needed, else the message and its whole size.
pub fn read_message(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(WireError::Length {
            what: "message",
            len,
        });
    }
    let total = len + 1;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Message {
            tag,
            body: &buf[5..total],
        },
        total,
    )))
}

/// What a client asks the database to run, for audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// `Query`: the simple protocol (may hold several statements).
    Simple { query: String },
    /// `Parse`: the extended protocol's prepared statement.
    Prepare { name: String, query: String },
}

impl Statement {
    pub fn query(&self) -> &str {
        match self {
            Statement::Simple { query } | Statement::Prepare { query, .. } => query,
        }
    }
}

/// The statement a frontend message carries, if it carries one.
pub fn statement(msg: &Message<'_>) -> Result<Option<Statement>, WireError> {
    let mut r = Reader::new(msg.body);
    match msg.tag {
        b'Q' => {
            let query = r.cstr()?.to_string();
            r.end()?;
            Ok(Some(Statement::Simple { query }))
        }
        b'P' => {
            let name = r.cstr()?.to_string();
            let query = r.cstr()?.to_string();
            let n = r.u16_be()? as usize;
            r.take(
                n.checked_mul(4)
                    .ok_or(WireError::Malformed("parameter count"))?,
            )?;
            r.end()?;
            Ok(Some(Statement::Prepare { name, query }))
        }
        _ => Ok(None),
    }
}

/// The frontend's `Terminate`.
pub const TERMINATE: u8 = b'X';

/// An `ErrorResponse` a client prints: severity (`FATAL`, `ERROR`), SQLSTATE code (e.g.
/// `28000` invalid authorization, `08006` connection failure, `57P01` admin shutdown) and
/// message. `psql` shows it as `FATAL:  message`.
pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        // A NUL inside a field would end it early: drop them.
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

/// The fields of a backend `ErrorResponse` (for tests and for relaying upstream errors).
pub fn parse_error_response(body: &[u8]) -> Result<Vec<(u8, String)>, WireError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    loop {
        let field = r.u8()?;
        if field == 0 {
            r.end()?;
            return Ok(out);
        }
        out.push((field, r.cstr()?.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request_then_startup_in_one_buffer() {
        let mut buf = SSL_REQUEST.to_vec();
        buf.extend(startup_message(&[("user", "alice"), ("database", "main")]));
        let (m, n) = read_startup(&buf).unwrap().unwrap();
        assert_eq!((m, n), (Startup::SslRequest, 8));
        let (m, used) = read_startup(&buf[n..]).unwrap().unwrap();
        assert_eq!(used, buf.len() - 8);
        assert_eq!(m.param("user"), Some("alice"));
        assert_eq!(m.param("database"), Some("main"));
        assert_eq!(m.param("options"), None);
    }

    #[test]
    fn partial_input_asks_for_more_and_bad_lengths_are_refused() {
        let full = startup_message(&[("user", "alice")]);
        for cut in 0..full.len() {
            assert_eq!(read_startup(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        let huge = [0u8, 1, 0, 0, 0, 3, 0, 0];
        assert!(matches!(read_startup(&huge), Err(WireError::Length { .. })));
        // HTTP sent to a PostgreSQL port: a clear protocol error.
        assert!(read_startup(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let mut v2 = startup_message(&[("user", "a")]);
        v2[4..8].copy_from_slice(&0x0002_0000u32.to_be_bytes());
        assert_eq!(
            read_startup(&v2).unwrap_err(),
            WireError::UnsupportedProtocol(0x0002_0000)
        );
    }

    #[test]
    fn duplicate_parameters_and_trailing_bytes_are_malformed() {
        let dup = startup_message(&[("user", "a"), ("user", "b")]);
        assert!(read_startup(&dup).is_err());
        let mut cancel = vec![0, 0, 0, 20];
        cancel.extend(CANCEL_REQUEST_CODE.to_be_bytes());
        cancel.extend([0; 12]);
        assert!(read_startup(&cancel).is_err(), "4 bytes too many");
    }

    #[test]
    fn statements_of_both_protocols() {
        let mut q = vec![b'Q'];
        q.extend(((4 + 9) as u32).to_be_bytes());
        q.extend(b"select 1\0");
        let (m, n) = read_message(&q).unwrap().unwrap();
        assert_eq!(n, q.len());
        assert_eq!(
            statement(&m).unwrap(),
            Some(Statement::Simple {
                query: "select 1".into()
            })
        );
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend(1u16.to_be_bytes());
        body.extend(23u32.to_be_bytes());
        let mut p = vec![b'P'];
        p.extend(((4 + body.len()) as u32).to_be_bytes());
        p.extend(&body);
        let (m, _) = read_message(&p).unwrap().unwrap();
        assert_eq!(statement(&m).unwrap().unwrap().query(), "select $1");
        let sync = [b'S', 0, 0, 0, 4];
        let (m, _) = read_message(&sync).unwrap().unwrap();
        assert_eq!(statement(&m).unwrap(), None);
    }

    #[test]
    fn error_responses_round_trip_without_nuls() {
        let e = error_response("FATAL", "28000", "access denied\0 to db");
        let (m, n) = read_message(&e).unwrap().unwrap();
        assert_eq!((m.tag, n), (b'E', e.len()));
        let fields = parse_error_response(m.body).unwrap();
        assert!(fields.contains(&(b'C', "28000".into())));
        assert!(fields.contains(&(b'M', "access denied to db".into())));
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = read_startup(&bytes);
            if let Ok(Some((m, n))) = read_message(&bytes) {
                proptest::prop_assert!(n <= bytes.len());
                let _ = statement(&m);
                let _ = parse_error_response(m.body);
            }
        }
    }
}
