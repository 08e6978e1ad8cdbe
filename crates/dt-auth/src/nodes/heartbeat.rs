//! Heartbeat: a joined service says it is alive and what it serves; its record expires a
//! few heartbeats later.

use std::collections::BTreeMap;
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_types::ServiceKind;

use super::NodeRecord;
use super::ServedResourceRecord;
use super::checks::{addr_host, check_labels};
use crate::error::{ApiError, ApiResult};
use crate::listener::Peer;
use crate::plan;
use crate::server::AuthServer;

/// Bounds of a heartbeat's time to live.
const MIN_HEARTBEAT_TTL: u64 = 3;
const MAX_HEARTBEAT_TTL: u64 = 600;

/// At most this many resources per heartbeat.
const MAX_SERVED_RESOURCES: usize = 1000;

/// The resources a heartbeat says `node` serves, checked: all of its own kind, with valid
/// names, labels and addresses, no name twice. An SSH node may name only itself.
pub(super) fn check_served(
    node: &dt_ca::NodeIdentity,
    service_addr: &str,
    resources: &[pb::ServedResource],
) -> ApiResult<Vec<ServedResourceRecord>> {
    if node.kind == ServiceKind::Mdm && !resources.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the mdm service serves no resources; send none".into(),
        ));
    }
    if resources.len() > MAX_SERVED_RESOURCES {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_SERVED_RESOURCES} resources per heartbeat"
        )));
    }
    let mut out: Vec<ServedResourceRecord> = Vec::with_capacity(resources.len());
    for r in resources {
        if r.kind != node.kind.as_str() {
            return Err(ApiError::PermissionDenied(format!(
                "a {} service may serve only {} resources, not {:?} ({:?})",
                node.kind, node.kind, r.kind, r.name
            )));
        }
        dt_types::resource::validate_name(&r.name).map_err(|e| {
            ApiError::InvalidArgument(format!("served {} {:?}: {e}", node.kind, r.name))
        })?;
        if node.kind == ServiceKind::Node && r.name != node.name {
            return Err(ApiError::PermissionDenied(format!(
                "node {:?} may serve only itself, not {:?} (each node joins with its own name)",
                node.name, r.name
            )));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(ApiError::InvalidArgument(format!(
                "{} {:?} is listed twice",
                node.kind, r.name
            )));
        }
        let labels: BTreeMap<String, String> = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_labels(&labels)?;
        let addr = if r.addr.is_empty() {
            service_addr.to_string()
        } else {
            addr_host(&r.addr)?;
            r.addr.clone()
        };
        if node.kind == ServiceKind::Db && !matches!(r.protocol.as_str(), "postgres" | "mysql") {
            return Err(ApiError::InvalidArgument(format!(
                "database {:?}: protocol {:?}; use postgres or mysql",
                r.name, r.protocol
            )));
        }
        for (what, v, max) in [
            ("protocol", &r.protocol, 253),
            ("description", &r.description, 1024),
        ] {
            if v.len() > max || v.chars().any(char::is_control) {
                return Err(ApiError::InvalidArgument(format!(
                    "{} {:?}: {what} is too long or has control characters",
                    node.kind, r.name
                )));
            }
        }
        out.push(ServedResourceRecord {
            name: r.name.clone(),
            labels,
            addr,
            protocol: r.protocol.clone(),
            description: r.description.clone(),
        });
    }
    Ok(out)
}

impl AuthServer {
    pub async fn node_heartbeat(
        &self,
        node: &dt_ca::NodeIdentity,
        peer: &Peer,
        req: pb::HeartbeatRequest,
    ) -> ApiResult<()> {
        let mut labels: BTreeMap<String, String> = req
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_labels(&labels)?;
        if !(node.kind == ServiceKind::Mdm && req.addr.is_empty()) {
            addr_host(&req.addr)?;
        }
        let mut addr = req.addr;
        let mut resources = check_served(node, &addr, &req.resources)?;
        if node.kind == ServiceKind::Node {
            // An SSH node serves itself: a resource it sends is itself (check_served made
            // sure), with the labels and address clients should see.
            if let Some(me) = resources.pop() {
                labels = me.labels;
                addr = me.addr;
            }
        }
        let key_sha256 = self.check_peer_node_key(node, peer).await?;
        let ttl = req.ttl_seconds.clamp(MIN_HEARTBEAT_TTL, MAX_HEARTBEAT_TTL);
        let now = self.env.now();
        let record = NodeRecord {
            name: node.name.clone(),
            kind: node.kind,
            addr,
            labels,
            version: req.version,
            key_sha256,
            last_heartbeat: now,
            resources,
        };
        let plan = plan::nodes::heartbeat(&record, Duration::from_secs(ttl))
            .map_err(ApiError::internal)?;
        self.commit_unaudited(plan).await?;
        Ok(())
    }
}
