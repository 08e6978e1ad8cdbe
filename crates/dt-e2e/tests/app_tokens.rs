//! The app token (`devtrust-jwt-assertion`) is signed only for a joined app access point, and
//! only from a user certificate of the cluster's user CA: a database access point, a user,
//! and a certificate of another CA are refused, each with what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use dt_agent::identity::DataDir;
use dt_agent::runtime::{JoinRequest, join, tls_identity};
use dt_client::TrustPolicy;
use dt_proto::v1 as pb;
use dt_proto::v1::app_service_client::AppServiceClient;
use dt_types::{Secret, ServiceKind};

#[test]
fn only_app_access_points_get_tokens_and_only_for_user_ca_certificates() {
    let srv = Server::start();
    let alice = srv.new_user("alice", "access", "", "correct horse battery");
    let store = dt_client::ProfileStore {
        home: alice.path.clone(),
    };
    let profile = store.current().unwrap();
    let alice_der = dt_ca::pem::parse_cert_pem(
        &std::fs::read_to_string(store.files(&profile.proxy).tls_cert()).unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let join_as = |kind: ServiceKind, name: &str| {
        let token = srv
            .dtctl(&[
                "tokens",
                "add",
                &format!("--type={}", kind.as_str()),
                "--format=text",
            ])
            .ok()
            .trim()
            .to_string();
        rt.block_on(join(
            &DataDir::new(srv.scratch().join(name)),
            &JoinRequest {
                auth_server: srv.addr.clone(),
                token: Secret::new(token),
                trust: TrustPolicy::Pin(srv.pin.clone()),
            },
            kind,
            name,
            "127.0.0.1:1",
            &Default::default(),
        ))
        .unwrap()
    };
    let app = join_as(ServiceKind::App, "apps-1");
    let db = join_as(ServiceKind::Db, "db-1");
    let ask = |identity, cert: Vec<u8>| {
        rt.block_on(async {
            let ch =
                dt_client::connect::channel(&srv.addr, TrustPolicy::Pin(srv.pin.clone()), identity)
                    .await
                    .unwrap();
            AppServiceClient::new(ch)
                .sign_app_token(pb::SignAppTokenRequest {
                    user_cert_der: cert,
                    app: "wiki".into(),
                    audience: "http://127.0.0.1:8080".into(),
                })
                .await
        })
    };

    // Allowed: the app access point, for alice's certificate; the token verifies with the
    // cluster's JWT key and says alice.
    let ok = ask(tls_identity(&app), alice_der.clone())
        .unwrap()
        .into_inner();
    assert!(ok.expires_unix > 0);
    let parts: Vec<&str> = ok.token.split('.').collect();
    assert_eq!(parts.len(), 3, "{}", ok.token);

    // A database access point.
    let err = ask(tls_identity(&db), alice_der.clone()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("only app access points get app tokens"),
        "{err:?}"
    );

    // A user, not an access point.
    let err = ask(store.identity(&profile).unwrap(), alice_der.clone()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("devtrust app start --token"),
        "{err:?}"
    );

    // A certificate the user CA did not sign (the app access point's own host-CA one), and
    // bytes that are no certificate.
    let err = ask(tls_identity(&app), app.tls_cert_der.clone()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("the user certificate is refused"),
        "{err:?}"
    );
    let err = ask(tls_identity(&app), b"not a certificate".to_vec()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // App sessions (the browser's web launch): only an app access point that serves the app
    // may spend a launch code or look a session up. This one serves nothing; a database
    // access point and a user are refused for what they are. (The allowed case is the whole
    // browser flow of tests/app_web.rs.)
    let session_call = |identity, get: bool| {
        rt.block_on(async {
            let ch =
                dt_client::connect::channel(&srv.addr, TrustPolicy::Pin(srv.pin.clone()), identity)
                    .await
                    .unwrap();
            let mut c = AppServiceClient::new(ch);
            if get {
                c.get_app_session(pb::GetAppSessionRequest {
                    session_id: "s".into(),
                    secret: "x".into(),
                    app: "wiki".into(),
                })
                .await
                .map(|_| ())
            } else {
                c.exchange_app_code(pb::ExchangeAppCodeRequest {
                    code: "c".into(),
                    state: "0123456789abcdef".into(),
                    app: "wiki".into(),
                })
                .await
                .map(|_| ())
            }
        })
    };
    for get in [false, true] {
        let err = session_call(tls_identity(&app), get).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("app access point \"apps-1\" does not serve app \"wiki\""),
            "{err:?}"
        );
        let err = session_call(tls_identity(&db), get).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("only app access points handle app sessions"),
            "{err:?}"
        );
        let err = session_call(store.identity(&profile).unwrap(), get).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        assert!(
            err.message().contains("devtrust app start --token"),
            "{err:?}"
        );
    }
}
