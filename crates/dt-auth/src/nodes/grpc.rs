//! The gRPC `NodeService`: each call takes its identity from the peer and makes one
//! service call.

use std::sync::Arc;

use dt_proto::v1 as pb;
use dt_proto::v1::node_service_server::NodeService;
use dt_types::ServiceKind;
use tonic::{Request, Response, Status};

use super::identity::{access_point_of, node_of};
use crate::caller::peer_of;
use crate::error::ApiError;
use crate::server::AuthServer;

#[derive(Clone)]
pub struct GrpcNodes {
    pub srv: Arc<AuthServer>,
}

#[tonic::async_trait]
impl NodeService for GrpcNodes {
    async fn join_node(
        &self,
        req: Request<pb::JoinNodeRequest>,
    ) -> Result<Response<pb::JoinNodeResponse>, Status> {
        let peer = peer_of(&req)?;
        Ok(Response::new(
            self.srv.join_node(req.into_inner(), &peer).await?,
        ))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let peer = peer_of(&req)?;
        let node = node_of(&peer, self.srv.env.now())?;
        self.srv
            .node_heartbeat(&node, &peer, req.into_inner())
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let nodes = self
            .srv
            .list_nodes_for(&caller.roles)
            .await?
            .into_iter()
            .map(|n| pb::NodeInfo {
                name: n.name,
                addr: n.addr,
                labels: n.labels.into_iter().collect(),
                version: n.version,
                last_heartbeat_unix: n.last_heartbeat.unix_timestamp(),
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn list_served_resources(
        &self,
        req: Request<pb::ListServedResourcesRequest>,
    ) -> Result<Response<pb::ListServedResourcesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let kind = match ServiceKind::parse(&req.get_ref().kind) {
            Some(k) if k.is_access_point() => k,
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "kind {:?}: list node, db, kube, app or desktop",
                    req.get_ref().kind
                ))
                .into());
            }
        };
        let resources = self
            .srv
            .list_served_for(kind, &caller.roles)
            .await?
            .into_iter()
            .map(|r| pb::ServedResourceInfo {
                resource: Some(pb::ServedResource {
                    kind: r.kind.as_str().into(),
                    name: r.resource.name,
                    labels: r.resource.labels.into_iter().collect(),
                    addr: r.resource.addr,
                    protocol: r.resource.protocol,
                    description: r.resource.description,
                }),
                service: r.service,
                version: r.version,
                last_heartbeat_unix: r.last_heartbeat.unix_timestamp(),
            })
            .collect();
        Ok(Response::new(pb::ListServedResourcesResponse { resources }))
    }

    type WatchClusterStream = super::watch::WatchStream;

    async fn watch_cluster(
        &self,
        req: Request<pb::WatchClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        let peer = peer_of(&req)?;
        let node = access_point_of(self.srv.live_node(&peer).await?, "the cluster watch")?;
        Ok(Response::new(
            super::watch::cluster_watch(self.srv.clone(), node).await?,
        ))
    }

    async fn submit_audit_events(
        &self,
        req: Request<pb::SubmitAuditEventsRequest>,
    ) -> Result<Response<pb::SubmitAuditEventsResponse>, Status> {
        let peer = peer_of(&req)?;
        let node = access_point_of(self.srv.live_node(&peer).await?, "audit submission")?;
        let accepted = self
            .srv
            .submit_node_events(&node, &peer, req.into_inner().events)
            .await?;
        Ok(Response::new(pb::SubmitAuditEventsResponse { accepted }))
    }

    async fn add_bot(
        &self,
        req: Request<pb::AddBotRequest>,
    ) -> Result<Response<pb::AddBotResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.add_bot(&caller, req.into_inner()).await?,
        ))
    }
}
