//! The devtrust auth service: gRPC and an HTTPS JSON API on one TLS listener, storage,
//! certificate authorities and the audit log.
//!
//! What it guarantees: identity comes only from a client certificate the user CA issued
//! (never from request bytes); every API call passes RBAC (deny before allow) and the lock
//! check; every change and its audit event are written in one transaction.

use std::sync::Arc;

pub mod audit;
mod audit_api;
pub mod audit_config;
mod authn_driver;
pub mod bots;
pub mod cache;
pub mod caller;
pub mod ceremony_wire;
pub mod config;
pub mod databases;
pub mod device_grpc;
pub mod device_web;
pub mod devices;
mod enroll_driver;
pub mod env;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod listener;
pub mod login;
pub mod login_throttle;
pub mod metrics;
pub mod nodes;
pub mod plan;
pub mod presets;
pub mod resources;
pub mod server;
pub mod shared_limit;
pub mod tokens;
pub mod users;

pub use server::AuthServer;

pub mod access;
pub mod app_sessions;
pub mod apps;
pub mod mdm;

/// gRPC services and the JSON API as one router.
pub fn router(srv: Arc<AuthServer>) -> axum::Router {
    let grpc =
        tonic::service::Routes::new(dt_proto::v1::auth_service_server::AuthServiceServer::new(
            grpc::GrpcAuth { srv: srv.clone() },
        ))
        .add_service(
            dt_proto::v1::device_trust_service_server::DeviceTrustServiceServer::new(
                device_grpc::GrpcDevices { srv: srv.clone() },
            ),
        )
        .add_service(dt_proto::v1::node_service_server::NodeServiceServer::new(
            nodes::GrpcNodes { srv: srv.clone() },
        ))
        .add_service(
            dt_proto::v1::database_service_server::DatabaseServiceServer::new(
                databases::GrpcDatabases { srv: srv.clone() },
            ),
        )
        .add_service(dt_proto::v1::app_service_server::AppServiceServer::new(
            apps::GrpcApps { srv: srv.clone() },
        ))
        .add_service(
            dt_proto::v1::access_service_server::AccessServiceServer::new(access::GrpcAccess {
                srv: srv.clone(),
            }),
        )
        .add_service(dt_proto::v1::mdm_service_server::MdmServiceServer::new(
            mdm::GrpcMdm { srv: srv.clone() },
        ))
        .into_axum_router();
    http::router(srv).merge(grpc)
}
