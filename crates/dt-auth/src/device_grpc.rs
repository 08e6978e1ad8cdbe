//! The `DeviceTrustService` gRPC handlers, thin: the inventory calls go to `devices`, the
//! two ceremony streams to their drivers (`enroll_driver`, `authn_driver`) under the
//! ceremony deadline.

use std::sync::Arc;
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_server::DeviceTrustService;
use dt_types::audit::EventType;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::caller::peer_of;
use crate::ceremony_wire::{CEREMONY_DEADLINE, CeremonyStream};
use crate::devices::{device_from_proto, device_to_proto};
use crate::server::AuthServer;

#[derive(Clone)]
pub struct GrpcDevices {
    pub srv: Arc<AuthServer>,
}

#[tonic::async_trait]
impl DeviceTrustService for GrpcDevices {
    async fn create_device(
        &self,
        req: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::CreateDeviceResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let req = req.into_inner();
        let device = device_from_proto(req.device)?;
        let ttl = req
            .create_enroll_token
            .then(|| Duration::from_secs(req.enroll_token_ttl_seconds));
        let (d, rev, token) = self.srv.create_device(&caller, device, ttl).await?;
        Ok(Response::new(pb::CreateDeviceResponse {
            device: Some(device_to_proto(&d, rev)?),
            enroll_token: token,
        }))
    }

    async fn update_device(
        &self,
        req: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let req = req.into_inner();
        let device = device_from_proto(req.device)?;
        let (d, rev) = self
            .srv
            .update_device(&caller, device, req.expected_revision)
            .await?;
        Ok(Response::new(device_to_proto(&d, rev)?))
    }

    async fn delete_device(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::DeleteDeviceResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let d = self.srv.delete_device(&caller, req.get_ref()).await?;
        Ok(Response::new(pb::DeleteDeviceResponse {
            device_id: d.metadata.name,
            asset_tag: d.spec.asset_tag,
        }))
    }

    async fn find_devices(
        &self,
        req: Request<pb::FindDevicesRequest>,
    ) -> Result<Response<pb::FindDevicesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let found = self
            .srv
            .find_readable_devices(&caller, &req.get_ref().id_or_tag)
            .await?;
        Ok(Response::new(pb::FindDevicesResponse {
            devices: found
                .iter()
                .map(|(d, r)| device_to_proto(d, *r))
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn get_device(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::Device>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let (d, rev) = self.srv.read_device(&caller, req.get_ref()).await?;
        Ok(Response::new(device_to_proto(&d, rev)?))
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let r = req.get_ref();
        let (devices, next) = self
            .srv
            .list_devices(&caller, r.page_size as usize, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices
                .iter()
                .map(|(d, r)| device_to_proto(d, *r))
                .collect::<Result<_, _>>()?,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn bulk_create_devices(
        &self,
        req: Request<pb::BulkCreateDevicesRequest>,
    ) -> Result<Response<pb::BulkCreateDevicesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let statuses = self
            .srv
            .bulk_create_devices(&caller, req.into_inner().devices)
            .await?;
        Ok(Response::new(pb::BulkCreateDevicesResponse { statuses }))
    }

    async fn create_device_enroll_token(
        &self,
        req: Request<pb::CreateDeviceEnrollTokenRequest>,
    ) -> Result<Response<pb::DeviceEnrollToken>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let r = req.into_inner();
        let dref = r.device.unwrap_or_default();
        let token = self
            .srv
            .create_enroll_token(&caller, &dref, Duration::from_secs(r.ttl_seconds))
            .await?;
        Ok(Response::new(token))
    }

    type EnrollDeviceStream = CeremonyStream<pb::EnrollDeviceResponse>;

    async fn enroll_device(
        &self,
        req: Request<Streaming<pb::EnrollDeviceRequest>>,
    ) -> Result<Response<Self::EnrollDeviceStream>, Status> {
        let caller = self
            .srv
            .ceremony_caller(peer_of(&req)?, EventType::DeviceEnroll)
            .await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let srv = self.srv.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // Boxed: the driver's state is large, and a task moves its future whole
            // (into the task cell, and again on completion); a box moves as a pointer.
            let run = Box::pin(srv.drive_enroll(&caller, &mut inbound, &tx));
            let result = match tokio::time::timeout(CEREMONY_DEADLINE, run).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(
                    "the enrollment took longer than 60 s; start again",
                )),
            };
            srv.metrics
                .ceremony("enroll", result.as_ref().map(|_| ()), started.elapsed());
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type AuthenticateDeviceStream = CeremonyStream<pb::AuthenticateDeviceResponse>;

    async fn authenticate_device(
        &self,
        req: Request<Streaming<pb::AuthenticateDeviceRequest>>,
    ) -> Result<Response<Self::AuthenticateDeviceStream>, Status> {
        let caller = self
            .srv
            .ceremony_caller(peer_of(&req)?, EventType::DeviceAuthenticate)
            .await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let srv = self.srv.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let run = Box::pin(srv.drive_authenticate(&caller, &mut inbound, &tx));
            let result = match tokio::time::timeout(CEREMONY_DEADLINE, run).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(
                    "device authentication took longer than 60 s; try again",
                )),
            };
            srv.metrics.ceremony(
                "authenticate",
                result.as_ref().map(|_| ()),
                started.elapsed(),
            );
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
