//! Time and races in the ceremonies, on the real server. An answer that arrives after the
//! device changed is refused (and audited), never merged over the change, while the same
//! answer without the change passes; token lifetimes are judged on the server's one clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dt_auth::keys;
use dt_ceremony::messages::{AuthenticateChallenge, AuthenticateRequest, AuthenticateResponse};
use dt_store::{Condition, Op};
use dt_types::Kind;
use dt_types::audit::EventType;
use dt_types::device::OsType;
use support::*;
use tonic::Code;

/// Runs an authentication by hand up to the challenge, lets `meanwhile` act, then answers.
async fn answer_after(
    cl: &Cluster,
    user: &User,
    dev: &EnrolledDevice,
    meanwhile: impl AsyncFnOnce(&Cluster),
) -> Result<AuthenticateResponse, tonic::Status> {
    let mut raw = RawAuthenticate::open_authenticate(&user.ch).await?;
    raw.send(&AuthenticateRequest::Init(Box::new(authn_init(
        &user.certs,
        &dev.key.credential_id,
        dev.data.clone(),
    ))))
    .await;
    let challenge = match raw.recv::<AuthenticateResponse>().await? {
        AuthenticateResponse::Challenge(AuthenticateChallenge::P256 { challenge }) => challenge,
        other => panic!("expected a p256 challenge, got {other:?}"),
    };
    meanwhile(cl).await;
    raw.send(&AuthenticateRequest::ChallengeResponse(
        dev.key.authn_response(&challenge),
    ))
    .await;
    raw.recv::<AuthenticateResponse>().await
}

#[test]
fn an_answer_after_the_device_changed_is_refused_and_the_change_is_kept() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let user = cl.user("race-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&user).await;

        // Without a change in between, the same steps succeed (the test can pass).
        let ok = answer_after(&cl, &user, &dev, async |_| {}).await;
        assert!(matches!(ok, Ok(AuthenticateResponse::Success(_))), "{ok:?}");

        // An admin labels the device while the user's answer is on its way.
        let id = dev.id.clone();
        let refused = answer_after(&cl, &user, &dev, async |cl| {
            let (mut d, rev) = cl.device(&id).await.expect("device");
            d.metadata.labels.insert("edited".into(), "yes".into());
            let key = keys::resource(Kind::Device, &id);
            cl.srv
                .backend
                .atomic_write(
                    vec![Condition::Revision(key.clone(), rev)],
                    vec![Op::Put {
                        key,
                        value: serde_json::to_vec(&d).unwrap(),
                        expires: None,
                    }],
                )
                .await
                .expect("the admin's edit");
        })
        .await;
        assert_status(
            refused,
            Code::Aborted,
            "the device changed during authentication; try again",
        );

        // Audited as a failed authentication of this device.
        let events = cl.events(&user.name, EventType::DeviceAuthenticate).await;
        assert!(
            events.iter().any(|e| !e.success
                && e.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("changed during authentication")
                && e.device.as_ref().is_some_and(|d| d.device_id == id)),
            "{events:#?}"
        );
        // The admin's change is what storage holds, and the device still authenticates.
        let (after, _) = cl.device(&id).await.expect("device");
        assert_eq!(
            after.metadata.labels.get("edited").map(String::as_str),
            Some("yes")
        );
        cl.authenticate(&user, &dev, dev.data.clone())
            .await
            .expect("a fresh authentication passes");
        cl.stop().await;
    });
}

/// The enrollment driver judges a token's lifetime on the server's one clock: on a fixed
/// clock a token is good until its last minute and refused (and audited) a minute after,
/// with no waiting in the test.
#[test]
fn enrollment_tokens_expire_on_the_servers_clock() {
    block_on(async {
        let cl = Cluster::start(Options {
            clock: Some(time::OffsetDateTime::now_utc()),
            ..Options::default()
        })
        .await;
        let clock = cl.clock.clone().expect("a fixed clock");
        let user = cl.user("clock-", &["device-enroll"]).await;
        let (early, late) = (unique("EARLY"), unique("LATE"));
        let (early_id, _) = cl.add_device(OsType::Linux, &early, None, false).await;
        let (late_id, _) = cl.add_device(OsType::Linux, &late, None, false).await;
        // Both tokens live one hour (3600 s) from the server's now.
        let early_token = cl.new_token(&early_id).await.expect("token");
        let late_token = cl.new_token(&late_id).await.expect("token");

        clock.advance(time::Duration::minutes(59));
        let key = DeviceKey::new();
        let init = enroll_init(&early_token, &key, data(OsType::Linux, &early));
        let enrolled = enroll_raw(&user.ch, init, |c| key.enroll_response(c)).await;
        assert!(enrolled.is_ok(), "59 minutes in: {enrolled:?}");

        clock.advance(time::Duration::minutes(2));
        let key = DeviceKey::new();
        let init = enroll_init(&late_token, &key, data(OsType::Linux, &late));
        let refused = enroll_raw(&user.ch, init, |c| key.enroll_response(c)).await;
        assert_status(
            refused,
            Code::PermissionDenied,
            "invalid device enrollment token",
        );
        cl.assert_failure_event(&user.name, EventType::DeviceEnroll, "token expired")
            .await;
        cl.stop().await;
    });
}
