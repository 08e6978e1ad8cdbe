//! Driver of the device authentication ceremony (DESIGN.md §4): the user comes from the
//! mTLS certificate; the pure state machine decides; on success the device's collected-data
//! history is written with its audit event, and dt-ca re-issues the same certificates with
//! the device added.

use dt_ceremony::authn::server as authn;
use dt_ceremony::authn::server::{CertView, DeviceBinding, MtlsIdentity};
use dt_ceremony::messages::{AuthenticateResponse, AuthenticateSuccess, UserCertificates};
use dt_proto::v1 as pb;
use dt_types::Device;
use dt_types::audit::{AuditEvent, CertInfo, DeviceInfo, EventType};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::caller::Caller;
use crate::ceremony_wire::{CEREMONY_DEADLINE, FIRST_MESSAGE_DEADLINE, next_msg, status_for};
use crate::devices::device_info;
use crate::error::ApiError;
use crate::plan::{self, PlanError};
use crate::server::AuthServer;

fn fingerprint(point: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(point)))
}

fn binding(id: &dt_ca::Identity) -> Option<DeviceBinding> {
    id.device.as_ref().map(|d| DeviceBinding {
        device_id: d.device_id.clone(),
        asset_tag: d.asset_tag.clone(),
        credential_id: d.credential_id.clone(),
    })
}

/// The verified view of an X.509 user certificate: identity (its `user` checked by the
/// caller) and key fingerprint.
fn x509_view(id: &dt_ca::Identity, der: &[u8]) -> Result<CertView, Status> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| Status::invalid_argument("unreadable client certificate"))?;
    Ok(CertView {
        user: id.username.clone(),
        roles: id.roles.clone(),
        public_key_fingerprint: fingerprint(
            &cert.tbs_certificate.subject_pki.subject_public_key.data,
        ),
        device: binding(id),
    })
}

fn out(v: &AuthenticateResponse) -> Result<pb::AuthenticateDeviceResponse, Status> {
    Ok(pb::AuthenticateDeviceResponse::from(v))
}

impl AuthServer {
    pub(crate) async fn drive_authenticate(
        &self,
        caller: &Caller,
        inbound: &mut Streaming<pb::AuthenticateDeviceRequest>,
        tx: &mpsc::Sender<Result<pb::AuthenticateDeviceResponse, Status>>,
    ) -> Result<(), Status> {
        // The user whose certificates are augmented, checked before anything is read.
        let user = caller.user()?;
        let identity = caller.identity()?;
        let mut env = self.env.ceremony();
        let opened = tokio::time::Instant::now();
        let state = authn::ExpectInit::new(&env);
        let fail = |msg: String, device: Option<DeviceInfo>| {
            let mut e = AuditEvent::new(EventType::DeviceAuthenticate, false, self.env.now())
                .user(caller.name())
                .message(msg)
                .remote_addr(caller.peer.addr.ip().to_string());
            e.device = device;
            e
        };
        let req = match next_msg(inbound, opened + FIRST_MESSAGE_DEADLINE, "AuthenticateInit").await
        {
            Ok(r) => r,
            Err(status) => {
                // An unreadable message is a failed authentication too, with its reason.
                if status.code() == tonic::Code::InvalidArgument {
                    self.audit
                        .emit(fail(status.message().to_string(), None))
                        .await
                        .map_err(ApiError::from)?;
                }
                return Err(status);
            }
        };
        let init = authn::ExpectInit::expect_message(req)
            .map_err(|e| status_for(e.code(), e.user_message()))?;
        if let Err(msg) = self.ceremony_budget(caller.name()).await? {
            self.audit
                .emit(fail(msg.clone(), None))
                .await
                .map_err(ApiError::from)?;
            return Err(ApiError::TooMany(msg).into());
        }

        // Device web authentication: the web login's token is spent here, at Init.
        let web = match &init.device_web_token {
            None => None,
            Some(t) => match self.spend_device_web_token(user, t).await? {
                Ok(record) => Some(record),
                Err(msg) => {
                    self.audit
                        .emit(fail(format!("device web authentication: {msg}"), None))
                        .await
                        .map_err(ApiError::from)?;
                    return Err(Status::permission_denied(msg));
                }
            },
        };
        if init.user_certificates.ssh_authorized_key.is_none() {
            let msg = "send your SSH certificate with AuthenticateInit: both certificates are augmented together";
            self.audit
                .emit(fail(msg.into(), None))
                .await
                .map_err(ApiError::from)?;
            return Err(Status::invalid_argument(msg));
        }
        let now = self.env.now();
        let user_cert = caller.peer.user_cert.clone().ok_or_else(|| {
            Status::unauthenticated("device authentication needs your login certificate (mTLS)")
        })?;
        let mtls = MtlsIdentity {
            x509_der: user_cert.der().to_vec(),
            certificate: x509_view(identity, user_cert.der())?,
        };
        // The in-band SSH certificate must be ours, valid now, and readable.
        let ssh_cert = match &init.user_certificates.ssh_authorized_key {
            Some(text) => {
                let cert = dt_ca::certificate_from_openssh(text).map_err(|_| {
                    Status::invalid_argument("the SSH certificate is not an OpenSSH certificate")
                })?;
                // Verified once: augmentation below takes this proof instead of
                // checking the signature again.
                // A key id that is not a user name is refused like a bad signature
                // (dt-ca reads it as a `UserName` or not at all).
                match self.user_ca.verify_ssh_user(&cert, now) {
                    Ok(verified) => {
                        let id = verified.identity();
                        let point = cert
                            .public_key()
                            .ecdsa()
                            .map(|k| k.as_sec1_bytes().to_vec())
                            .unwrap_or_default();
                        let view = CertView {
                            user: id.username.clone(),
                            roles: id.roles.clone(),
                            public_key_fingerprint: fingerprint(&point),
                            device: binding(id),
                        };
                        Some((verified, view))
                    }
                    Err(e) => {
                        let msg = format!("the SSH certificate was refused: {e}");
                        self.audit
                            .emit(fail(msg.clone(), None))
                            .await
                            .map_err(ApiError::from)?;
                        return Err(Status::permission_denied(msg));
                    }
                }
            }
            None => None,
        };
        let cap = self.cap().await?;
        let device = match init.device_data.os_type {
            Some(os) => {
                self.device_by_tag(os, &init.device_data.serial_number)
                    .await?
            }
            None => None,
        };
        let locks = self.active_locks().await?;
        let ctx = authn::AuthnContext {
            settings: &cap.spec.device_trust,
            identity: &mtls,
            ssh_certificate: ssh_cert.as_ref().map(|(_, v)| v),
            device: device.as_ref().map(|(d, _)| d),
            locks: &locks,
            tpm: self.tpm_verifier(&cap),
        };
        let dev_info = device.as_ref().map(|(d, _)| device_info(d));
        if let (Some(record), Some((d, _))) = (&web, &device)
            && !AuthServer::web_token_allows_device(record, &d.metadata.name)
        {
            let msg = format!(
                "device web authentication: device {:?} was not one of your enrolled devices at web login; log in to the web UI again",
                d.spec.asset_tag
            );
            self.audit
                .emit(fail(msg.clone(), dev_info))
                .await
                .map_err(ApiError::from)?;
            return Err(Status::permission_denied(msg));
        }
        let (next, challenge) = match state.handle(init, &ctx, &mut env) {
            Ok(x) => x,
            Err(e) => {
                self.audit
                    .emit(fail(e.audit_message(), dev_info))
                    .await
                    .map_err(ApiError::from)?;
                return Err(status_for(e.code(), e.user_message()));
            }
        };
        // Opt-in: the allowed EK CAs of today, not only those of enrollment day.
        if cap.spec.device_trust.ekcert_check_at_authentication
            && let Some(cred) = device
                .as_ref()
                .and_then(|(d, _)| d.spec.credential.as_ref())
            && let Err(e) = dt_ceremony::tpm::recheck_ek_cert(
                cred,
                &cap.spec.device_trust.ekcert_allowed_cas,
                now,
            )
        {
            let msg =
                format!("device authentication refused by ekcert_check_at_authentication: {e}");
            self.audit
                .emit(fail(msg.clone(), dev_info))
                .await
                .map_err(ApiError::from)?;
            return Err(Status::permission_denied(msg));
        }
        tx.send(out(&AuthenticateResponse::Challenge(challenge)))
            .await
            .map_err(|_| Status::cancelled("client left"))?;

        let req = match next_msg(
            inbound,
            opened + CEREMONY_DEADLINE,
            "AuthenticateChallengeResponse",
        )
        .await
        {
            Ok(r) => r,
            Err(status) => {
                if status.code() == tonic::Code::InvalidArgument {
                    self.audit
                        .emit(fail(status.message().to_string(), dev_info))
                        .await
                        .map_err(ApiError::from)?;
                }
                return Err(status);
            }
        };
        let outcome = match authn::ExpectChallengeResponse::expect_message(req)
            .and_then(|r| next.handle(r, &mut env))
        {
            Ok(o) => o,
            Err(e) => {
                self.audit
                    .emit(fail(e.audit_message(), dev_info))
                    .await
                    .map_err(ApiError::from)?;
                return Err(status_for(e.code(), e.user_message()));
            }
        };
        // A lock created while the device was answering must still win.
        let locks = self.active_locks().await?;
        let role_names: Vec<&str> = identity.roles.iter().map(String::as_str).collect();
        let device_id = outcome.augment.device.device_id.clone();
        for ctx in [
            dt_authz::LockContext {
                user: Some(caller.name()),
                roles: &role_names,
                ..Default::default()
            },
            dt_authz::LockContext {
                device: Some(device_id.as_str()),
                ..Default::default()
            },
        ] {
            if let Some(lock) = dt_authz::first_matching_lock(&locks, &ctx) {
                let msg = crate::login::lock_message(lock);
                self.audit
                    .emit(fail(msg.clone(), dev_info.clone()))
                    .await
                    .map_err(ApiError::from)?;
                return Err(Status::permission_denied(msg));
            }
        }
        if let Some(record) = web {
            return self
                .finish_web(caller, &record, outcome, device, now, tx)
                .await;
        }
        let Some((ssh, _)) = ssh_cert else {
            return Err(Status::invalid_argument(
                "send your SSH certificate with AuthenticateInit",
            ));
        };
        let rev = device
            .as_ref()
            .map(|(_, rev)| *rev)
            .ok_or_else(|| ApiError::internal("device vanished"))?;
        let mut d: Device = outcome.device;
        d.spec.update_time = Some(now);
        let ext = dt_ca::DeviceExt {
            device_id: outcome.augment.device.device_id.clone(),
            asset_tag: outcome.augment.device.asset_tag.clone(),
            credential_id: outcome.augment.device.credential_id.clone(),
            posture: crate::devices::posture_at_authentication(&d, now),
        };
        let (new_ssh, new_x509) = self
            .user_ca
            .augment_verified(&ssh, &user_cert, &ext, now)
            .map_err(|e| {
                Status::permission_denied(format!("certificates can't be augmented: {e}"))
            })?;
        let events = vec![
            AuditEvent::new(EventType::DeviceAuthenticate, true, now)
                .user(caller.name())
                .device(device_info(&d))
                .remote_addr(caller.peer.addr.ip().to_string()),
            AuditEvent::new(EventType::CertCreate, true, now)
                .user(caller.name())
                .device(device_info(&d))
                .cert(CertInfo {
                    cert_type: if identity.bot {
                        "bot".into()
                    } else {
                        "user".into()
                    },
                    serial: String::new(),
                    roles: identity.roles.clone(),
                    logins: identity.logins.clone(),
                    not_after: identity.not_after,
                })
                .message("certificates augmented with the device"),
        ];
        // The new collected-data history and both events in one transaction.
        let plan = plan::device_authenticated(&d, rev, events).map_err(ApiError::internal)?;
        match self.audit.write_plan(plan).await {
            Ok(_) => {}
            Err(PlanError::Refused(msg)) => {
                self.audit
                    .emit(fail(msg.into(), Some(device_info(&d))))
                    .await
                    .map_err(ApiError::from)?;
                return Err(Status::aborted(msg));
            }
            Err(PlanError::Store(e)) => return Err(ApiError::from(e).into()),
        }
        let ssh_text = dt_ca::certificate_to_openssh(&new_ssh).map_err(ApiError::internal)?;
        tx.send(out(&AuthenticateResponse::Success(AuthenticateSuccess {
            user_certificates: UserCertificates {
                x509_der: new_x509,
                ssh_authorized_key: Some(ssh_text),
            },
        })))
        .await
        .map_err(|_| Status::cancelled("client left"))?;
        Ok(())
    }

    /// The end of a device web authentication: the device's new history, a confirmation
    /// token for the browser and the event in one transaction; no certificate changes.
    async fn finish_web(
        &self,
        caller: &Caller,
        record: &crate::device_web::WebTokenRecord,
        outcome: authn::AuthnOutcome,
        device: Option<(Device, i64)>,
        now: OffsetDateTime,
        tx: &mpsc::Sender<Result<pb::AuthenticateDeviceResponse, Status>>,
    ) -> Result<(), Status> {
        let (_, rev) = device.ok_or_else(|| ApiError::internal("device vanished"))?;
        let mut d: Device = outcome.device;
        d.spec.update_time = Some(now);
        let ip = caller.peer.addr.ip();
        let (confirm_op, confirmation) = self.issue_confirmation(record, device_info(&d), ip)?;
        let event = AuditEvent::new(EventType::DeviceAuthenticate, true, now)
            .user(caller.name())
            .device(device_info(&d))
            .message("device web authentication: the browser session may now confirm")
            .remote_addr(ip.to_string());
        let plan = plan::device_web_authenticated(&d, rev, confirm_op, event)
            .map_err(ApiError::internal)?;
        match self.audit.write_plan(plan).await {
            Ok(_) => {}
            Err(PlanError::Refused(msg)) => return Err(Status::aborted(msg)),
            Err(PlanError::Store(e)) => return Err(ApiError::from(e).into()),
        }
        tx.send(out(&AuthenticateResponse::WebConfirmation(confirmation)))
            .await
            .map_err(|_| Status::cancelled("client left"))?;
        Ok(())
    }
}
