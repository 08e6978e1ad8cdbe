//! Issue 12: every kind of access point joins with a token of its own type, gets a
//! certificate naming its kind, heartbeats only resources of its kind, and users list only
//! what their roles let them reach. Real auth service over loopback mTLS with SQLite; each
//! check is tried allowed and refused.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_ca::ClientKey;
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::ServiceKind;
use dt_types::audit::{AuditEvent, EventType, ServiceInfo};
use support::services::*;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

async fn list(ch: &Channel, kind: &str) -> Result<Vec<String>, tonic::Status> {
    let mut names: Vec<String> = NodeServiceClient::new(ch.clone())
        .list_served_resources(pb::ListServedResourcesRequest { kind: kind.into() })
        .await?
        .into_inner()
        .resources
        .into_iter()
        .map(|r| r.resource.unwrap().name)
        .collect();
    names.sort();
    Ok(names)
}

async fn list_nodes(ch: &Channel) -> Vec<String> {
    let mut names: Vec<String> = NodeServiceClient::new(ch.clone())
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    names
}

#[test]
fn a_token_joins_only_its_own_kind_and_the_certificate_names_it() {
    block_on(a_token_joins_only_its_own_kind_and_the_certificate_names_it_body())
}

async fn a_token_joins_only_its_own_kind_and_the_certificate_names_it_body() {
    let cl = shared().await;
    let db_token = token(cl, "db").await;
    let node_token = token(cl, "node").await;
    let key = ClientKey::generate().unwrap();
    let name = unique("x");

    // A db token does not join a node (nor, with an empty kind, the default node).
    for kind in ["node", ""] {
        assert_status(
            try_join(cl, &db_token, kind, &name, &key).await,
            Code::Unauthenticated,
            "invalid or expired join token for a node",
        );
    }
    // A node token does not join a database; an unknown kind is refused as such.
    assert_status(
        try_join(cl, &node_token, "db", &name, &key).await,
        Code::Unauthenticated,
        "--type=db",
    );
    assert_status(
        try_join(cl, &node_token, "printer", &name, &key).await,
        Code::InvalidArgument,
        "unknown service kind",
    );

    // The db token joins a database: an X.509 certificate naming the kind, no SSH host
    // certificate.
    let db = try_join(cl, &db_token, "db", &name, &key).await.unwrap();
    assert!(db.ssh_host_cert.is_empty(), "{:?}", db.ssh_host_cert);
    let id = cl
        .srv
        .host_ca
        .verify_node_client_cert(&db.tls_cert_der, time::OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(
        (id.name.as_str(), id.kind),
        (name.as_str(), ServiceKind::Db)
    );

    // A node of the same name (another key) joins too: separate name spaces.
    let node_key = ClientKey::generate().unwrap();
    let node = try_join(cl, &node_token, "node", &name, &node_key)
        .await
        .unwrap();
    assert!(node.ssh_host_cert.starts_with("ecdsa-sha2-nistp256-cert"));
    let id = cl
        .srv
        .host_ca
        .verify_node_client_cert(&node.tls_cert_der, time::OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(id.kind, ServiceKind::Node);
    // ... but within a kind, the name stays bound to its first key.
    assert_status(
        try_join(cl, &db_token, "db", &name, &node_key).await,
        Code::AlreadyExists,
        &format!("dtctl rm db/{name}"),
    );

    // Every type has its token; `mdm` joins without a listener address.
    for kind in ["kube", "app", "desktop"] {
        let s = join(cl, kind, &unique(kind)).await;
        assert!(s.joined.ssh_host_cert.is_empty());
    }
    let key = ClientKey::generate().unwrap();
    let mdm_token = token(cl, "mdm").await;
    let mut req = pb::JoinNodeRequest {
        token: mdm_token,
        name: unique("mdm"),
        addr: String::new(),
        ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
        tls_public_key_der: key.spki_der(),
        kind: "mdm".into(),
        ..Default::default()
    };
    anonymous(cl).await.join_node(req.clone()).await.unwrap();
    // Other kinds still need an address.
    req.kind = "db".into();
    req.token = token(cl, "db").await;
    req.name = unique("db");
    assert_status(
        anonymous(cl).await.join_node(req).await,
        Code::InvalidArgument,
        "HOST:PORT",
    );
    assert_status(
        AuthServiceClient::new(cl.admin.clone())
            .create_join_token(pb::CreateJoinTokenRequest {
                r#type: "printer".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "node, db, kube, app, desktop, mdm or bot",
    );
}

#[test]
fn services_heartbeat_only_their_own_kind_and_users_list_what_they_may_reach() {
    block_on(services_heartbeat_only_their_own_kind_and_users_list_what_they_may_reach_body())
}

async fn services_heartbeat_only_their_own_kind_and_users_list_what_they_may_reach_body() {
    let cl = shared().await;
    let tag = unique("t");
    let mut db = join(cl, "db", &unique("dbsvc")).await;
    let mut node = join(cl, "node", &unique("node")).await;
    let (prod_db, dev_db) = (format!("main-{tag}"), format!("scratch-{tag}"));

    // A db service serves databases ...
    heartbeat(
        &mut db,
        &[],
        vec![
            served("db", &prod_db, &[("env", "prod"), ("t", &tag)]),
            served("db", &dev_db, &[("env", "dev"), ("t", &tag)]),
        ],
    )
    .await
    .unwrap();
    // ... but neither a node nor an app; and a node serves no database.
    let db_name = db.name.clone();
    for wrong in ["node", "app"] {
        assert_status(
            heartbeat(&mut db, &[], vec![served(wrong, &db_name, &[])]).await,
            Code::PermissionDenied,
            "may serve only db resources",
        );
    }
    assert_status(
        heartbeat(&mut node, &[], vec![served("db", "main", &[])]).await,
        Code::PermissionDenied,
        "may serve only node resources",
    );
    // A node serves only itself, not another node's name.
    assert_status(
        heartbeat(&mut node, &[], vec![served("node", "someone-else", &[])]).await,
        Code::PermissionDenied,
        "may serve only itself",
    );
    // Names, labels and protocols are checked like node labels.
    for (bad, needle) in [
        (served("db", "bad name", &[]), "metadata.name"),
        (served("db", "ok", &[("bad key", "x")]), "label key"),
        (
            pb::ServedResource {
                protocol: "oracle".into(),
                ..served("db", "ok", &[])
            },
            "use postgres or mysql",
        ),
    ] {
        assert_status(
            heartbeat(&mut db, &[], vec![bad]).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_status(
        heartbeat(
            &mut db,
            &[],
            vec![served("db", "twice", &[]), served("db", "twice", &[])],
        )
        .await,
        Code::InvalidArgument,
        "listed twice",
    );
    // The node resends itself with new labels: that is what is listed.
    let node_name = node.name.clone();
    heartbeat(
        &mut node,
        &[("env", "old")],
        vec![served("node", &node_name, &[("env", "prod"), ("t", &tag)])],
    )
    .await
    .unwrap();

    // A user whose role reaches prod databases and prod nodes of this test sees one of each;
    // the refused heartbeats changed nothing.
    let role = unique("prod-only");
    cl.role(
        &role,
        &format!(
            "{{allow: {{logins: [root], node_labels: {{env: prod, t: {tag}}}, db_labels: {{env: prod, t: {tag}}}, db_names: ['*'], db_users: ['*']}}}}"
        ),
    )
    .await;
    let user = cl.user("lister", &[&role]).await;
    assert_eq!(list(&user.ch, "db").await.unwrap(), [prod_db.as_str()]);
    assert_eq!(list(&user.ch, "node").await.unwrap(), [node_name.as_str()]);
    assert_eq!(list_nodes(&user.ch).await, [node_name.as_str()]);
    assert!(list(&user.ch, "app").await.unwrap().is_empty());
    // A deny selector hides what an allow selector shows.
    let deny = unique("no-prod-db");
    cl.role(&deny, "{deny: {db_labels: {env: prod}}}").await;
    let denied = cl.user("lister", &[&role, &deny]).await;
    assert!(list(&denied.ch, "db").await.unwrap().is_empty());
    assert_eq!(list_nodes(&denied.ch).await, [node_name.as_str()]);
    // A user whose roles have no label selectors sees nothing.
    let nobody = cl.user("lister", &["auditor"]).await;
    assert!(list(&nobody.ch, "db").await.unwrap().is_empty());
    assert!(list_nodes(&nobody.ch).await.is_empty());
    // mdm is no listable kind.
    assert_status(list(&user.ch, "mdm").await, Code::InvalidArgument, "kind");

    // The served resources expire with the service's records; the db service's name is not
    // a node.
    assert!(!list_nodes(&user.ch).await.contains(&db.name));
}

#[test]
fn access_points_watch_and_submit_events_as_themselves_and_mdm_does_neither() {
    block_on(access_points_watch_and_submit_events_as_themselves_and_mdm_does_neither_body())
}

async fn access_points_watch_and_submit_events_as_themselves_and_mdm_does_neither_body() {
    let cl = shared().await;
    let mut db = join(cl, "db", &unique("dbsvc")).await;
    let mut mdm = {
        let key = ClientKey::generate().unwrap();
        let name = unique("mdm");
        let joined = anonymous(cl)
            .await
            .join_node(pb::JoinNodeRequest {
                token: token(cl, "mdm").await,
                name: name.clone(),
                ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
                tls_public_key_der: key.spki_der(),
                kind: "mdm".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let ch = cl.channel_with(&joined.tls_cert_der, &key).await.unwrap();
        Service {
            name,
            joined,
            client: NodeServiceClient::new(ch),
        }
    };

    // The db access point watches the cluster (snapshot first) ...
    let mut stream = db
        .client
        .watch_cluster(pb::WatchClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, pb::cluster_event::Type::Snapshot as i32);
    // ... the MDM service may not, and serves nothing, but its heartbeat is liveness.
    assert_status(
        mdm.client.watch_cluster(pb::WatchClusterRequest {}).await,
        Code::PermissionDenied,
        "for access points",
    );
    mdm.client
        .heartbeat(pb::HeartbeatRequest {
            ttl_seconds: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_status(
        heartbeat(&mut mdm, &[], vec![served("db", "x", &[])]).await,
        Code::InvalidArgument,
        "serves no resources",
    );

    // Events a db access point submits name it (kind and name), whatever node it claims.
    let msg = unique("db-session");
    let mut ev = AuditEvent::new(
        EventType::SessionStart,
        true,
        time::OffsetDateTime::now_utc(),
    )
    .user("alice")
    .message(&msg);
    ev.node = Some("web1".into());
    let events = vec![serde_json::to_string(&ev).unwrap()];
    db.client
        .submit_audit_events(pb::SubmitAuditEventsRequest {
            events: events.clone(),
        })
        .await
        .unwrap();
    let stored = cl
        .events("alice", EventType::SessionStart)
        .await
        .into_iter()
        .find(|e| e.message.as_deref() == Some(msg.as_str()))
        .unwrap();
    assert_eq!(stored.node, None);
    assert_eq!(
        stored.service,
        Some(ServiceInfo {
            kind: ServiceKind::Db,
            name: db.name.clone(),
        })
    );
    assert_status(
        mdm.client
            .submit_audit_events(pb::SubmitAuditEventsRequest { events })
            .await,
        Code::PermissionDenied,
        "for access points",
    );

    // `dtctl rm db/NAME` removes the db service (not a node of that name): its key is
    // refused from then on.
    AuthServiceClient::new(cl.admin.clone())
        .delete_resource(pb::DeleteResourceRequest {
            kind: "db".into(),
            name: db.name.clone(),
        })
        .await
        .unwrap();
    assert_status(
        heartbeat(&mut db, &[], vec![]).await,
        Code::Unauthenticated,
        "removed or replaced",
    );
    assert_status(
        AuthServiceClient::new(cl.admin.clone())
            .delete_resource(pb::DeleteResourceRequest {
                kind: "node".into(),
                name: db.name.clone(),
            })
            .await,
        Code::NotFound,
        "not found",
    );
}
