//! The cluster as a user reaches it: logging in, and the calls a logged-in profile makes over
//! one mutual-TLS channel. `dtsh` goes through here rather than building requests itself, so
//! a request's shape, its ordering of results and its failover live in one place.
//!
//! Every call that may be repeated is repeated on the next auth server when the connection
//! broke ([`with_failover`]); a refusal by the server never is.

use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::ServiceKind;
use dt_types::device::OsType;
use tonic::transport::Channel;

use crate::connect::{ClientError, Identity, channel, connect, with_failover};
use crate::profile::{Profile, ProfileError, ProfileStore};
use crate::trust::TrustPolicy;

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("a message that does not fit the API: {0}")]
    Proto(#[from] dt_proto::ProtoError),
    #[error("the server answered without {0}")]
    Missing(&'static str),
}

impl SessionError {
    /// The server could not be reached (as opposed to a refusal).
    pub fn is_transport(&self) -> bool {
        matches!(self, SessionError::Client(e) if e.is_transport())
    }
}

fn api(s: tonic::Status) -> SessionError {
    SessionError::Client(ClientError::from_status(s))
}

/// Logs in on an anonymous connection (password, signup token or bot token, as `request`
/// says) and returns the certificates.
pub async fn login(
    proxy: &str,
    policy: TrustPolicy,
    request: pb::LoginRequest,
) -> Result<pb::LoginResponse, ClientError> {
    let client = with_failover(ClientError::is_transport, || {
        connect(proxy, policy.clone(), Identity::Anonymous)
    })
    .await?;
    with_failover(ClientError::is_transport, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            Ok(client
                .login(request)
                .await
                .map_err(ClientError::from_status)?
                .into_inner())
        }
    })
    .await
}

/// A logged-in profile and its channel to the auth service.
#[derive(Clone)]
pub struct Session {
    profile: Profile,
    channel: Channel,
}

impl Session {
    /// The current profile's session (`dtsh login` chose it).
    pub async fn current(store: &ProfileStore) -> Result<Session, SessionError> {
        let profile = store.current()?;
        Session::open(store, profile).await
    }

    /// `profile`'s session: its certificate as client identity, the server checked against
    /// its CA pin (or not at all when it was saved with `--insecure`).
    pub async fn open(store: &ProfileStore, profile: Profile) -> Result<Session, SessionError> {
        let id = store.identity(&profile)?;
        let policy = if profile.insecure {
            TrustPolicy::Insecure
        } else {
            TrustPolicy::Pin(profile.ca_pin.clone())
        };
        let channel = with_failover(ClientError::is_transport, || {
            channel(&profile.proxy, policy.clone(), id.clone())
        })
        .await?;
        Ok(Session { profile, channel })
    }

    /// The profile the session belongs to.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The channel, for the ceremony drivers ([`crate::devices`]).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Who the server says the user is, with the cluster's device trust requirements.
    pub async fn who_am_i(&self) -> Result<pb::WhoAmIResponse, SessionError> {
        let ch = self.channel.clone();
        with_failover(SessionError::is_transport, || {
            let mut client = AuthServiceClient::new(ch.clone());
            async move {
                Ok(client
                    .who_am_i(pb::WhoAmIRequest {})
                    .await
                    .map_err(api)?
                    .into_inner())
            }
        })
        .await
    }

    /// The SSH nodes the user may see, by name.
    pub async fn nodes(&self) -> Result<Vec<pb::NodeInfo>, SessionError> {
        let mut nodes = NodeServiceClient::new(self.channel.clone())
            .list_nodes(pb::ListNodesRequest {})
            .await
            .map_err(api)?
            .into_inner()
            .nodes;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// The resources of `kind` the user may see (apps, databases, Kubernetes clusters...)
    /// with the access points serving each, by name.
    pub async fn served(
        &self,
        kind: ServiceKind,
    ) -> Result<Vec<pb::ServedResourceInfo>, SessionError> {
        let mut rs = NodeServiceClient::new(self.channel.clone())
            .list_served_resources(pb::ListServedResourcesRequest {
                kind: kind.as_str().into(),
            })
            .await
            .map_err(api)?
            .into_inner()
            .resources;
        rs.sort_by(|a, b| {
            let name = |x: &pb::ServedResourceInfo| x.resource.as_ref().map(|r| r.name.clone());
            name(a).cmp(&name(b))
        });
        Ok(rs)
    }

    /// Self-enrollment: registers this device in the inventory (or finds it there by its
    /// asset tag) and returns an enrollment token for it, valid `ttl_seconds`, and whether
    /// the device was new.
    pub async fn register_device(
        &self,
        os: OsType,
        asset_tag: &str,
        ttl_seconds: u64,
    ) -> Result<(String, bool), SessionError> {
        let mut c = DeviceTrustServiceClient::new(self.channel.clone());
        let device = dt_types::device::new_device(os, asset_tag);
        match c
            .create_device(pb::CreateDeviceRequest {
                device: Some(pb::Device::try_from(&device)?),
                create_enroll_token: true,
                enroll_token_ttl_seconds: ttl_seconds,
            })
            .await
        {
            Ok(r) => {
                let t = r
                    .into_inner()
                    .enroll_token
                    .ok_or(SessionError::Missing("an enrollment token"))?;
                Ok((t.token, true))
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let t = c
                    .create_device_enroll_token(pb::CreateDeviceEnrollTokenRequest {
                        device: Some(pb::DeviceRef {
                            asset_tag: asset_tag.into(),
                            os_type: pb::OsType::from(os).into(),
                            device_id: String::new(),
                        }),
                        ttl_seconds,
                    })
                    .await
                    .map_err(api)?
                    .into_inner();
                Ok((t.token, false))
            }
            Err(s) => Err(api(s)),
        }
    }
}
