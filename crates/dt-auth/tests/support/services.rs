//! Joined services (access points of every kind) for the tests: join tokens, joins,
//! heartbeats of served resources.

use std::collections::HashMap;

use dt_ca::ClientKey;
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_proto::v1::node_service_client::NodeServiceClient;
use tonic::transport::Channel;

use super::Cluster;

pub async fn token(cl: &Cluster, kind: &str) -> String {
    AuthServiceClient::new(cl.admin.clone())
        .create_join_token(pb::CreateJoinTokenRequest {
            r#type: kind.into(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

pub async fn anonymous(cl: &Cluster) -> NodeServiceClient<Channel> {
    NodeServiceClient::new(cl.anonymous_channel().await)
}

/// A joined service: its key, what the join returned, and a client using its certificate.
pub struct Service {
    pub name: String,
    pub joined: pb::JoinNodeResponse,
    pub client: NodeServiceClient<Channel>,
}

pub async fn try_join(
    cl: &Cluster,
    token: &str,
    kind: &str,
    name: &str,
    key: &ClientKey,
) -> Result<pb::JoinNodeResponse, tonic::Status> {
    anonymous(cl)
        .await
        .join_node(pb::JoinNodeRequest {
            token: token.into(),
            name: name.into(),
            labels: Default::default(),
            addr: "127.0.0.1:5432".into(),
            ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
            tls_public_key_der: key.spki_der(),
            kind: kind.into(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn join(cl: &Cluster, kind: &str, name: &str) -> Service {
    let key = ClientKey::generate().unwrap();
    let tok = token(cl, kind).await;
    let joined = try_join(cl, &tok, kind, name, &key).await.unwrap();
    let ch = cl.channel_with(&joined.tls_cert_der, &key).await.unwrap();
    Service {
        name: name.into(),
        joined,
        client: NodeServiceClient::new(ch),
    }
}

pub fn served(kind: &str, name: &str, labels: &[(&str, &str)]) -> pb::ServedResource {
    pb::ServedResource {
        kind: kind.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        addr: String::new(),
        protocol: if kind == "db" {
            "postgres".into()
        } else {
            String::new()
        },
        description: String::new(),
    }
}

pub async fn heartbeat(
    s: &mut Service,
    labels: &[(&str, &str)],
    resources: Vec<pb::ServedResource>,
) -> Result<(), tonic::Status> {
    s.client
        .heartbeat(pb::HeartbeatRequest {
            addr: "127.0.0.1:5432".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            version: "test".into(),
            ttl_seconds: 60,
            resources,
        })
        .await
        .map(|_| ())
}
