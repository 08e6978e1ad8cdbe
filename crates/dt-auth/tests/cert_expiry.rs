//! A client certificate expires on an open connection too (issue 11, hole 5): the TLS
//! handshake checks validity once, so every authenticated call checks it again. A call on
//! an mTLS connection opened while the certificate was valid is refused once it expired,
//! with what to do, and the refusal is in the audit log.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_types::audit::EventType;
use support::*;
use tonic::Code;

#[test]
fn a_call_on_an_open_connection_after_expiry_is_refused() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("expiring", &["access"]).await;
        let mut id = identity(&u.name, &["access"]);
        id.not_after = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap()
            + time::Duration::seconds(3);
        let x509 = cl
            .srv
            .user_ca
            .issue_x509_client_cert(&u.key.spki_der(), &id)
            .unwrap();
        let ch = cl.channel_with(&x509, &u.key).await.unwrap();
        let mut client = AuthServiceClient::new(ch);

        let who = client.who_am_i(pb::WhoAmIRequest {}).await.unwrap();
        assert_eq!(who.into_inner().username, u.name, "allowed while valid");

        let left =
            id.not_after - time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
        tokio::time::sleep(left.try_into().unwrap()).await;
        // The same connection: a new handshake would fail in TLS, not here.
        let refused = client.who_am_i(pb::WhoAmIRequest {}).await;
        let status = assert_status(refused, Code::Unauthenticated, "certificate expired at");
        assert!(status.message().contains("dtsh login"), "{status:?}");
        let e = cl
            .assert_failure_event(&u.name, EventType::AccessDenied, "certificate expired")
            .await;
        assert!(
            e.message.unwrap().contains("open connection"),
            "says where it was refused"
        );

        // The user's valid certificate still works.
        let mut valid = AuthServiceClient::new(u.ch.clone());
        assert!(valid.who_am_i(pb::WhoAmIRequest {}).await.is_ok());
    });
}
