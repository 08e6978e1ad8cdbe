//! The browser SSH terminal: a WebSocket to the auth service, which logs in to the node
//! with the web session's own certificate (augmented with the device after device web
//! authentication). The node decides as for `dtsh ssh` (the same `dt-authz` decision:
//! locks, the cluster's and the roles' device-trust modes, logins), so a session without a
//! trusted device is refused with the seeds' messages, and a lock ends the terminal the way
//! it ends any SSH session.
//!
//! The WebSocket opening is a state-changing call: it needs the session's CSRF token (in
//! the query, as browsers cannot set headers on it) and an `Origin` of this server.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use dt_auth::listener::Peer;
use dt_client::ssh_client::{ClientCreds, SshClientError};
use dt_node::access::{ACCESS_DENIED_PREFIX, TRUSTED_DEVICE_SUFFIX};
use russh::ChannelMsg;
use serde::Deserialize;
use serde_json::json;

use crate::{Web, WebError};

#[derive(Deserialize)]
pub(crate) struct TerminalQuery {
    node: String,
    login: String,
    #[serde(default)]
    csrf: String,
    #[serde(default = "default_cols")]
    cols: u32,
    #[serde(default = "default_rows")]
    rows: u32,
}

fn default_cols() -> u32 {
    100
}
fn default_rows() -> u32 {
    30
}

/// What the browser shows for a refused session (the words of `dtsh ssh`).
pub fn rejection_message(description: &str) -> String {
    if let Some(rest) = description.strip_prefix(ACCESS_DENIED_PREFIX) {
        let (first, why) = match rest.split_once(": ") {
            Some((f, w)) => (f, Some(w)),
            None => (rest, None),
        };
        let mut m = format!("ERROR: {ACCESS_DENIED_PREFIX}{first}");
        if why == Some(TRUSTED_DEVICE_SUFFIX) {
            m.push_str(
                "\r\nyour roles require a trusted device for this node: authenticate your device for this web session (log out, log in again and follow the dtsh hand-off)",
            );
        } else {
            m.push_str("\r\nyour roles do not allow this login on this node");
        }
        m
    } else {
        format!("ERROR: ssh: rejected: administratively prohibited ({description})")
    }
}

fn ssh_error(e: SshClientError) -> String {
    match e {
        SshClientError::ChannelRejected { description, .. } => rejection_message(&description),
        other => format!("ERROR: ssh: {other}"),
    }
}

pub(crate) async fn connect(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<TerminalQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, WebError> {
    let (session, caller) = web
        .websocket_session(&peer, &uri, &headers, &q.csrf, "terminal")
        .await?;
    let nodes = web.srv.list_nodes_for(&caller.roles).await?;
    let Some(node) = nodes.into_iter().find(|n| n.name == q.node) else {
        return Ok(Json(json!({"error": format!(
            "node {:?} is not online, or your roles do not let you reach it", q.node
        )}))
        .into_response());
    };
    let key = ssh_key::PrivateKey::from_openssh(session.ssh_key_openssh.as_str())
        .map_err(dt_auth::error::ApiError::internal)?;
    let cert = ssh_key::Certificate::from_openssh(session.ssh_cert.trim())
        .map_err(dt_auth::error::ApiError::internal)?;
    let host_ca = ssh_key::PublicKey::from_openssh(web.srv.host_ca.ssh_public_key_openssh().trim())
        .map_err(dt_auth::error::ApiError::internal)?;
    let creds = ClientCreds {
        key: Arc::new(key),
        cert,
        host_ca,
    };
    let cols = q.cols.clamp(20, 400);
    let rows = q.rows.clamp(5, 200);
    Ok(ws.on_upgrade(move |socket| async move {
        pump(socket, node.addr, node.name, creds, q.login, cols, rows).await;
    }))
}

async fn pump(
    mut socket: WebSocket,
    addr: String,
    node: String,
    creds: ClientCreds,
    login: String,
    cols: u32,
    rows: u32,
) {
    let refuse = |msg: String| Message::Text(format!("\r\n{msg}\r\n").into());
    let conn = match dt_client::ssh_client::connect(&addr, &node, &creds, &login).await {
        Ok(c) => c,
        Err(e) => {
            let _ = socket.send(refuse(ssh_error(e))).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let channel = match conn.open_session().await {
        Ok(c) => c,
        Err(e) => {
            let _ = socket.send(refuse(ssh_error(e))).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    if channel
        .request_pty(true, "xterm", cols, rows, 0, 0, &[])
        .await
        .is_err()
        || channel.request_shell(true).await.is_err()
    {
        let _ = socket
            .send(refuse(
                "ERROR: ssh: the node refused to start a shell".into(),
            ))
            .await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let (mut read, write) = channel.split();
    loop {
        tokio::select! {
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Failure) => {
                    let _ = socket.send(refuse("ERROR: ssh: the node refused to start the session".into())).await;
                    break;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if write.data_bytes(t.as_bytes().to_vec()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if write.data_bytes(b.to_vec()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let reason = conn
        .disconnect_reason()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "the session ended".into());
    let _ = socket
        .send(Message::Text(
            format!("\r\n[connection to {node} closed: {reason}]\r\n").into(),
        ))
        .await;
    let _ = socket.send(Message::Close(None)).await;
    conn.close().await;
}
