//! Device web authentication (issue 15) against a real auth service over loopback mTLS
//! with SQLite: the web token's rules at `AuthenticateInit` and the confirmation's rules,
//! each refusal with the message a person reads and its audit event.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use dt_auth::device_web::{ConfirmRefused, IssuedWebToken, NoWebToken, WEB_TOKEN_TTL};
use dt_ceremony::messages::{DeviceConfirmationToken, DeviceWebToken};
use dt_types::audit::EventType;
use dt_types::device::AttestationType;
use dt_types::resource::{DeviceTrustMode, DeviceTrustSettings};
use support::*;

const LOCAL: &str = "127.0.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn web_token(cl: &Cluster, user: &User, session: &str, ttl: Duration) -> IssuedWebToken {
    cl.srv
        .create_device_web_token(&user.name, session, ip(LOCAL), ttl)
        .await
        .unwrap()
        .expect("a web token")
}

/// dtsh's half: the ceremony with the web token, over `user`'s mTLS channel.
async fn run_web(
    user: &User,
    dev: &EnrolledDevice,
    t: &IssuedWebToken,
) -> Result<DeviceConfirmationToken, dt_client::ClientError> {
    dt_client::devices::authenticate_web(
        user.ch.clone(),
        user.certs.clone(),
        dev.key.credential_id.clone(),
        AttestationType::Software,
        dev.data.clone(),
        DeviceWebToken {
            id: t.id.clone(),
            token: t.token.clone(),
        },
        |req| dev.key.prove(req),
    )
    .await
}

fn refused_with(r: Result<DeviceConfirmationToken, dt_client::ClientError>, needle: &str) {
    match r {
        Ok(_) => panic!("expected a refusal with {needle:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{e} should contain {needle:?}"
        ),
    }
}

#[test]
fn web_token_and_confirmation_happy_path_and_single_use() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let alice = cl.user("web-alice-", &["device-enroll"]).await;
        // No enrolled device yet: no token (the login goes on without a hand-off).
        let none = cl
            .srv
            .create_device_web_token(&alice.name, "s1", ip(LOCAL), WEB_TOKEN_TTL)
            .await
            .unwrap();
        assert_eq!(none.unwrap_err(), NoWebToken::NoEnrolledDevice);
        let dev = cl.enrolled_device(&alice).await;
        let t = web_token(&cl, &alice, "s1", WEB_TOKEN_TTL).await;
        let created = cl
            .events(&alice.name, EventType::DeviceWebTokenCreate)
            .await;
        assert!(created.last().unwrap().success);
        let stored = cl
            .srv
            .backend
            .get(&format!("/secrets/device_web_token/{}", t.id))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&stored.value).contains(&t.token),
            "the token is stored hashed"
        );

        // A wrong secret for the id: refused, the real token still works.
        let wrong = IssuedWebToken {
            id: t.id.clone(),
            token: "A".repeat(43),
        };
        refused_with(
            run_web(&alice, &dev, &wrong).await,
            "invalid, used or expired device web token",
        );
        let conf = run_web(&alice, &dev, &t).await.expect("web authentication");
        let ok = cl.events(&alice.name, EventType::DeviceAuthenticate).await;
        let last = ok.last().unwrap();
        assert!(last.success, "{last:?}");
        assert_eq!(last.device.as_ref().unwrap().device_id, dev.id);
        // The web token is spent.
        refused_with(
            run_web(&alice, &dev, &t).await,
            "invalid, used or expired device web token",
        );
        cl.assert_failure_event(
            &alice.name,
            EventType::DeviceAuthenticate,
            "invalid, used or expired device web token",
        )
        .await;

        // The browser of the same session, same IP: confirmed, once.
        let done = cl
            .srv
            .confirm_device_web(&conf.id, &conf.token, &alice.name, "s1", ip(LOCAL))
            .await
            .unwrap()
            .expect("confirmed");
        assert_eq!(done.device.device_id, dev.id);
        let again = cl
            .srv
            .confirm_device_web(&conf.id, &conf.token, &alice.name, "s1", ip(LOCAL))
            .await
            .unwrap();
        assert!(
            matches!(&again, Err(ConfirmRefused(m)) if m.contains("invalid, used or expired device confirmation token")),
            "{again:?}"
        );
        cl.stop().await;
    })
}

#[test]
fn web_tokens_refuse_other_users_expiry_and_devices_added_later() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let alice = cl.user("web-alice-", &["device-enroll"]).await;
        let bob = cl.user("web-bob-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&alice).await;
        let bobs = cl.enrolled_device(&bob).await;

        // Bob presents alice's token (with his own device): refused, and spent.
        let t = web_token(&cl, &alice, "s1", WEB_TOKEN_TTL).await;
        refused_with(run_web(&bob, &bobs, &t).await, "presented by user");
        cl.assert_failure_event(
            &bob.name,
            EventType::DeviceAuthenticate,
            &format!(
                "device web token of user {:?} presented by user {:?}",
                alice.name, bob.name
            ),
        )
        .await;
        refused_with(
            run_web(&alice, &dev, &t).await,
            "invalid, used or expired device web token",
        );

        // Expired.
        let t = web_token(&cl, &alice, "s2", Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        refused_with(
            run_web(&alice, &dev, &t).await,
            "invalid, used or expired device web token",
        );

        // A device alice enrolled after the web login cannot answer that login's token.
        let t = web_token(&cl, &alice, "s3", WEB_TOKEN_TTL).await;
        let later = cl.enrolled_device(&alice).await;
        refused_with(
            run_web(&alice, &later, &t).await,
            "was not one of your enrolled devices at web login",
        );

        // Mode off: no tokens at all.
        cl.set_device_trust(DeviceTrustSettings {
            mode: DeviceTrustMode::Off,
            allow_software_credentials: true,
            ..Default::default()
        })
        .await;
        let off = cl
            .srv
            .create_device_web_token(&alice.name, "s4", ip(LOCAL), WEB_TOKEN_TTL)
            .await
            .unwrap();
        assert_eq!(off.unwrap_err(), NoWebToken::DeviceTrustOff);
        cl.stop().await;
    })
}

#[test]
fn confirmations_need_the_same_session_user_and_ip() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let alice = cl.user("web-alice-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&alice).await;
        let confirmation = |session: &'static str| {
            let (cl, alice, dev) = (&cl, &alice, &dev);
            async move {
                let t = web_token(cl, alice, session, WEB_TOKEN_TTL).await;
                run_web(alice, dev, &t).await.expect("web authentication")
            }
        };
        let cases: [(&str, &str, &str, String); 3] = [
            (
                "another-session",
                "s1",
                LOCAL,
                "device confirmation token of another web session".to_string(),
            ),
            (
                "s1",
                "s1",
                "127.0.0.2",
                "IP mismatch: browser 127.0.0.2, device 127.0.0.1".to_string(),
            ),
            (
                "s1",
                "s1",
                LOCAL,
                "presented by a web session of user \"mallory\"".to_string(),
            ),
        ];
        for (i, (browser_session, token_session, browser_ip, needle)) in cases.iter().enumerate() {
            let conf = confirmation(if *token_session == "s1" { "s1" } else { "s2" }).await;
            let user = if i == 2 {
                "mallory"
            } else {
                alice.name.as_str()
            };
            let r = cl
                .srv
                .confirm_device_web(&conf.id, &conf.token, user, browser_session, ip(browser_ip))
                .await
                .unwrap();
            assert!(
                matches!(&r, Err(ConfirmRefused(m)) if m.contains(needle.as_str())),
                "{r:?} should say {needle:?}"
            );
            cl.assert_failure_event(user, EventType::DeviceAuthenticateConfirm, needle)
                .await;
            // Spent by the refusal.
            let r = cl
                .srv
                .confirm_device_web(&conf.id, &conf.token, &alice.name, "s1", ip(LOCAL))
                .await
                .unwrap();
            assert!(r.is_err(), "a refused confirmation is not retried: {r:?}");
        }
        cl.stop().await;
    })
}
