//! Preset roles and the default cluster auth preference, created at first start (never
//! overwritten afterwards: an admin's edits win).

use dt_types::resource::{CAP_NAME, CapSpec, Resource, RoleSpec};
use dt_types::{AnyResource, ClusterAuthPreference, Role};

const PRESETS: &str = r#"
kind: role
version: v7
metadata: {name: access, description: "SSH access with the user's own logins"}
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
---
kind: role
version: v7
metadata: {name: editor, description: "Edit every resource, including devices"}
spec:
  allow:
    rules: [{resources: ['*'], verbs: ['*']}]
---
kind: role
version: v7
metadata: {name: auditor, description: "Read the audit log"}
spec:
  allow:
    rules: [{resources: [event], verbs: [list, read]}]
---
kind: role
version: v7
metadata: {name: device-admin, description: "Manage the device inventory and enrollment"}
spec:
  allow:
    rules:
    - resources: [device]
      verbs: [create, read, list, update, delete, create_enroll_token, enroll]
---
kind: role
version: v7
metadata: {name: device-enroll, description: "Enroll devices with a token"}
spec:
  allow:
    rules: [{resources: [device], verbs: [enroll]}]
---
kind: role
version: v7
metadata: {name: require-trusted-device, description: "Access that requires a trusted device"}
spec:
  options: {device_trust_mode: required}
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
"#;

/// The preset roles. The text above is static and tested, so parsing cannot fail at run
/// time; a parse error here would be caught by the unit test below.
pub fn roles() -> Vec<Role> {
    AnyResource::parse_documents(PRESETS)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| match r {
            AnyResource::Role(r) => Some(r),
            _ => None,
        })
        .collect()
}

pub fn default_cap() -> ClusterAuthPreference {
    Resource::new(CAP_NAME, CapSpec::default())
}

/// A role spec granting everything (used for the local admin identity's `editor` role when
/// an admin deleted the preset).
pub fn editor_fallback() -> Role {
    let mut r = Resource::new("editor", RoleSpec::default());
    r.spec.allow.rules = vec![dt_types::Rule {
        resources: vec!["*".into()],
        verbs: vec!["*".into()],
    }];
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_include_the_device_roles() {
        let names: Vec<String> = roles().iter().map(|r| r.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [
                "access",
                "editor",
                "auditor",
                "device-admin",
                "device-enroll",
                "require-trusted-device"
            ]
        );
        let editor = roles()
            .into_iter()
            .find(|r| r.metadata.name == "editor")
            .unwrap();
        for verb in dt_types::Verb::ALL {
            assert!(dt_authz::check_rule(std::slice::from_ref(&editor), "device", verb).is_allow());
        }
    }
}
