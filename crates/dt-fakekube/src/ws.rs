//! The server side of WebSocket (RFC 6455) framing, enough for the Kubernetes channel
//! protocols: binary messages, close, ping/pong, continuation. Frames from clients are
//! masked (§5.3); frames from the server are not.

use std::io;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// The largest message accepted from a client.
const MAX_MESSAGE: usize = 16 << 20;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One message (continuations joined).
pub struct Message {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Read one message; `None` at end of stream.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Message>> {
    let mut opcode = None;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 2];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let fin = head[0] & 0x80 != 0;
        let op = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            len = u64::from_be_bytes(b);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| payload.len() + l <= MAX_MESSAGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "message too large"))?;
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let start = payload.len();
        payload.resize(start + len, 0);
        r.read_exact(&mut payload[start..]).await?;
        if masked {
            for (i, b) in payload[start..].iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        if op >= OP_CLOSE {
            // Control frames are never fragmented and may come between fragments.
            return Ok(Some(Message {
                opcode: op,
                payload: payload.split_off(start),
            }));
        }
        if op != OP_CONT {
            opcode = Some(op);
        }
        if fin {
            return Ok(Some(Message {
                opcode: opcode.unwrap_or(OP_BINARY),
                payload,
            }));
        }
    }
}

/// Write one unmasked frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn masked_fragments_are_joined() {
        let mask = [1u8, 2, 3, 4];
        let mut wire = Vec::new();
        for (first, part, fin) in [(true, &b"\x01he"[..], false), (false, &b"llo"[..], true)] {
            wire.push(if fin { 0x80 } else { 0 } | if first { OP_BINARY } else { OP_CONT });
            wire.push(0x80 | part.len() as u8);
            wire.extend_from_slice(&mask);
            wire.extend(part.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        let mut r = &wire[..];
        let m = read_message(&mut r).await.unwrap().unwrap();
        assert_eq!(m.opcode, OP_BINARY);
        assert_eq!(m.payload, b"\x01hello");
        assert!(read_message(&mut r).await.unwrap().is_none());
    }
}
