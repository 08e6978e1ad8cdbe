//! A user name from outside (a request naming a user) that is not one is refused where it
//! enters, with the typed error (`ApiError::InvalidName`: an invalid argument naming the
//! rule), before anything is read or written. At login it is a failed attempt like any
//! other: counted by the throttle and audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_proto::v1::node_service_client::NodeServiceClient;
use support::*;
use tonic::Code;

const RULE: &str = "user name contains ' '; use letters, digits and . _ @ : -";

#[test]
fn malformed_user_names_are_refused_at_every_door() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let mut admin = AuthServiceClient::new(cl.admin.clone());
        assert_status(
            admin
                .create_user(pb::CreateUserRequest {
                    name: "bad name".into(),
                    roles: vec!["access".into()],
                    logins: vec![],
                    token_ttl_seconds: 0,
                })
                .await,
            Code::InvalidArgument,
            RULE,
        );
        assert_status(
            admin
                .reset_user(pb::ResetUserRequest {
                    name: "bad name".into(),
                    token_ttl_seconds: 0,
                })
                .await,
            Code::InvalidArgument,
            RULE,
        );
        assert_status(
            admin
                .create_join_token(pb::CreateJoinTokenRequest {
                    r#type: "bot".into(),
                    ttl_seconds: 0,
                    bot_name: "bad name".into(),
                    bot_roles: vec![],
                })
                .await,
            Code::InvalidArgument,
            RULE,
        );
        assert_status(
            NodeServiceClient::new(cl.admin.clone())
                .add_bot(pb::AddBotRequest {
                    name: "bad name".into(),
                    roles: vec!["access".into()],
                    logins: vec![],
                    token_ttl_seconds: 0,
                })
                .await,
            Code::InvalidArgument,
            RULE,
        );

        // The web UI's login asks for a device web token for its user.
        let Err(e) = cl
            .srv
            .create_device_web_token(
                "bad name",
                "s1",
                "127.0.0.1".parse().unwrap(),
                std::time::Duration::from_secs(60),
            )
            .await
        else {
            panic!("a web token for a name that is not one");
        };
        assert_eq!(e.to_string(), RULE);
        assert_eq!(e.code(), dt_auth::error::ErrorCode::InvalidArgument);

        let anonymous = cl.anonymous_channel().await;
        let key = dt_ca::ClientKey::generate().expect("key");
        let login = |username: &str, password: &str, bot_token: &str| pb::LoginRequest {
            username: username.into(),
            password: password.into(),
            signup_token: String::new(),
            new_password: String::new(),
            ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
            tls_public_key_der: key.spki_der(),
            ttl_seconds: 0,
            bot_token: bot_token.into(),
        };
        let mut client = AuthServiceClient::new(anonymous);
        assert_status(
            client.login(login("bad name", "whatever12", "")).await,
            Code::InvalidArgument,
            RULE,
        );
        // A bot's name is optional at login, but checked when given.
        assert_status(
            client.login(login("bad name", "", "some-token")).await,
            Code::InvalidArgument,
            RULE,
        );
        // Both failed logins are audited under the name that was sent.
        let (events, _) = cl
            .srv
            .audit
            .search(
                &dt_auth::audit::EventFilter {
                    user: Some("bad name".into()),
                    event: Some(dt_types::audit::EventType::UserLogin),
                    ..Default::default()
                },
                None,
                100,
            )
            .await
            .expect("search");
        let reasons: Vec<_> = events
            .iter()
            .filter(|e| !e.success)
            .filter_map(|e| e.message.as_deref())
            .collect();
        assert!(
            reasons.iter().any(|m| m.contains("malformed user name")),
            "{events:?}"
        );
        assert!(reasons.contains(&"malformed bot name"), "{events:?}");
        // A well-formed unknown name is still only "invalid username or password".
        assert_status(
            client.login(login("nobody-here", "whatever12", "")).await,
            Code::Unauthenticated,
            "invalid username or password",
        );
        cl.stop().await;
    });
}
