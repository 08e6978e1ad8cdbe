//! The database CA's certificates ([`dt_proto::v1::database_service_server`]):
//!
//! - **SignDatabaseServer** (`dtctl auth sign --format=db`): a server certificate for a
//!   database server's key. The caller's roles must allow `create` on `db_certificate`
//!   (`editor` does). The private key never leaves the operator's machine: only the public
//!   key comes here.
//! - **SignDatabaseClient**: a client certificate for one database user, valid for
//!   [`DB_CLIENT_CERT_TTL`], for a joined database access point only. It asks for one per
//!   upstream connection, after its decision allowed the user to log in as that database
//!   user.
//!
//! Both leave a `cert.create` audit event that names the hosts or the database user.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_proto::v1::database_service_server::DatabaseService;
use dt_types::Verb;
use dt_types::audit::{AuditEvent, EventType};
use tonic::{Request, Response, Status};

use crate::caller::peer_of;
use crate::error::{ApiError, ApiResult};
use crate::server::AuthServer;

/// How long a database server certificate lasts when the caller names no TTL.
pub const DB_SERVER_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long an access point's upstream client certificate lasts.
pub const DB_CLIENT_CERT_TTL: Duration = Duration::from_secs(10 * 60);

pub struct GrpcDatabases {
    pub srv: Arc<AuthServer>,
}

/// `hosts` split into DNS names and IP addresses.
fn split_hosts(hosts: &[String]) -> ApiResult<(Vec<String>, Vec<IpAddr>)> {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for h in hosts {
        let h = h.trim();
        if h.is_empty() {
            continue;
        }
        match h.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(h.to_ascii_lowercase()),
        }
    }
    if dns.is_empty() && ips.is_empty() {
        return Err(ApiError::InvalidArgument(
            "name the database server's host names or addresses (--host=db.example.com,10.0.0.5)"
                .into(),
        ));
    }
    Ok((dns, ips))
}

impl AuthServer {
    pub async fn sign_database_server(
        &self,
        caller: &crate::caller::Caller,
        req: pb::SignDatabaseServerRequest,
    ) -> ApiResult<pb::SignDatabaseServerResponse> {
        self.authorize(caller, "db_certificate", Verb::Create)?;
        let (dns, ips) = split_hosts(&req.hosts)?;
        let ttl = match req.ttl_seconds {
            0 => DB_SERVER_CERT_TTL,
            s => Duration::from_secs(s),
        };
        let not_after = self.env.now() + ttl;
        let cert = self
            .db_ca
            .issue_db_server_cert(&req.public_key_der, &dns, &ips, not_after)
            .map_err(|e| ApiError::InvalidArgument(format!("cannot sign this key: {e}")))?;
        self.audit
            .emit(
                AuditEvent::new(EventType::CertCreate, true, self.env.now())
                    .user(caller.name())
                    .message(format!(
                        "database server certificate for {} until {}",
                        req.hosts.join(","),
                        not_after.unix_timestamp()
                    ))
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await?;
        Ok(pb::SignDatabaseServerResponse {
            cert_der: cert,
            ca_cert_der: self.db_ca.cert_der().to_vec(),
            expires_unix: not_after.unix_timestamp(),
        })
    }
}

impl AuthServer {
    pub async fn sign_database_client(
        &self,
        service: &dt_ca::NodeIdentity,
        peer: &crate::listener::Peer,
        req: pb::SignDatabaseClientRequest,
    ) -> ApiResult<pb::SignDatabaseClientResponse> {
        if service.kind != dt_types::ServiceKind::Db {
            return Err(ApiError::PermissionDenied(format!(
                "only database access points get database client certificates; {:?} joined as {}",
                service.name, service.kind
            )));
        }
        let now = self.env.now();
        if now >= service.not_after {
            return Err(ApiError::Unauthenticated(format!(
                "the certificate of {:?} expired; join it again",
                service.name
            )));
        }
        let not_after = now + DB_CLIENT_CERT_TTL;
        let cert = self
            .db_ca
            .issue_db_client_cert(&req.public_key_der, &req.db_user, not_after)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let mut event = AuditEvent::new(EventType::CertCreate, true, now)
            .user(&service.name)
            .message(format!(
                "database client certificate for db user {:?}",
                req.db_user
            ))
            .remote_addr(peer.addr.ip().to_string());
        event.node = Some(service.name.clone());
        self.audit.emit(event).await?;
        Ok(pb::SignDatabaseClientResponse {
            cert_der: cert,
            ca_cert_der: self.db_ca.cert_der().to_vec(),
            expires_unix: not_after.unix_timestamp(),
        })
    }
}

#[tonic::async_trait]
impl DatabaseService for GrpcDatabases {
    async fn sign_database_server(
        &self,
        req: Request<pb::SignDatabaseServerRequest>,
    ) -> Result<Response<pb::SignDatabaseServerResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv
                .sign_database_server(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn sign_database_client(
        &self,
        req: Request<pb::SignDatabaseClientRequest>,
    ) -> Result<Response<pb::SignDatabaseClientResponse>, Status> {
        let peer = peer_of(&req)?;
        let service = peer.node.clone().ok_or_else(|| {
            ApiError::Unauthenticated(
                "database client certificates are for joined database access points (`devtrust db start --token`)"
                    .into(),
            )
        })?;
        Ok(Response::new(
            self.srv
                .sign_database_client(&service, &peer, req.into_inner())
                .await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_into_names_and_addresses() {
        let (dns, ips) =
            split_hosts(&["DB.example.com".into(), "127.0.0.1".into(), " ".into()]).unwrap();
        assert_eq!(dns, ["db.example.com"]);
        assert_eq!(ips, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(split_hosts(&[]).is_err());
    }
}
