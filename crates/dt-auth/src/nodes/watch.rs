//! The cluster watch: what access decisions need (cluster auth preference, roles, locks),
//! as a snapshot and then every change.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_store::{EventKind, WatchEvent};
use dt_types::Kind;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::env::ServerEnv;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::server::AuthServer;

/// How often a watch stream says "still here" when nothing changes.
pub const WATCH_KEEPALIVE: Duration = Duration::from_secs(2);

/// The prefixes a node watches: what an SSH access decision reads.
pub fn watched_prefixes() -> Vec<String> {
    vec![
        keys::resource_prefix(Kind::ClusterAuthPreference),
        keys::resource_prefix(Kind::Role),
        keys::resource_prefix(Kind::Lock),
    ]
}

pub(super) fn kind_of_key(key: &str) -> Option<(Kind, &str)> {
    [Kind::ClusterAuthPreference, Kind::Role, Kind::Lock]
        .into_iter()
        .find_map(|k| {
            key.strip_prefix(&keys::resource_prefix(k))
                .map(|name| (k, name))
        })
}

pub(super) fn now_ms(env: &ServerEnv) -> i64 {
    (env.now().unix_timestamp_nanos() / 1_000_000) as i64
}

impl AuthServer {
    /// The stored documents under the watched prefixes, as they are stored.
    pub(super) async fn cluster_snapshot(&self) -> ApiResult<Vec<pb::ResourceJson>> {
        let mut out = Vec::new();
        for prefix in watched_prefixes() {
            let mut cursor: Option<String> = None;
            loop {
                let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
                for item in page.items {
                    if let Some((kind, _)) = kind_of_key(&item.key) {
                        out.push(pb::ResourceJson {
                            kind: kind.as_str().into(),
                            json: String::from_utf8_lossy(&item.value).into_owned(),
                        });
                    }
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        Ok(out)
    }
}

/// The stream of one cluster watch.
pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterEvent, Status>> + Send>>;

/// Watch `srv`'s cluster state for the access point `node`: a snapshot, then every change,
/// with a keepalive every [`WATCH_KEEPALIVE`].
pub(super) async fn cluster_watch(
    srv: Arc<AuthServer>,
    node: Arc<dt_ca::NodeIdentity>,
) -> Result<WatchStream, Status> {
    // Watch first, then read: a change between the two arrives as a change after the
    // snapshot, and applying it twice is harmless (puts replace, deletes remove).
    let mut watcher = srv
        .backend
        .watch(watched_prefixes())
        .await
        .map_err(ApiError::from)?;
    match watcher.recv().await {
        Some(WatchEvent::Init { .. }) => {}
        _ => {
            return Err(Status::unavailable(
                "the auth service is shutting down; retry",
            ));
        }
    }
    let snapshot = srv.cluster_snapshot().await?;
    let env = srv.env.clone();
    let (tx, rx) = mpsc::channel::<Result<pb::ClusterEvent, Status>>(64);
    tokio::spawn(async move {
        let first = pb::ClusterEvent {
            r#type: pb::cluster_event::Type::Snapshot as i32,
            resources: snapshot,
            server_time_unix_ms: now_ms(&env),
            ..Default::default()
        };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        tracing::debug!(node = %node.name, "cluster watch started");
        let mut keepalive = tokio::time::interval(WATCH_KEEPALIVE);
        keepalive.tick().await;
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => break,
                _ = keepalive.tick() => pb::ClusterEvent {
                    r#type: pb::cluster_event::Type::Keepalive as i32,
                    server_time_unix_ms: now_ms(&env),
                    ..Default::default()
                },
                ev = watcher.recv() => match ev {
                    None => {
                        let _ = tx
                            .send(Err(Status::unavailable("the cluster watch ended; reconnect")))
                            .await;
                        break;
                    }
                    Some(WatchEvent::Init { .. }) => continue,
                    Some(WatchEvent::Change { kind, item }) => {
                        let Some((k, name)) = kind_of_key(&item.key) else { continue };
                        match kind {
                            EventKind::Put => pb::ClusterEvent {
                                r#type: pb::cluster_event::Type::Put as i32,
                                resources: vec![pb::ResourceJson {
                                    kind: k.as_str().into(),
                                    json: String::from_utf8_lossy(&item.value).into_owned(),
                                }],
                                kind: k.as_str().into(),
                                name: name.to_string(),
                                server_time_unix_ms: now_ms(&env),
                            },
                            EventKind::Delete => pb::ClusterEvent {
                                r#type: pb::cluster_event::Type::Delete as i32,
                                kind: k.as_str().into(),
                                name: name.to_string(),
                                server_time_unix_ms: now_ms(&env),
                                ..Default::default()
                            },
                        }
                    }
                },
            };
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
        }
        tracing::debug!(node = %node.name, "cluster watch ended");
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_keys_map_to_kinds() {
        assert_eq!(
            kind_of_key("/resources/lock/abc"),
            Some((Kind::Lock, "abc"))
        );
        assert_eq!(
            kind_of_key("/resources/cluster_auth_preference/cluster-auth-preference"),
            Some((Kind::ClusterAuthPreference, "cluster-auth-preference"))
        );
        assert_eq!(kind_of_key("/resources/user/alice"), None);
    }
}
