//! The services (not only the ceremonies) read the server's one clock: on a fixed clock a
//! lock's expiry and a login certificate's validity follow that clock, with no waiting in
//! the test. Either test fails if its service reads the system clock instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_types::resource::{LockSpec, LockTarget, Resource};
use support::*;
use time::{Duration, OffsetDateTime};
use tonic::Code;

fn fixed_now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

/// A lock that expires ten minutes from the server's now is in force nine minutes in and
/// gone eleven minutes in, though hardly any real time passed (storage still holds it:
/// only the service's reading of the clock can retire it).
#[test]
fn a_lock_expires_on_the_servers_clock() {
    block_on(async {
        let start = fixed_now();
        let cl = Cluster::start(Options {
            clock: Some(start),
            ..Options::default()
        })
        .await;
        let clock = cl.clock.clone().expect("a fixed clock");
        let user = cl.user("lockclock-", &["access"]).await;
        let who = async || {
            AuthServiceClient::new(user.ch.clone())
                .who_am_i(pb::WhoAmIRequest {})
                .await
        };
        who().await.expect("unlocked, the user is served");

        let mut lock: Resource<LockSpec> = Resource::new(
            uuid::Uuid::new_v4().to_string(),
            LockSpec {
                target: LockTarget {
                    user: Some(user.name.clone()),
                    ..Default::default()
                },
                message: Some("ten minutes off".into()),
                created_by: None,
                created_at: None,
            },
        );
        lock.metadata.expires = Some(start + Duration::minutes(10));
        AuthServiceClient::new(cl.admin.clone())
            .upsert_resource(pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&lock).unwrap(),
                force: false,
                expected_revision: 0,
            })
            .await
            .expect("create the lock");

        assert_status(who().await, Code::PermissionDenied, "ten minutes off");
        clock.advance(Duration::minutes(9));
        assert_status(who().await, Code::PermissionDenied, "ten minutes off");
        clock.advance(Duration::minutes(2));
        let served = who().await;
        assert!(served.is_ok(), "eleven minutes in: {served:?}");
        cl.stop().await;
    });
}

/// A login certificate starts and ends on the server's clock: logged in two days after the
/// clock's start, the certificate is valid from then (less the minute of slack) for the
/// role's session length, not from the real time.
#[test]
fn a_login_certificate_follows_the_servers_clock() {
    block_on(async {
        let start = fixed_now();
        let cl = Cluster::start(Options {
            clock: Some(start),
            ..Options::default()
        })
        .await;
        let clock = cl.clock.clone().expect("a fixed clock");
        let name = unique("certclock-");
        let created = AuthServiceClient::new(cl.admin.clone())
            .create_user(pb::CreateUserRequest {
                name: name.clone(),
                roles: vec!["access".into()],
                logins: vec![],
                token_ttl_seconds: 0,
            })
            .await
            .expect("create the user")
            .into_inner();
        // The signup token's lifetime (one hour by default) is on the server's clock too.
        assert_eq!(
            created.expires_unix,
            (start + Duration::hours(1)).unix_timestamp()
        );

        let anonymous = cl.anonymous_channel().await;
        let key = dt_ca::ClientKey::generate().expect("key");
        let login = |signup_token: String, password: String, new_password: String| {
            let mut client = AuthServiceClient::new(anonymous.clone());
            let req = pb::LoginRequest {
                username: name.clone(),
                password,
                signup_token,
                new_password,
                ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
                tls_public_key_der: key.spki_der(),
                ttl_seconds: 0,
                bot_token: String::new(),
            };
            async move { client.login(req).await }
        };
        login(
            created.signup_token.clone(),
            String::new(),
            "correct horse battery".into(),
        )
        .await
        .expect("the signup login");

        clock.advance(Duration::days(2));
        let resp = login(String::new(), "correct horse battery".into(), String::new())
            .await
            .expect("a password login two days later")
            .into_inner();
        let issued = start + Duration::days(2);
        let (_, cert) = x509_parser::parse_x509_certificate(&resp.tls_cert_der).unwrap();
        assert_eq!(
            cert.validity().not_before.timestamp(),
            (issued - Duration::minutes(1)).unix_timestamp(),
            "the certificate starts on the server's clock"
        );
        assert_eq!(cert.validity().not_after.timestamp(), resp.valid_until_unix);
        let lifetime = resp.valid_until_unix - issued.unix_timestamp();
        assert!(
            (60..=86_400 * 2).contains(&lifetime),
            "valid until {} is not a session length after the server's now {issued}",
            resp.valid_until_unix
        );
        cl.stop().await;
    });
}
