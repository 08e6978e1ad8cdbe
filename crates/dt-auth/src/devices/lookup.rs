//! Finding and listing devices: by id, asset tag or credential, with the caller's read scope.

use dt_proto::v1 as pb;
use dt_types::device::DeviceSpec;
use dt_types::device::OsType;
use dt_types::{Device, Kind, Verb};

use super::MAX_PAGE;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::server::AuthServer;

impl AuthServer {
    /// Which devices `caller` may read with `verb` (`read`, `list`): every device when a role
    /// allows it (`None`), otherwise only the devices they own (`Some(user)`); a deny rule on
    /// the verb refuses even those.
    pub(crate) fn device_read_scope<'c>(
        &self,
        caller: &'c Caller,
        verb: Verb,
    ) -> ApiResult<Option<&'c str>> {
        match self.authorize(caller, "device", verb) {
            Ok(()) => Ok(None),
            Err(e) => match dt_authz::check_deny_rules(&caller.roles, "device", verb) {
                dt_authz::Decision::Allow => Ok(Some(caller.name())),
                dt_authz::Decision::Deny(_) => Err(e),
            },
        }
    }

    /// [`AuthServer::resolve_device`] for a reader: a device outside their scope reads as
    /// absent, so its existence is not disclosed.
    pub async fn read_device(
        &self,
        caller: &Caller,
        r: &pb::DeviceRef,
    ) -> ApiResult<(Device, i64)> {
        let scope = self.device_read_scope(caller, Verb::Read)?;
        let (d, rev) = self.resolve_device(r).await?;
        match scope {
            Some(owner) if d.spec.owner.as_deref() != Some(owner) => {
                let what = if r.device_id.is_empty() {
                    &r.asset_tag
                } else {
                    &r.device_id
                };
                Err(ApiError::NotFound(format!(
                    "device {what:?} not found among your devices"
                )))
            }
            _ => Ok((d, rev)),
        }
    }

    pub async fn get_device(&self, id: &str) -> ApiResult<Option<(Device, i64)>> {
        self.get_resource::<DeviceSpec>(id).await
    }

    pub async fn device_by_tag(&self, os: OsType, tag: &str) -> ApiResult<Option<(Device, i64)>> {
        self.get_resource_indexed::<DeviceSpec>(&keys::device_tag_index(os, tag))
            .await
    }

    pub async fn device_by_credential(
        &self,
        credential_id: &str,
    ) -> ApiResult<Option<(Device, i64)>> {
        self.get_resource_indexed::<DeviceSpec>(&keys::device_credential_index(credential_id))
            .await
    }

    /// Devices whose id or asset tag equals `needle` (any OS) that `caller` may read.
    pub async fn find_readable_devices(
        &self,
        caller: &Caller,
        needle: &str,
    ) -> ApiResult<Vec<(Device, i64)>> {
        let scope = self.device_read_scope(caller, Verb::Read)?;
        let mut found = self.find_devices(needle).await?;
        if let Some(owner) = scope {
            found.retain(|(d, _)| d.spec.owner.as_deref() == Some(owner));
        }
        Ok(found)
    }

    /// Devices whose id or asset tag equals `needle` (any OS).
    pub async fn find_devices(&self, needle: &str) -> ApiResult<Vec<(Device, i64)>> {
        let mut out = Vec::new();
        if dt_types::DeviceId::parse(needle).is_ok()
            && let Some(d) = self.get_device(needle).await?
        {
            out.push(d);
        }
        for os in [OsType::Macos, OsType::Windows, OsType::Linux] {
            if let Some(d) = self.device_by_tag(os, needle).await?
                && !out
                    .iter()
                    .any(|(x, _)| x.metadata.name == d.0.metadata.name)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Exactly one device for a reference, or a clear error.
    pub async fn resolve_device(&self, r: &pb::DeviceRef) -> ApiResult<(Device, i64)> {
        if !r.device_id.is_empty() {
            return self
                .get_device(&r.device_id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("device {:?} not found", r.device_id)));
        }
        if r.asset_tag.is_empty() {
            return Err(ApiError::InvalidArgument(
                "name the device: --device-id or --asset-tag".into(),
            ));
        }
        let os = dt_proto::device::os_type_from_proto(r.os_type, "os_type")
            .map_err(|e| ApiError::InvalidArgument(format!("{e} (use macos, windows or linux)")))?;
        if let Some(os) = os {
            return self.device_by_tag(os, &r.asset_tag).await?.ok_or_else(|| {
                ApiError::NotFound(format!("device {:?}/{os} not found", r.asset_tag))
            });
        }
        let mut found = Vec::new();
        for os in [OsType::Macos, OsType::Windows, OsType::Linux] {
            if let Some(d) = self.device_by_tag(os, &r.asset_tag).await? {
                found.push(d);
            }
        }
        match found.len() {
            0 => Err(ApiError::NotFound(format!(
                "device {:?} not found",
                r.asset_tag
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(ApiError::InvalidArgument(format!(
                "asset tag {:?} exists for several OSes; add --os",
                r.asset_tag
            ))),
        }
    }

    pub async fn list_devices(
        &self,
        caller: &Caller,
        page_size: usize,
        page_token: &str,
    ) -> ApiResult<(Vec<(Device, i64)>, Option<String>)> {
        let scope = self.device_read_scope(caller, Verb::List)?;
        let limit = if page_size == 0 {
            MAX_PAGE
        } else {
            page_size.min(MAX_PAGE)
        };
        if let Some(owner) = scope {
            return self.list_owned_devices(owner, limit, page_token).await;
        }
        let prefix = keys::resource_prefix(Kind::Device);
        let start = (!page_token.is_empty()).then(|| keys::resource(Kind::Device, page_token));
        let page = self.backend.range(&prefix, start.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in page.items {
            match serde_json::from_slice::<Device>(&item.value) {
                Ok(d) => out.push((d, item.revision)),
                Err(e) => tracing::warn!(key = %item.key, error = %e, "skipping unreadable device"),
            }
        }
        Ok((
            out,
            page.next.map(|k| k.trim_start_matches(&prefix).to_string()),
        ))
    }

    /// One page of the devices `owner` owns, through the owner index, by device id.
    async fn list_owned_devices(
        &self,
        owner: &str,
        limit: usize,
        page_token: &str,
    ) -> ApiResult<(Vec<(Device, i64)>, Option<String>)> {
        let prefix = keys::device_owner_index(owner, "");
        let start = (!page_token.is_empty()).then(|| keys::device_owner_index(owner, page_token));
        let page = self.backend.range(&prefix, start.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in page.items {
            let id = item.key.trim_start_matches(&prefix);
            // The index and the record are written together; re-check the owner anyway.
            if let Some((d, rev)) = self.get_device(id).await?
                && d.spec.owner.as_deref() == Some(owner)
            {
                out.push((d, rev));
            }
        }
        Ok((
            out,
            page.next.map(|k| k.trim_start_matches(&prefix).to_string()),
        ))
    }
}
