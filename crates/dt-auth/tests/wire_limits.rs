//! Issue 10, item 3, on the in-process server: the wire takes what dt-ceremony's limits
//! allow and refuses one byte more, naming the field. A TPM answer carrying a 512 KiB event
//! log reaches the state machine (which then refuses it for being a TPM answer to a P-256
//! challenge, not for its size); one byte more is refused by the conversion, with a failed
//! audit event, and the device record is untouched. (The full TPM path with such logs runs
//! on swtpm in `crates/dt-e2e/tests/tpm_event_log.rs`.)
// Test code: unwrap and panic are how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dt_ceremony::limits::MAX_TPM_EVENT_LOG_LEN;
use dt_ceremony::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateRequest, AuthenticateResponse,
};
use dt_ceremony::tpm::{TpmAuthenticateChallengeResponse, TpmPlatformParameters, TpmQuote};
use dt_types::audit::EventType;
use support::*;
use tonic::Code;

fn tpm_answer(event_log_len: usize) -> AuthenticateChallengeResponse {
    AuthenticateChallengeResponse::Tpm(TpmAuthenticateChallengeResponse {
        platform_parameters: TpmPlatformParameters {
            quote: TpmQuote {
                attest: vec![1; 128],
                signature: vec![2; 72],
                pcrs: Vec::new(),
            },
            event_log: Some(vec![0xee; event_log_len]),
        },
    })
}

/// Authenticates `dev` up to its challenge, then answers with `answer`.
async fn answer_with(
    u: &User,
    dev: &EnrolledDevice,
    answer: AuthenticateChallengeResponse,
) -> Result<AuthenticateResponse, tonic::Status> {
    let mut raw = RawAuthenticate::open_authenticate(&u.ch)
        .await
        .expect("open");
    raw.send(&AuthenticateRequest::Init(Box::new(authn_init(
        &u.certs,
        &dev.key.credential_id,
        dev.data.clone(),
    ))))
    .await;
    match raw.recv::<AuthenticateResponse>().await.expect("challenge") {
        AuthenticateResponse::Challenge(AuthenticateChallenge::P256 { .. }) => {}
        other => panic!("expected a p256 challenge, got {other:?}"),
    }
    raw.send(&AuthenticateRequest::ChallengeResponse(answer))
        .await;
    raw.recv::<AuthenticateResponse>().await
}

#[test]
fn an_event_log_at_the_limit_crosses_the_wire() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("evlog-at-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let r = answer_with(&u, &dev, tpm_answer(MAX_TPM_EVENT_LOG_LEN)).await;
        // Judged by the state machine, so it went through the size checks.
        assert_status(
            r,
            Code::InvalidArgument,
            "is a tpm answer to a p256 challenge",
        );
    })
}

#[test]
fn one_byte_over_the_event_log_limit_is_refused_and_audited() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("evlog-over-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let want = format!(
            "tpm.event_log is {} bytes, more than the {MAX_TPM_EVENT_LOG_LEN} accepted",
            MAX_TPM_EVENT_LOG_LEN + 1
        );
        let r = answer_with(&u, &dev, tpm_answer(MAX_TPM_EVENT_LOG_LEN + 1)).await;
        assert_status(r, Code::InvalidArgument, &want);
        let ev = cl
            .assert_failure_event(&u.name, EventType::DeviceAuthenticate, &want)
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(dev.id.clone()));
        // The device still authenticates afterwards.
        let certs = authenticate_raw(
            &u.ch,
            authn_init(&u.certs, &dev.key.credential_id, dev.data.clone()),
            |c| dev.key.authn_response(c),
        )
        .await
        .expect("a proper answer still works");
        assert!(!certs.x509_der.is_empty());
    })
}
