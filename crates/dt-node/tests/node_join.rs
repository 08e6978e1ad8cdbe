//! Issue 11, hole 8: a node join token mints host certificates for the registered node name
//! only (never an address the joining client asks for), and a name that joined once is bound
//! to its key: another key is refused until an admin removes the node (`dtctl rm node/NAME`),
//! after which the old key is refused too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dt_ca::ClientKey;
use dt_node_testkit::*;
use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::audit::EventType;

async fn anonymous(cluster: &Cluster) -> NodeServiceClient<tonic::transport::Channel> {
    let ch = dt_client::connect::channel(
        &cluster.addr.to_string(),
        dt_client::TrustPolicy::Pin(cluster.pin()),
        dt_client::Identity::Anonymous,
    )
    .await
    .unwrap();
    NodeServiceClient::new(ch)
}

async fn join(
    cluster: &Cluster,
    token: &str,
    name: &str,
    addr: &str,
    key: &ClientKey,
) -> Result<pb::JoinNodeResponse, tonic::Status> {
    anonymous(cluster)
        .await
        .join_node(pb::JoinNodeRequest {
            token: token.into(),
            name: name.into(),
            labels: Default::default(),
            addr: addr.into(),
            ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
            tls_public_key_der: key.spki_der(),
            kind: "node".into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn principals(resp: &pb::JoinNodeResponse) -> Vec<String> {
    ssh_key::Certificate::from_openssh(resp.ssh_host_cert.trim())
        .unwrap()
        .valid_principals()
        .to_vec()
}

async fn heartbeat(
    cluster: &Cluster,
    resp: &pb::JoinNodeResponse,
    key: &ClientKey,
) -> Result<(), tonic::Status> {
    let ch = dt_client::connect::channel(
        &cluster.addr.to_string(),
        dt_client::TrustPolicy::Pin(cluster.pin()),
        dt_client::Identity::Cert {
            cert_der: resp.tls_cert_der.clone(),
            key_pkcs8_der: key.pkcs8_der().to_vec(),
        },
    )
    .await
    .unwrap();
    NodeServiceClient::new(ch)
        .heartbeat(pb::HeartbeatRequest {
            addr: "127.0.0.1:3022".into(),
            ttl_seconds: 30,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_certificates_name_the_registered_node_and_a_name_keeps_its_key() {
    let cluster = Cluster::start().await;
    let token = cluster.node_token().await;

    // The client asks for an address that is another host's name: the certificate names
    // the node only.
    let key1 = ClientKey::generate().unwrap();
    let first = join(&cluster, &token, "web1", "bank.example.com:22", &key1)
        .await
        .unwrap();
    assert_eq!(
        principals(&first),
        ["web1".to_string(), "web1.test-cluster".to_string()]
    );
    heartbeat(&cluster, &first, &key1).await.unwrap();

    // The node goes offline (its live record expires) and another machine with the token
    // tries to take the name with a new key: refused, saying what the admin must do.
    cluster
        .srv
        .backend
        .delete("/nodes/web1", None)
        .await
        .unwrap();
    let key2 = ClientKey::generate().unwrap();
    let err = join(&cluster, &token, "web1", "127.0.0.1:3022", &key2)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("registered with another key")
            && err.message().contains("dtctl rm node/web1"),
        "{err:?}"
    );
    let ev = cluster
        .wait_event(EventType::NodeJoin, "registered with another key")
        .await;
    assert!(!ev.success);

    // The registered machine itself may join again (same key).
    let again = join(&cluster, &token, "web1", "127.0.0.1:3022", &key1)
        .await
        .unwrap();
    assert_eq!(principals(&again).len(), 2);

    // The admin removes the node: the old key is refused from then on, and the name is
    // free for the new machine.
    cluster.delete("node", "web1").await;
    let ev = cluster
        .wait_event(EventType::ResourceDelete, "node \"web1\" removed")
        .await;
    assert!(ev.success);
    let err = heartbeat(&cluster, &first, &key1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("removed or replaced"), "{err:?}");
    let joined = join(&cluster, &token, "web1", "127.0.0.1:3022", &key2)
        .await
        .unwrap();
    heartbeat(&cluster, &joined, &key2).await.unwrap();
}
