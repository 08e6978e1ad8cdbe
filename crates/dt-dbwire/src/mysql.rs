//! The MySQL/MariaDB client/server protocol, as much as a relaying access point needs: packet
//! framing, the server's initial handshake (v10), the client's SSLRequest and
//! HandshakeResponse41 (to learn the user and database it asks for), the commands it sends
//! (COM_QUERY, COM_STMT_PREPARE) for audit, and the ERR packet the access point writes.
//!
//! Every reader is bounds-checked; nothing here panics on any input.

use crate::{Reader, WireError};

/// The longest payload in one packet; a longer one continues in the next packets.
pub const MAX_PAYLOAD: usize = 0xff_ffff;

pub const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_SSL: u32 = 0x0000_0800;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
pub const CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;

pub const COM_QUIT: u8 = 0x01;
pub const COM_QUERY: u8 = 0x03;
pub const COM_STMT_PREPARE: u8 = 0x16;

/// One packet: its sequence id and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub seq: u8,
    pub payload: &'a [u8],
}

/// Read one packet from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// packet and its whole size.
pub fn read_packet(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
    let total = 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Packet {
            seq: buf[3],
            payload: &buf[4..total],
        },
        total,
    )))
}

/// A packet with this sequence id and payload (at most [`MAX_PAYLOAD`] bytes).
pub fn packet(seq: u8, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::Length {
            what: "packet",
            len: payload.len(),
        });
    }
    let len = payload.len() as u32;
    let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    out.extend_from_slice(payload);
    Ok(out)
}

/// The server's initial handshake (protocol version 10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub server_version: String,
    pub connection_id: u32,
    /// The scramble (auth-plugin-data, both parts).
    pub auth_data: Vec<u8>,
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    pub auth_plugin: String,
}

impl Handshake {
    pub fn parse(payload: &[u8]) -> Result<Handshake, WireError> {
        let mut r = Reader::new(payload);
        let version = r.u8()?;
        if version != 10 {
            return Err(WireError::UnsupportedProtocol(u32::from(version)));
        }
        let server_version = r.cstr()?.to_string();
        let connection_id = r.u32_le()?;
        let mut auth_data = r.take(8)?.to_vec();
        r.u8()?; // filler
        let cap_low = u32::from(r.u16_le()?);
        let charset = r.u8()?;
        let status = r.u16_le()?;
        let cap_high = u32::from(r.u16_le()?);
        let capabilities = cap_low | cap_high << 16;
        let auth_len = r.u8()?;
        r.take(10)?; // reserved
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = (usize::from(auth_len).saturating_sub(8)).max(13);
            let part2 = r.take(n)?;
            // The last byte of part 2 is a NUL terminator, not scramble.
            auth_data.extend_from_slice(part2.strip_suffix(&[0]).unwrap_or(part2));
        }
        let auth_plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            r.cstr_or_rest()?.to_string()
        } else {
            String::new()
        };
        Ok(Handshake {
            server_version,
            connection_id,
            auth_data,
            capabilities,
            charset,
            status,
            auth_plugin,
        })
    }

    /// The payload, as the access point sends it to clients.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![10];
        out.extend(self.server_version.bytes().filter(|b| *b != 0));
        out.push(0);
        out.extend(self.connection_id.to_le_bytes());
        let mut data = self.auth_data.clone();
        data.resize(20, 0);
        out.extend(&data[..8]);
        out.push(0);
        out.extend((self.capabilities as u16).to_le_bytes());
        out.push(self.charset);
        out.extend(self.status.to_le_bytes());
        out.extend(((self.capabilities >> 16) as u16).to_le_bytes());
        out.push(21);
        out.extend([0; 10]);
        out.extend(&data[8..20]);
        out.push(0);
        if self.capabilities & CLIENT_PLUGIN_AUTH != 0 {
            out.extend(self.auth_plugin.bytes().filter(|b| *b != 0));
            out.push(0);
        }
        out
    }
}

/// What a client sends after the handshake: a 32-byte SSLRequest (then TLS), or the whole
/// HandshakeResponse41.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHello {
    SslRequest { capabilities: u32 },
    Response(HandshakeResponse),
}

/// The fields of a HandshakeResponse41 an access point needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub user: String,
    pub auth_response: Vec<u8>,
    pub database: Option<String>,
    pub auth_plugin: Option<String>,
}

impl ClientHello {
    pub fn parse(payload: &[u8]) -> Result<ClientHello, WireError> {
        let mut r = Reader::new(payload);
        let capabilities = r.u32_le()?;
        if capabilities & CLIENT_PROTOCOL_41 == 0 {
            return Err(WireError::Malformed(
                "client without CLIENT_PROTOCOL_41 (pre-4.1 clients are not supported)",
            ));
        }
        let max_packet = r.u32_le()?;
        let charset = r.u8()?;
        r.take(23)?;
        if r.is_empty() {
            return if capabilities & CLIENT_SSL != 0 {
                Ok(ClientHello::SslRequest { capabilities })
            } else {
                Err(WireError::Malformed("handshake response without a user"))
            };
        }
        let user = r.cstr()?.to_string();
        let auth_response = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            let n = r.lenenc_int()?;
            r.take(usize::try_from(n).map_err(|_| WireError::Malformed("auth data length"))?)?
        } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = r.u8()?;
            r.take(usize::from(n))?
        } else {
            r.cstr()?.as_bytes()
        }
        .to_vec();
        let database = if capabilities & CLIENT_CONNECT_WITH_DB != 0 && !r.is_empty() {
            Some(r.cstr()?.to_string())
        } else {
            None
        };
        let auth_plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            Some(r.cstr_or_rest()?.to_string())
        } else {
            None
        };
        // Connection attributes, if any, are ignored.
        Ok(ClientHello::Response(HandshakeResponse {
            capabilities,
            max_packet,
            charset,
            user,
            auth_response,
            database,
            auth_plugin,
        }))
    }
}

impl HandshakeResponse {
    /// The payload (without connection attributes), e.g. what the access point sends
    /// upstream as the requested user.
    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities & !CLIENT_CONNECT_ATTRS;
        let mut out = caps.to_le_bytes().to_vec();
        out.extend(self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend([0; 23]);
        out.extend(self.user.bytes().filter(|b| *b != 0));
        out.push(0);
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            write_lenenc_int(&mut out, self.auth_response.len() as u64);
        } else {
            out.push(self.auth_response.len().min(255) as u8);
        }
        out.extend(
            &self.auth_response[..self.auth_response.len().min(
                if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
                    usize::MAX
                } else {
                    255
                },
            )],
        );
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            out.extend(
                self.database
                    .as_deref()
                    .unwrap_or("")
                    .bytes()
                    .filter(|b| *b != 0),
            );
            out.push(0);
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            out.extend(
                self.auth_plugin
                    .as_deref()
                    .unwrap_or("")
                    .bytes()
                    .filter(|b| *b != 0),
            );
            out.push(0);
        }
        out
    }
}

/// An SSLRequest payload with these capabilities (CLIENT_SSL is added).
pub fn ssl_request(capabilities: u32, max_packet: u32, charset: u8) -> Vec<u8> {
    let mut out = (capabilities | CLIENT_SSL).to_le_bytes().to_vec();
    out.extend(max_packet.to_le_bytes());
    out.push(charset);
    out.extend([0; 23]);
    out
}

fn write_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend((n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend(n.to_le_bytes());
        }
    }
}

/// What a client asks the database to run, for audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Query(String),
    Prepare(String),
    Quit,
    /// Another command, by its code.
    Other(u8),
}

/// The command a client packet carries (the first packet of a command phase).
pub fn command(payload: &[u8]) -> Result<Command, WireError> {
    let (&code, rest) = payload
        .split_first()
        .ok_or(WireError::Malformed("empty command packet"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    Ok(match code {
        COM_QUERY => Command::Query(text()),
        COM_STMT_PREPARE => Command::Prepare(text()),
        COM_QUIT => Command::Quit,
        other => Command::Other(other),
    })
}

/// An ERR packet payload the `mariadb` and `mysql` clients print as
/// `ERROR 1045 (28000): message` (1045 access denied, 1927 connection killed). Client error
/// codes (2000-2999) must not come from a server: the `mariadb` client then reports a
/// malformed packet.
pub fn err_payload(code: u16, sql_state: &str, message: &str) -> Vec<u8> {
    let mut out = vec![0xff];
    out.extend(code.to_le_bytes());
    out.push(b'#');
    let mut state: Vec<u8> = sql_state.bytes().take(5).collect();
    state.resize(5, b'0');
    out.extend(state);
    out.extend(message.bytes());
    out
}

/// The code, SQL state and message of an ERR packet payload.
pub fn parse_err(payload: &[u8]) -> Result<(u16, String, String), WireError> {
    let mut r = Reader::new(payload);
    if r.u8()? != 0xff {
        return Err(WireError::Malformed("not an ERR packet"));
    }
    let code = r.u16_le()?;
    let state = if r.peek() == Some(b'#') {
        r.u8()?;
        String::from_utf8_lossy(r.take(5)?).into_owned()
    } else {
        String::new()
    };
    Ok((code, state, String::from_utf8_lossy(r.rest()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Handshake {
        Handshake {
            server_version: "10.11.19-MariaDB".into(),
            connection_id: 7,
            auth_data: (1..=20).collect(),
            capabilities: CLIENT_PROTOCOL_41
                | CLIENT_SSL
                | CLIENT_SECURE_CONNECTION
                | CLIENT_PLUGIN_AUTH
                | CLIENT_CONNECT_WITH_DB
                | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
            charset: 45,
            status: 2,
            auth_plugin: "mysql_native_password".into(),
        }
    }

    #[test]
    fn handshake_round_trips() {
        let h = handshake();
        assert_eq!(Handshake::parse(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[0] = 9;
        assert_eq!(
            Handshake::parse(&bad).unwrap_err(),
            WireError::UnsupportedProtocol(9)
        );
    }

    #[test]
    fn ssl_request_then_response() {
        let caps = handshake().capabilities;
        assert_eq!(
            ClientHello::parse(&ssl_request(caps, 1 << 24, 45)).unwrap(),
            ClientHello::SslRequest {
                capabilities: caps | CLIENT_SSL
            }
        );
        let resp = HandshakeResponse {
            capabilities: caps,
            max_packet: 1 << 24,
            charset: 45,
            user: "alice".into(),
            auth_response: vec![],
            database: Some("main".into()),
            auth_plugin: Some("mysql_native_password".into()),
        };
        let ClientHello::Response(back) = ClientHello::parse(&resp.encode()).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(back, resp);
    }

    #[test]
    fn packets_frame_and_commands_parse() {
        let p = packet(0, &[COM_QUERY, b's', b'e', b'l']).unwrap();
        let (pk, n) = read_packet(&p).unwrap().unwrap();
        assert_eq!((pk.seq, n), (0, 8));
        assert_eq!(command(pk.payload).unwrap(), Command::Query("sel".into()));
        assert_eq!(read_packet(&p[..6]).unwrap(), None);
        assert!(command(&[]).is_err());
        let e = err_payload(1045, "28000", "access denied");
        assert_eq!(
            parse_err(&e).unwrap(),
            (1045, "28000".into(), "access denied".into())
        );
    }

    #[test]
    fn pre_41_clients_are_refused() {
        let mut payload = 0u32.to_le_bytes().to_vec();
        payload.extend([0; 28]);
        assert!(ClientHello::parse(&payload).is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Handshake::parse(&bytes);
            let _ = ClientHello::parse(&bytes);
            let _ = command(&bytes);
            let _ = parse_err(&bytes);
            if let Ok(Some((p, n))) = read_packet(&bytes) {
                proptest::prop_assert!(n <= bytes.len() && p.payload.len() + 4 == n);
            }
        }
    }
}
