//! The enrollment ceremony's driver: the I/O the pure state machine of `dt-ceremony` leaves
//! out. Read a message with a deadline, load what the step needs (the token, the device),
//! call `handle`, persist what it returns in one transaction with its audit event, reply.
//! Auto-enrollment issues its one-minute token here too.

use dt_ceremony::enroll::server as enroll;
use dt_ceremony::messages::{EnrollRequest, EnrollResponse};
use dt_ceremony::token::{EnrollTokenRecord, TokenDisposition};
use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::{Device, Verb};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::caller::Caller;
use crate::ceremony_wire::{CEREMONY_DEADLINE, FIRST_MESSAGE_DEADLINE, next_msg, out, status_for};
use crate::devices::{credential_key_index, device_info};
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::plan::{self, PlanError};
use crate::server::AuthServer;

impl AuthServer {
    /// Auto-enrollment checks (DESIGN.md §4): enabled, registered, not enrolled, an MDM
    /// profile that matches the live data. Each refusal is a `device.token.create` failure
    /// naming the check.
    pub(crate) async fn auto_enroll_token(
        &self,
        caller: &Caller,
        cap: &dt_types::ClusterAuthPreference,
        data: &dt_types::device::DeviceCollectedData,
    ) -> Result<(dt_ceremony::token::EnrollToken, EnrollTokenRecord), Status> {
        // The user learns which check failed; the values compared stay in the audit log.
        let refuse = |msg: String, detail: String, device: Option<Device>| async move {
            let mut e = AuditEvent::new(EventType::DeviceTokenCreate, false, self.env.now())
                .user(caller.name())
                .message(format!("auto-enrollment refused: {msg}{detail}"))
                .remote_addr(caller.peer.addr.ip().to_string());
            e.device = device.as_ref().map(device_info);
            self.audit.emit(e).await.map_err(ApiError::from)?;
            Err::<(dt_ceremony::token::EnrollToken, EnrollTokenRecord), Status>(
                Status::failed_precondition(format!("auto-enrollment refused: {msg}")),
            )
        };
        // No allow rule is needed, but an admin's deny on `device: enroll` stops it too.
        if let dt_authz::Decision::Deny(reason) =
            dt_authz::check_deny_rules(&caller.roles, "device", Verb::Enroll)
        {
            return refuse(
                format!("{reason} (a role denies it); ask an admin to enroll this device"),
                String::new(),
                None,
            )
            .await;
        }
        if !cap.spec.device_trust.auto_enroll {
            return refuse(
                "auto-enrollment is off; enroll with a token from an admin (dtctl devices enroll)"
                    .into(),
                String::new(),
                None,
            )
            .await;
        }
        let Some(os) = data.os_type else {
            return refuse(
                "the device did not report its OS".into(),
                String::new(),
                None,
            )
            .await;
        };
        let Some((device, _)) = self.device_by_tag(os, &data.serial_number).await? else {
            return refuse(
                format!(
                    "device {:?}/{os} is not registered in the inventory",
                    data.serial_number
                ),
                String::new(),
                None,
            )
            .await;
        };
        if device.spec.enroll_status == dt_types::device::EnrollStatus::Enrolled {
            return refuse(
                "the device is already enrolled".into(),
                String::new(),
                Some(device),
            )
            .await;
        }
        let Some(profile) = device.spec.profile.clone() else {
            return refuse(
                "the device has no MDM profile to compare with".into(),
                String::new(),
                Some(device),
            )
            .await;
        };
        let checks = [
            ("model", &profile.model_identifier, &data.model_identifier),
            ("OS version", &profile.os_version, &data.os_version),
            ("OS build", &profile.os_build, &data.os_build),
        ];
        for (what, want, got) in checks {
            if !want.is_empty() && want != got {
                return refuse(
                    format!("{what} does not match the MDM profile"),
                    format!(" (device {got:?}, profile {want:?})"),
                    Some(device),
                )
                .await;
            }
        }
        if !profile.os_usernames.is_empty() && !profile.os_usernames.contains(&data.os_username) {
            return refuse(
                format!(
                    "OS user {:?} is not listed in the MDM profile",
                    data.os_username
                ),
                String::new(),
                Some(device),
            )
            .await;
        }
        // The serial and profile values are no secret: only an MDM record that names this
        // user lets them claim the device (and become its owner).
        if cap.spec.device_trust.auto_enroll_require_user_match
            && !profile.names_user(caller.name())
        {
            return refuse(
                format!(
                    "the device's MDM profile does not name user {:?} (as assigned_user or in os_usernames); ask an admin to assign the device to you or for an enrollment token",
                    caller.name()
                ),
                String::new(),
                Some(device),
            )
            .await;
        }
        let mut env = self.env.ceremony();
        let device_id = device.device_id().map_err(ApiError::internal)?;
        let (token, record) = EnrollTokenRecord::issue(
            device_id,
            self.env.now(),
            time::Duration::minutes(1),
            &mut env,
        );
        self.audit
            .emit(
                AuditEvent::new(EventType::DeviceTokenCreate, true, self.env.now())
                    .user(caller.name())
                    .device(device_info(&device))
                    .message("auto-enrollment token issued"),
            )
            .await
            .map_err(ApiError::from)?;
        Ok((token, record))
    }

    pub(crate) async fn load_token(
        &self,
        hash: &str,
    ) -> ApiResult<Option<(EnrollTokenRecord, i64)>> {
        let Some(item) = self.backend.get(&keys::device_token(hash)).await? else {
            return Ok(None);
        };
        let r: EnrollTokenRecord =
            serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
        Ok(Some((r, item.revision)))
    }

    /// The enrollment ceremony, driven over one stream.
    pub(crate) async fn drive_enroll(
        &self,
        caller: &Caller,
        inbound: &mut Streaming<pb::EnrollDeviceRequest>,
        tx: &mpsc::Sender<Result<pb::EnrollDeviceResponse, Status>>,
    ) -> Result<(), Status> {
        // The enrolling user (the device's owner), checked before anything is read.
        let user = caller.user()?;
        let mut env = self.env.ceremony();
        let opened = tokio::time::Instant::now();
        let state = enroll::ExpectInit::new(&env);
        let now = self.env.now();
        let fail_event = |msg: String, device: Option<&Device>| {
            let mut e = AuditEvent::new(EventType::DeviceEnroll, false, self.env.now())
                .user(caller.name())
                .message(msg)
                .remote_addr(caller.peer.addr.ip().to_string());
            if let Some(d) = device {
                e.device = Some(device_info(d));
            }
            e
        };
        // Every refusal, even of an unreadable first message, leaves an event.
        let first =
            next_msg::<_, EnrollRequest>(inbound, opened + FIRST_MESSAGE_DEADLINE, "EnrollInit")
                .await
                .and_then(|req| {
                    enroll::ExpectInit::expect_message(req)
                        .map_err(|e| status_for(e.code(), e.user_message()))
                });
        let init = match first {
            Ok(init) => init,
            Err(status) => {
                self.audit
                    .emit(fail_event(status.message().to_string(), None))
                    .await
                    .map_err(ApiError::from)?;
                return Err(status);
            }
        };
        let mut init = init;
        let auto = init.token.expose().is_empty();
        if !auto && let Err(e) = self.authorize(caller, "device", Verb::Enroll) {
            self.audit
                .emit(fail_event(e.to_string(), None))
                .await
                .map_err(ApiError::from)?;
            return Err(e.into());
        }
        if let Err(msg) = self.ceremony_budget(caller.name()).await? {
            self.audit
                .emit(fail_event(msg.clone(), None))
                .await
                .map_err(ApiError::from)?;
            return Err(ApiError::TooMany(msg).into());
        }

        // Load what ExpectInit needs.
        let cap = self.cap().await?;
        let token = if auto {
            // Auto-enrollment: no token from the user; the server checks the device against
            // its MDM profile and, if it passes, issues a one-minute token in memory only.
            let (token, record) = self
                .auto_enroll_token(caller, &cap, &init.device_data)
                .await?;
            init.token = token;
            Some((record, 0))
        } else {
            match init.token.lookup_hash() {
                Some(h) => self.load_token(&h).await?,
                None => None,
            }
        };
        let device = match &token {
            Some((rec, _)) => self.get_device(rec.device_id.as_str()).await?,
            None => None,
        };
        let credential_in_use = self
            .backend
            .get(&keys::device_credential_index(&init.credential_id))
            .await
            .map_err(ApiError::from)?
            .is_some();
        let ctx = enroll::EnrollContext {
            user,
            settings: &cap.spec.device_trust,
            token: token.as_ref().map(|(r, _)| r),
            device: device.as_ref().map(|(d, _)| d),
            credential_id_in_use: credential_in_use,
            tpm: self.tpm_verifier(&cap),
        };
        let outcome = state.handle(init, &ctx, &mut env);

        // The token is spent at Init, whatever happens next: persist that first, together
        // with the failure event when Init itself failed.
        let spend = match (auto, &outcome.token, &token) {
            (false, TokenDisposition::Consume { spent_at, .. }, Some((rec, rev))) => {
                Some((rec, *rev, *spent_at))
            }
            _ => None,
        };
        let (next, challenge) = match outcome.result {
            Err(e) => {
                let event = fail_event(e.audit_message(), device.as_ref().map(|(d, _)| d));
                let Some((rec, rev, spent_at)) = spend else {
                    self.audit.emit(event).await.map_err(ApiError::from)?;
                    return Err(status_for(e.code(), e.user_message()));
                };
                let plan = plan::token_spent(rec, rev, spent_at, vec![event.clone()])
                    .map_err(ApiError::internal)?;
                match self.audit.write_plan(plan).await {
                    Ok(_) => {}
                    Err(PlanError::Refused(_)) => {
                        // Someone spent the token concurrently: still a token failure.
                        self.audit.emit(event).await.map_err(ApiError::from)?;
                    }
                    Err(PlanError::Store(e)) => return Err(ApiError::from(e).into()),
                }
                return Err(status_for(e.code(), e.user_message()));
            }
            Ok(ok) => ok,
        };
        if let Some((rec, rev, spent_at)) = spend {
            let plan =
                plan::token_spent(rec, rev, spent_at, Vec::new()).map_err(ApiError::internal)?;
            let result = self
                .backend
                .atomic_write(plan.conditions(), plan.ops.clone())
                .await;
            match plan.outcome(result) {
                Ok(_) => {}
                Err(PlanError::Refused(msg)) => {
                    self.audit
                        .emit(fail_event(
                            format!("{msg} (token already used, concurrently)"),
                            device.as_ref().map(|(d, _)| d),
                        ))
                        .await
                        .map_err(ApiError::from)?;
                    return Err(Status::permission_denied(msg));
                }
                Err(PlanError::Store(e)) => return Err(ApiError::from(e).into()),
            }
        }
        tx.send(out(&EnrollResponse::Challenge(challenge)))
            .await
            .map_err(|_| Status::cancelled("client left"))?;

        let (device_before, device_rev) = device
            .clone()
            .ok_or_else(|| ApiError::internal("device vanished"))?;
        let resp: EnrollRequest = match next_msg(
            inbound,
            opened + CEREMONY_DEADLINE,
            "EnrollChallengeResponse",
        )
        .await
        {
            Ok(r) => r,
            Err(status) => {
                // An unreadable answer is a failed enrollment too, with its reason.
                if status.code() == tonic::Code::InvalidArgument {
                    self.audit
                        .emit(fail_event(
                            status.message().to_string(),
                            Some(&device_before),
                        ))
                        .await
                        .map_err(ApiError::from)?;
                }
                return Err(status);
            }
        };
        let enrolled = match enroll::ExpectChallengeResponse::expect_message(resp)
            .and_then(|r| next.handle(r, &mut env))
        {
            Ok(e) => e,
            Err(e) => {
                self.audit
                    .emit(fail_event(e.audit_message(), Some(&device_before)))
                    .await
                    .map_err(ApiError::from)?;
                return Err(status_for(e.code(), e.user_message()));
            }
        };
        let mut d = enrolled.device.clone();
        d.spec.update_time = Some(now);
        let event = AuditEvent::new(EventType::DeviceEnroll, true, self.env.now())
            .user(caller.name())
            .device(device_info(&d))
            .remote_addr(caller.peer.addr.ip().to_string());
        // One public key, one device: a second credential id for the same key is refused.
        let key_index = d.spec.credential.as_ref().and_then(credential_key_index);
        let plan =
            plan::device_enrolled(&d, device_rev, key_index, event).map_err(ApiError::internal)?;
        match self.audit.write_plan(plan).await {
            Ok(_) => {}
            Err(PlanError::Refused(msg)) => {
                self.audit
                    .emit(fail_event(msg.into(), Some(&device_before)))
                    .await
                    .map_err(ApiError::from)?;
                return Err(Status::failed_precondition(msg));
            }
            Err(PlanError::Store(e)) => return Err(ApiError::from(e).into()),
        }
        tx.send(out(&EnrollResponse::Success(Box::new(enrolled.reply()))))
            .await
            .map_err(|_| Status::cancelled("client left"))?;
        Ok(())
    }
}
