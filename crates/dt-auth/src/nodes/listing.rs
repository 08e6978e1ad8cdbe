//! Listing: live services and what they serve, all of them or only what some roles reach.

use dt_types::{Role, ServiceKind};

use super::{NodeRecord, ServedResource};
use crate::error::ApiResult;
use crate::keys;
use crate::server::AuthServer;

impl AuthServer {
    /// Live nodes, by name (all of them: callers that list for a user filter with
    /// [`dt_authz::may_list`], see [`Self::list_nodes_for`]).
    pub async fn list_nodes(&self) -> ApiResult<Vec<NodeRecord>> {
        self.list_services(ServiceKind::Node).await
    }

    /// Live nodes the roles may reach (`dtsh ls`).
    pub async fn list_nodes_for(&self, roles: &[Role]) -> ApiResult<Vec<NodeRecord>> {
        let mut nodes = self.list_nodes().await?;
        nodes.retain(|n| dt_authz::may_list(roles, ServiceKind::Node, &n.labels));
        Ok(nodes)
    }

    /// Resources of `kind` served right now (every one; see [`Self::list_served_for`]),
    /// by name, then serving service.
    pub async fn list_served(&self, kind: ServiceKind) -> ApiResult<Vec<ServedResource>> {
        let mut out: Vec<ServedResource> = self
            .list_services(kind)
            .await?
            .iter()
            .flat_map(NodeRecord::served)
            .collect();
        out.sort_by(|a, b| (&a.resource.name, &a.service).cmp(&(&b.resource.name, &b.service)));
        Ok(out)
    }

    /// Resources of `kind` served right now that the roles may reach.
    pub async fn list_served_for(
        &self,
        kind: ServiceKind,
        roles: &[Role],
    ) -> ApiResult<Vec<ServedResource>> {
        let mut out = self.list_served(kind).await?;
        out.retain(|r| dt_authz::may_list(roles, kind, &r.resource.labels));
        Ok(out)
    }

    /// Live records of the joined services of `kind`, by name.
    pub(super) async fn list_services(&self, kind: ServiceKind) -> ApiResult<Vec<NodeRecord>> {
        let prefix = keys::service_records_prefix(kind);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
            for item in page.items {
                match serde_json::from_slice::<NodeRecord>(&item.value) {
                    Ok(r) if r.kind == kind => out.push(r),
                    Ok(_) => {
                        tracing::warn!(key = %item.key, "skipping a service record of another kind")
                    }
                    Err(e) => {
                        tracing::warn!(key = %item.key, error = %e, "skipping unreadable node record")
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
