//! The desktop wire protocol, without I/O: what the browser, the auth service and the desktop
//! access point say to each other (docs/desktops.md has the byte layout).
//!
//! ```text
//! browser            auth service (/web/api/desktop)          desktop access point
//!   WebSocket  ───────▶  web session + CSRF + Origin
//!                        mTLS with the session's certificate ─▶ verify (user CA)
//!                        Open {desktop, login, w, h}  ───────▶ decide (dt-authz), start Xvfb
//!   ◀──────────────────────────────────────────────────────── Hello {w, h, clipboard}
//!   ◀──────────────────────────────────────────────────────── Tile* FrameEnd (repeated)
//!   Key / Pointer / Clipboard / Refresh  ──────────────────▶ XTEST, selections
//!   ◀──────────────────────────────────────────────────────── End {why, message}
//! ```
//!
//! Every message is one WebSocket binary message between the browser and the auth service,
//! and one frame (`u32` big-endian length, then the message) between the auth service and
//! the access point. The first byte is the type. Client messages are small and bounded
//! ([`MAX_CLIENT_MESSAGE`]); a message that does not parse ends the session with
//! [`WireError`]'s text, and the access point keeps serving everyone else.
//!
//! The parser is a bounds-checked reader ([`Reader`]): it never indexes past the end and
//! refuses trailing bytes, so an input that parses has exactly one meaning.

/// Largest message a client (browser or auth service) may send: a clipboard text of
/// [`MAX_CLIPBOARD`] plus its header.
pub const MAX_CLIENT_MESSAGE: usize = MAX_CLIPBOARD + 16;
/// Largest clipboard text, in bytes of UTF-8, either way.
pub const MAX_CLIPBOARD: usize = 64 * 1024;
/// Largest message the access point sends (a tile of [`MAX_TILE`] encoded as PNG is far
/// below this; the bound protects the relaying auth service and the browser).
pub const MAX_SERVER_MESSAGE: usize = 4 * 1024 * 1024;
/// Longest desktop name or login in an `Open`.
pub const MAX_NAME: usize = 255;
/// Screen size bounds (Xvfb's `-screen` accepts these).
pub const MIN_SIZE: u16 = 320;
pub const MAX_SIZE: u16 = 4096;

mod tag {
    pub const OPEN: u8 = 0x01;
    pub const KEY: u8 = 0x02;
    pub const POINTER: u8 = 0x03;
    pub const CLIPBOARD: u8 = 0x04;
    pub const REFRESH: u8 = 0x05;
    pub const HELLO: u8 = 0x81;
    pub const TILE: u8 = 0x82;
    pub const FRAME_END: u8 = 0x83;
    pub const SERVER_CLIPBOARD: u8 = 0x84;
    pub const END: u8 = 0x85;
}

/// What the auth service or the browser sends to the access point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// The first message, from the auth service only: which desktop, as which login, and
    /// the browser's viewport (the X screen's size, clamped to [`MIN_SIZE`]..=[`MAX_SIZE`]).
    Open {
        desktop: String,
        login: String,
        width: u16,
        height: u16,
    },
    /// A key went down or up: an X keysym (what the page maps `KeyboardEvent.key` to).
    Key { keysym: u32, down: bool },
    /// The pointer is at (x, y) with these buttons held (bit 0 = button 1 ... bit 4 = 5;
    /// 4 and 5 are the wheel).
    Pointer { x: u16, y: u16, buttons: u8 },
    /// The browser's clipboard text, to become the desktop's CLIPBOARD selection.
    Clipboard(String),
    /// Send the whole screen again (a fresh canvas).
    Refresh,
}

/// Why a session ended, for the page (which shows `message` either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The session ended normally (the session command exited, the user left).
    Ended = 0,
    /// Access refused at the start (the decision, or a login this host cannot serve).
    Denied = 1,
    /// A lock (or an expired certificate) ended a live session.
    Terminated = 2,
    /// Something broke: the X server died, a malformed message.
    Error = 3,
}

impl EndReason {
    fn from_u8(b: u8) -> Option<EndReason> {
        Some(match b {
            0 => EndReason::Ended,
            1 => EndReason::Denied,
            2 => EndReason::Terminated,
            3 => EndReason::Error,
            _ => return None,
        })
    }
}

/// What the access point sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// The session started: the screen's size, and whether the clipboard is shared.
    Hello {
        width: u16,
        height: u16,
        clipboard: bool,
    },
    /// A changed rectangle of the screen, PNG-encoded.
    Tile {
        x: u16,
        y: u16,
        width: u16,
        height: u16,
        png: Vec<u8>,
    },
    /// The tiles of one capture have all been sent (`seq` counts captures).
    FrameEnd { seq: u32 },
    /// The desktop's CLIPBOARD changed.
    Clipboard(String),
    /// The session is over (or never started); the connection closes after this.
    End { reason: EndReason, message: String },
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes is larger than allowed ({1})")]
    TooLarge(usize, usize),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("truncated {0} message")]
    Truncated(&'static str),
    #[error("{0} message has {1} trailing bytes")]
    Trailing(&'static str, usize),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// A bounds-checked reader over one message.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (b, rest) = self
            .buf
            .split_first()
            .ok_or(WireError::Truncated(self.what))?;
        self.buf = rest;
        Ok(*b)
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (a, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated(self.what))?;
        self.buf = rest;
        Ok(*a)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (a, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(a)
    }
    /// A `u8`-length-prefixed UTF-8 string.
    pub fn short_str(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::NotUtf8(self.what))
    }
    /// The rest of the message as UTF-8.
    pub fn rest_str(&mut self) -> Result<String, WireError> {
        let b = self.rest();
        String::from_utf8(b.to_vec()).map_err(|_| WireError::NotUtf8(self.what))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    /// Nothing may follow.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.what, self.buf.len()))
        }
    }
}

fn check_name(what: &str, s: &str) -> Result<(), WireError> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(WireError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

impl ClientMsg {
    pub fn decode(buf: &[u8]) -> Result<ClientMsg, WireError> {
        if buf.len() > MAX_CLIENT_MESSAGE {
            return Err(WireError::TooLarge(buf.len(), MAX_CLIENT_MESSAGE));
        }
        let (&t, body) = buf.split_first().ok_or(WireError::Empty)?;
        let msg = match t {
            tag::OPEN => {
                let mut r = Reader::new(body, "open");
                let width = r.u16()?;
                let height = r.u16()?;
                let desktop = r.short_str()?;
                let login = r.short_str()?;
                r.finish()?;
                check_name("the desktop name", &desktop)?;
                check_name("the login", &login)?;
                ClientMsg::Open {
                    desktop,
                    login,
                    width,
                    height,
                }
            }
            tag::KEY => {
                let mut r = Reader::new(body, "key");
                let down = match r.u8()? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(WireError::Invalid(format!(
                            "key: down must be 0 or 1, not {other}"
                        )));
                    }
                };
                let keysym = r.u32()?;
                r.finish()?;
                // X11 keysyms are 29 bits (X11 protocol, Appendix A).
                if keysym == 0 || keysym > 0x1fff_ffff {
                    return Err(WireError::Invalid(format!(
                        "key: 0x{keysym:x} is not a keysym"
                    )));
                }
                ClientMsg::Key { keysym, down }
            }
            tag::POINTER => {
                let mut r = Reader::new(body, "pointer");
                let x = r.u16()?;
                let y = r.u16()?;
                let buttons = r.u8()?;
                r.finish()?;
                if buttons & !0x1f != 0 {
                    return Err(WireError::Invalid(format!(
                        "pointer: buttons 0x{buttons:02x} names a button above 5"
                    )));
                }
                ClientMsg::Pointer { x, y, buttons }
            }
            tag::CLIPBOARD => {
                let mut r = Reader::new(body, "clipboard");
                let text = r.rest_str()?;
                if text.len() > MAX_CLIPBOARD {
                    return Err(WireError::TooLarge(text.len(), MAX_CLIPBOARD));
                }
                ClientMsg::Clipboard(text)
            }
            tag::REFRESH => {
                Reader::new(body, "refresh").finish()?;
                ClientMsg::Refresh
            }
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(msg)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ClientMsg::Open {
                desktop,
                login,
                width,
                height,
            } => {
                out.push(tag::OPEN);
                out.extend_from_slice(&width.to_be_bytes());
                out.extend_from_slice(&height.to_be_bytes());
                for s in [desktop, login] {
                    let b = &s.as_bytes()[..s.len().min(MAX_NAME)];
                    out.push(b.len() as u8);
                    out.extend_from_slice(b);
                }
            }
            ClientMsg::Key { keysym, down } => {
                out.push(tag::KEY);
                out.push(u8::from(*down));
                out.extend_from_slice(&keysym.to_be_bytes());
            }
            ClientMsg::Pointer { x, y, buttons } => {
                out.push(tag::POINTER);
                out.extend_from_slice(&x.to_be_bytes());
                out.extend_from_slice(&y.to_be_bytes());
                out.push(*buttons);
            }
            ClientMsg::Clipboard(text) => {
                out.push(tag::CLIPBOARD);
                out.extend_from_slice(text.as_bytes());
            }
            ClientMsg::Refresh => out.push(tag::REFRESH),
        }
        out
    }

    /// The message's name (logs and errors; never its content).
    pub fn name(&self) -> &'static str {
        match self {
            ClientMsg::Open { .. } => "open",
            ClientMsg::Key { .. } => "key",
            ClientMsg::Pointer { .. } => "pointer",
            ClientMsg::Clipboard(_) => "clipboard",
            ClientMsg::Refresh => "refresh",
        }
    }
}

impl ServerMsg {
    pub fn decode(buf: &[u8]) -> Result<ServerMsg, WireError> {
        if buf.len() > MAX_SERVER_MESSAGE {
            return Err(WireError::TooLarge(buf.len(), MAX_SERVER_MESSAGE));
        }
        let (&t, body) = buf.split_first().ok_or(WireError::Empty)?;
        Ok(match t {
            tag::HELLO => {
                let mut r = Reader::new(body, "hello");
                let width = r.u16()?;
                let height = r.u16()?;
                let clipboard = r.u8()? != 0;
                r.finish()?;
                ServerMsg::Hello {
                    width,
                    height,
                    clipboard,
                }
            }
            tag::TILE => {
                let mut r = Reader::new(body, "tile");
                let x = r.u16()?;
                let y = r.u16()?;
                let width = r.u16()?;
                let height = r.u16()?;
                let png = r.rest().to_vec();
                ServerMsg::Tile {
                    x,
                    y,
                    width,
                    height,
                    png,
                }
            }
            tag::FRAME_END => {
                let mut r = Reader::new(body, "frame end");
                let seq = r.u32()?;
                r.finish()?;
                ServerMsg::FrameEnd { seq }
            }
            tag::SERVER_CLIPBOARD => {
                ServerMsg::Clipboard(Reader::new(body, "clipboard").rest_str()?)
            }
            tag::END => {
                let mut r = Reader::new(body, "end");
                let b = r.u8()?;
                let reason = EndReason::from_u8(b)
                    .ok_or_else(|| WireError::Invalid(format!("end: unknown reason {b}")))?;
                let message = r.rest_str()?;
                ServerMsg::End { reason, message }
            }
            other => return Err(WireError::UnknownType(other)),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ServerMsg::Hello {
                width,
                height,
                clipboard,
            } => {
                out.push(tag::HELLO);
                out.extend_from_slice(&width.to_be_bytes());
                out.extend_from_slice(&height.to_be_bytes());
                out.push(u8::from(*clipboard));
            }
            ServerMsg::Tile {
                x,
                y,
                width,
                height,
                png,
            } => {
                out.reserve(9 + png.len());
                out.push(tag::TILE);
                for v in [x, y, width, height] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(png);
            }
            ServerMsg::FrameEnd { seq } => {
                out.push(tag::FRAME_END);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            ServerMsg::Clipboard(text) => {
                out.push(tag::SERVER_CLIPBOARD);
                out.extend_from_slice(text.as_bytes());
            }
            ServerMsg::End { reason, message } => {
                out.push(tag::END);
                out.push(*reason as u8);
                out.extend_from_slice(message.as_bytes());
            }
        }
        out
    }
}

/// The frame header on the auth service ↔ access point link: the message's length.
pub fn frame_header(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

/// Reads one length-prefixed frame of at most `max` bytes. `Ok(None)` at a clean end of
/// stream (before a header).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::Wire(WireError::TooLarge(len, max)));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(FrameError::Io)?;
    Ok(Some(buf))
}

/// Writes one length-prefixed frame.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(&frame_header(msg.len())).await?;
    w.write_all(msg).await?;
    w.flush().await
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(std::io::Error),
    #[error(transparent)]
    Wire(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<ClientMsg> {
        vec![
            ClientMsg::Open {
                desktop: "lab".into(),
                login: "alice".into(),
                width: 1024,
                height: 768,
            },
            ClientMsg::Key {
                keysym: 0xff0d,
                down: true,
            },
            ClientMsg::Pointer {
                x: 10,
                y: 20,
                buttons: 0b101,
            },
            ClientMsg::Clipboard("héllo".into()),
            ClientMsg::Refresh,
        ]
    }

    #[test]
    fn client_messages_round_trip() {
        for m in samples() {
            assert_eq!(ClientMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn server_messages_round_trip() {
        for m in [
            ServerMsg::Hello {
                width: 800,
                height: 600,
                clipboard: true,
            },
            ServerMsg::Tile {
                x: 64,
                y: 128,
                width: 64,
                height: 32,
                png: vec![1, 2, 3],
            },
            ServerMsg::FrameEnd { seq: 7 },
            ServerMsg::Clipboard("x".into()),
            ServerMsg::End {
                reason: EndReason::Terminated,
                message: "lock targeting User:\"alice\" is in force".into(),
            },
        ] {
            assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_client_messages_are_refused_with_what_is_wrong() {
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::Empty),
            (vec![0x7f], WireError::UnknownType(0x7f)),
            (vec![0x81, 0, 1, 0, 1, 1], WireError::UnknownType(0x81)),
            (vec![tag::KEY, 1, 0, 0], WireError::Truncated("key")),
            (
                vec![tag::KEY, 1, 0, 0, 0xff, 0x0d, 9],
                WireError::Trailing("key", 1),
            ),
            (
                vec![tag::KEY, 2, 0, 0, 0xff, 0x0d],
                WireError::Invalid("key: down must be 0 or 1, not 2".into()),
            ),
            (
                vec![tag::KEY, 1, 0xff, 0xff, 0xff, 0xff],
                WireError::Invalid("key: 0xffffffff is not a keysym".into()),
            ),
            (
                vec![tag::POINTER, 0, 1, 0, 1, 0x20],
                WireError::Invalid("pointer: buttons 0x20 names a button above 5".into()),
            ),
            (
                vec![tag::CLIPBOARD, 0xff, 0xfe],
                WireError::NotUtf8("clipboard"),
            ),
            (vec![tag::REFRESH, 0], WireError::Trailing("refresh", 1)),
            (
                vec![tag::OPEN, 4, 0, 3, 0, 5, b'a'],
                WireError::Truncated("open"),
            ),
            (
                vec![tag::OPEN, 4, 0, 3, 0, 0, 1, b'a'],
                WireError::Invalid(
                    "the desktop name must be 1 to 255 bytes without control characters".into(),
                ),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(ClientMsg::decode(&bytes), Err(want), "{bytes:?}");
        }
        let big = ClientMsg::Clipboard("a".repeat(MAX_CLIPBOARD + 1)).encode();
        assert_eq!(
            ClientMsg::decode(&big),
            Err(WireError::TooLarge(MAX_CLIPBOARD + 1, MAX_CLIPBOARD))
        );
        let huge = vec![tag::CLIPBOARD; MAX_CLIENT_MESSAGE + 1];
        assert!(matches!(
            ClientMsg::decode(&huge),
            Err(WireError::TooLarge(_, MAX_CLIENT_MESSAGE))
        ));
    }

    #[tokio::test]
    async fn frames_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r, 16).await.unwrap().unwrap(), b"hello");
        assert!(read_frame(&mut r, 16).await.unwrap().is_none(), "clean end");
        let mut big = frame_header(1 << 30).to_vec();
        big.extend_from_slice(b"x");
        let mut r = big.as_slice();
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::Wire(WireError::TooLarge(_, 1024)))
        ));
    }

    proptest! {
        /// `decode_never_panics_and_is_canonical`: any bytes either fail or decode to a
        /// message that encodes back to exactly those bytes.
        #[test]
        fn decode_never_panics_and_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = ClientMsg::decode(&bytes) {
                prop_assert_eq!(m.encode(), bytes);
            }
        }
    }
}
