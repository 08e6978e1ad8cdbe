//! Desktops in the browser: a WebSocket to the auth service, which connects to the desktop
//! access point over mTLS with the web session's own certificate (augmented with the device
//! after device web authentication) and relays the desktop wire protocol
//! (`dt_desktop::wire`, docs/desktops.md) both ways. The access point decides (the roles'
//! `desktop_labels`, `desktop_logins` and `device_trust_mode`; locks) and says why it
//! refuses in an `End` message the page shows.
//!
//! What this side enforces: the web session (as every API call), the WebSocket opening's
//! CSRF token and `Origin` (as the terminal), that the desktop is one the roles list
//! (`list_served_for`, the same listing decision as `dtsh`), that the access point's
//! certificate names that desktop (host CA), and that the browser never sends `Open` itself
//! nor a message above `MAX_CLIENT_MESSAGE`. Everything else in a message is judged by the
//! access point, so a malformed one ends the session with its error.

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use dt_auth::listener::Peer;
use dt_desktop::wire::{
    self, ClientMsg, EndReason, MAX_CLIENT_MESSAGE, MAX_SERVER_MESSAGE, ServerMsg,
};
use dt_types::ServiceKind;
use serde::Deserialize;
use std::time::Duration;

use crate::{Web, WebError};

/// How long reaching the access point may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What the WebSocket layer reads whole before this module judges a message's size: a
/// message up to this is read to its end, so refusing it leaves nothing unread (closing a
/// TCP connection with unread bytes sends a reset, and a reset can make the browser drop the
/// `End` message it had not read yet: the page then saw a bare close instead of the reason).
const READ_LIMIT: usize = 4 * MAX_CLIENT_MESSAGE;
/// How long a closing WebSocket waits for the browser's answering close frame (RFC 6455
/// §7.1.1: the server closes TCP after the close handshake, not before).
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
pub(crate) struct DesktopQuery {
    desktop: String,
    login: String,
    #[serde(default)]
    csrf: String,
    #[serde(default = "default_width")]
    width: u16,
    #[serde(default = "default_height")]
    height: u16,
}

fn default_width() -> u16 {
    1024
}
fn default_height() -> u16 {
    768
}

/// Where the relay connects and as whom.
struct Route {
    addr: String,
    service: String,
    host_ca_der: Vec<u8>,
    cert_der: Vec<u8>,
    key_pkcs8_der: Vec<u8>,
    open: ClientMsg,
}

pub(crate) async fn connect(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<DesktopQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, WebError> {
    let (session, caller) = web
        .websocket_session(&peer, &uri, &headers, &q.csrf, "desktop")
        .await?;
    let desktops = web
        .srv
        .list_served_for(ServiceKind::Desktop, &caller.roles)
        .await?;
    let Some(d) = desktops.into_iter().find(|d| d.resource.name == q.desktop) else {
        return Err(WebError::BadRequest(format!(
            "desktop {:?} is not online, or your roles do not let you reach it",
            q.desktop
        )));
    };
    let key = dt_ca::ClientKey::from_ssh_private_key_openssh(session.ssh_key_openssh.as_str())
        .map_err(dt_auth::error::ApiError::internal)?;
    let route = Route {
        addr: d.resource.addr,
        service: d.service,
        host_ca_der: web.srv.host_ca.cert_der().to_vec(),
        cert_der: session.tls_cert_der.as_ref().clone(),
        key_pkcs8_der: key.pkcs8_der().to_vec(),
        open: ClientMsg::Open {
            desktop: q.desktop,
            login: q.login,
            width: q.width,
            height: q.height,
        },
    };
    Ok(ws
        .max_message_size(READ_LIMIT)
        .max_frame_size(READ_LIMIT)
        .on_upgrade(move |socket| relay(socket, route)))
}

fn end(reason: EndReason, message: String) -> Message {
    Message::Binary(ServerMsg::End { reason, message }.encode().into())
}

/// End the session with `reason` and `message` (the page shows it), then close the
/// WebSocket: send a close frame and read (and drop) what the browser still sends until its
/// answering close frame, for at most [`CLOSE_HANDSHAKE`].
async fn close(socket: &mut WebSocket, reason: EndReason, message: String) {
    let _ = socket.send(end(reason, message)).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Why the page's message is refused before it is relayed, if it is.
fn refuse_from_page(b: &[u8]) -> Option<String> {
    if b.len() > MAX_CLIENT_MESSAGE {
        return Some(format!(
            "malformed input: a message of {} bytes is above the limit of {MAX_CLIENT_MESSAGE}",
            b.len()
        ));
    }
    // The auth service sends the only Open; the access point judges the rest.
    if b.first() == Some(&0x01) {
        return Some("malformed input: the page may not send open".into());
    }
    None
}

async fn relay(mut socket: WebSocket, route: Route) {
    let connector = match dt_client::access_point::connector(
        route.host_ca_der,
        ServiceKind::Desktop,
        &route.service,
        route.cert_der,
        route.key_pkcs8_der,
    ) {
        Ok(c) => c,
        Err(e) => {
            return close(
                &mut socket,
                EndReason::Error,
                format!("cannot reach the desktop: {e}"),
            )
            .await;
        }
    };
    let dial = async {
        let tcp = tokio::net::TcpStream::connect(&route.addr).await?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(dt_client::access_point::server_name(&route.service), tcp)
            .await
    };
    let tls = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return close(
                &mut socket,
                EndReason::Error,
                format!(
                    "cannot reach the desktop access point {}: {e}",
                    route.service
                ),
            )
            .await;
        }
        Err(_) => {
            return close(
                &mut socket,
                EndReason::Error,
                format!("the desktop access point {} did not answer", route.service),
            )
            .await;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    if wire::write_frame(&mut wr, &route.open.encode())
        .await
        .is_err()
    {
        return close(
            &mut socket,
            EndReason::Error,
            "the desktop access point closed the connection".into(),
        )
        .await;
    }
    // Frames from the access point, read on their own task (not cancel-safe).
    let (tx, mut from_ap) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let reader = tokio::spawn(async move {
        while let Ok(Some(frame)) = wire::read_frame(&mut rd, MAX_SERVER_MESSAGE).await {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut ended = false;
    loop {
        tokio::select! {
            f = from_ap.recv() => match f {
                Some(frame) => {
                    ended = frame.first() == Some(&0x85);
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            m = socket.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(why) = refuse_from_page(&b) {
                        close(&mut socket, EndReason::Error, why).await;
                        ended = true;
                        break;
                    }
                    if wire::write_frame(&mut wr, &b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    close(&mut socket, EndReason::Error, "malformed input: text message (the desktop protocol is binary)".into()).await;
                    ended = true;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // Messages above READ_LIMIT end here (tungstenite's limit).
                    close(&mut socket, EndReason::Error, format!("malformed input: {e}")).await;
                    ended = true;
                    break;
                }
                None => break,
            },
        }
    }
    reader.abort();
    use tokio::io::AsyncWriteExt;
    let _ = wr.shutdown().await;
    if !ended {
        close(
            &mut socket,
            EndReason::Ended,
            "the desktop session ended".into(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_may_not_send_open_nor_oversized_messages() {
        assert_eq!(refuse_from_page(&[0x02, 1, 2]), None);
        assert_eq!(refuse_from_page(&vec![0x04; MAX_CLIENT_MESSAGE]), None);
        let big = refuse_from_page(&vec![0x04; MAX_CLIENT_MESSAGE + 1]).unwrap();
        assert!(big.starts_with("malformed input: a message of"), "{big}");
        assert_eq!(
            refuse_from_page(&[0x01, 0]).as_deref(),
            Some("malformed input: the page may not send open")
        );
    }
}
