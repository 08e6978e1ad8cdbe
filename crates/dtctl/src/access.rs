//! `dtctl access explain`: why a user on a device may or may not reach a resource. The auth
//! service answers with the decision of `dt_authz::decide`, the function every access point
//! runs, and its reasons; this prints them and turns the decision into the exit code.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use dt_proto::v1 as pb;
use dt_proto::v1::access_service_client::AccessServiceClient;
use dt_types::{DeviceId, NodeName, UserName};

use crate::{Global, connect_channel};
use dt_cli::{Format, api_err};

/// The exit code of `dtctl access explain` when access is denied.
pub const EXIT_DENIED: u8 = 3;

#[derive(Subcommand)]
pub enum AccessCmd {
    /// Explain whether USER (on a device or not) may reach a resource, and why.
    #[command(
        after_help = "Exit status: 0 when access is allowed, 3 when it is denied, 1 on errors (e.g. an unknown user, device or resource).\n\nThe decision is the one the access points make, over the user's current roles and login traits, the device, the cluster's device-trust mode, the locks in force and the resource's live labels.\n\nNeeds `read` on user and role (and on device with --device).\n\nExamples:\n  dtctl access explain --user=alice --node=web1 --login=root\n  dtctl access explain --user=alice --device=DEVICE_ID --db=pg1 --db-user=alice --db-name=main --format=json"
    )]
    Explain(ExplainArgs),
}

#[derive(Args)]
#[command(group(
    ArgGroup::new("resource")
        .required(true)
        .args(["node", "db", "kube", "app", "desktop"])
))]
pub struct ExplainArgs {
    /// The user (or bot) asking.
    #[arg(long)]
    user: UserName,
    /// An enrolled device from the inventory, by id: explain as from that trusted device.
    #[arg(long, conflicts_with = "no_device")]
    device: Option<DeviceId>,
    /// Explain as from no trusted device (the default, said so in the reasons).
    #[arg(long)]
    no_device: bool,
    /// An SSH node (with --login).
    #[arg(long, requires = "login")]
    node: Option<NodeName>,
    /// The OS login on the node.
    #[arg(long, requires = "node")]
    login: Option<String>,
    /// A database (with --db-user and --db-name).
    #[arg(long, requires_all = ["db_user", "db_name"])]
    db: Option<String>,
    #[arg(long, requires = "db")]
    db_user: Option<String>,
    #[arg(long, requires = "db")]
    db_name: Option<String>,
    /// A Kubernetes cluster.
    #[arg(long)]
    kube: Option<String>,
    /// A Kubernetes group to impersonate (repeat for several).
    #[arg(long, requires = "kube")]
    kube_group: Vec<String>,
    /// A Kubernetes user to impersonate.
    #[arg(long, requires = "kube")]
    kube_user: Option<String>,
    /// An app.
    #[arg(long)]
    app: Option<String>,
    /// A desktop (with --desktop-login).
    #[arg(long, requires = "desktop_login")]
    desktop: Option<String>,
    #[arg(long, requires = "desktop")]
    desktop_login: Option<String>,
    /// text: the decision, then one line per reason; json: an object with "decision"
    /// ("allow" or "deny") and "reasons".
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl ExplainArgs {
    fn request(self) -> pb::ExplainAccessRequest {
        use pb::explain_access_request::{Device, Target};
        let device = match (self.device, self.no_device) {
            (Some(id), _) => Some(Device::DeviceId(id.into_string())),
            (None, true) => Some(Device::NoDevice(true)),
            (None, false) => None,
        };
        let target = if let Some(node) = self.node {
            Target::Ssh(pb::SshAccess {
                node: node.into_string(),
                login: self.login.unwrap_or_default(),
            })
        } else if let Some(name) = self.db {
            Target::Db(pb::DbAccess {
                name,
                db_user: self.db_user.unwrap_or_default(),
                db_name: self.db_name.unwrap_or_default(),
            })
        } else if let Some(name) = self.kube {
            Target::Kube(pb::KubeAccess {
                name,
                users: self.kube_user.into_iter().collect(),
                groups: self.kube_group,
            })
        } else if let Some(name) = self.app {
            Target::App(pb::AppAccess { name })
        } else {
            Target::Desktop(pb::DesktopAccess {
                name: self.desktop.unwrap_or_default(),
                login: self.desktop_login.unwrap_or_default(),
            })
        };
        pb::ExplainAccessRequest {
            user: self.user.into_string(),
            device,
            target: Some(target),
        }
    }
}

/// A wire reason as `dt_authz` prints it (its `Display` is the one text of a reason).
fn reason(r: &pb::AccessReason) -> dt_authz::Reason {
    use pb::access_reason::{Check as C, Effect as E};
    dt_authz::Reason {
        check: match C::try_from(r.check).unwrap_or(C::Unspecified) {
            C::Lock => dt_authz::Check::Lock,
            C::ClusterMode => dt_authz::Check::ClusterMode,
            C::Role => dt_authz::Check::Role,
            C::RoleMode => dt_authz::Check::RoleMode,
            C::Device | C::Unspecified => dt_authz::Check::Device,
        },
        role: (!r.role.is_empty()).then(|| r.role.clone()),
        effect: match E::try_from(r.effect).unwrap_or(E::Unspecified) {
            E::Allow => dt_authz::Effect::Allow,
            E::Deny => dt_authz::Effect::Deny,
            E::None | E::Unspecified => dt_authz::Effect::None,
        },
        detail: r.detail.clone(),
    }
}

pub async fn run(g: &Global, cmd: AccessCmd) -> anyhow::Result<ExitCode> {
    let AccessCmd::Explain(args) = cmd;
    let format = args.format;
    let mut c = AccessServiceClient::new(connect_channel(g).await?);
    let resp = c
        .explain_access(args.request())
        .await
        .map_err(api_err)?
        .into_inner();
    let allowed = match pb::explain_access_response::Decision::try_from(resp.decision) {
        Ok(pb::explain_access_response::Decision::Allow) => true,
        Ok(pb::explain_access_response::Decision::Deny) => false,
        // Fail closed on an answer this build does not know.
        _ => false,
    };
    let reasons: Vec<dt_authz::Reason> = resp.reasons.iter().map(reason).collect();
    match format {
        Format::Json | Format::Yaml => {
            let device = resp.device.clone().unwrap_or_default();
            let v = serde_json::json!({
                "decision": if allowed { "allow" } else { "deny" },
                "reasons": reasons,
                "denial": (!resp.denial.is_empty()).then_some(&resp.denial),
                "target": resp.target,
                "user": resp.user,
                "bot": resp.bot,
                "roles": resp.roles,
                "logins": resp.logins,
                "cluster_mode": resp.cluster_mode,
                "device": {
                    "state": device.state,
                    "device_id": device.device_id,
                    "asset_tag": device.asset_tag,
                    "os_type": device.os_type,
                    "credential_id": device.credential_id,
                },
                "resource": {
                    "kind": resp.resource_kind,
                    "name": resp.resource_name,
                    "labels": resp.resource_labels.iter().collect::<BTreeMap<_, _>>(),
                    "served_by": resp.served_by,
                },
                "locks_in_force": resp.locks_in_force,
            });
            if format == Format::Yaml {
                print!("{}", serde_saphyr::to_string(&v)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        Format::Text => {
            let who = if resp.bot {
                format!("bot {:?}", resp.user)
            } else {
                format!("user {:?}", resp.user)
            };
            if allowed {
                println!("ALLOW: {who} may reach {}", resp.target);
            } else {
                println!("DENY: {who} may not reach {}: {}", resp.target, resp.denial);
            }
            for r in &reasons {
                println!("  {r}");
            }
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    })
}
