//! Dynamic resources: `kind`/`version`/`metadata`/`spec` documents, as users write them in
//! YAML or JSON and as `dtctl get` prints them.
//!
//! Every struct rejects unknown fields, so a typo is an error and never a silent no-op.
//! [`AnyResource::parse_documents`] reads multi-document YAML (or JSON), and
//! [`AnyResource::validate`] checks what serde cannot (names, verbs, modes, targets).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::device::DeviceSpec;
use crate::duration::DurationStr;

/// Name of the single cluster auth preference resource.
pub const CAP_NAME: &str = "cluster-auth-preference";
/// Longest name we accept for any resource.
pub const MAX_NAME_LEN: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("document {doc}: {source}")]
    Syntax {
        doc: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "unknown kind {0:?} (known kinds: role, user, cluster_auth_preference, token, lock, device)"
    )]
    UnknownKind(String),
    #[error("{kind} {name:?}: {why}")]
    Invalid {
        kind: Kind,
        name: String,
        why: String,
    },
    #[error("{kind} {name:?}: {source}")]
    Spec {
        kind: Kind,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The resource kinds devtrust stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Role,
    User,
    ClusterAuthPreference,
    Token,
    Lock,
    Device,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Role,
        Kind::User,
        Kind::ClusterAuthPreference,
        Kind::Token,
        Kind::Lock,
        Kind::Device,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::User => "user",
            Kind::ClusterAuthPreference => "cluster_auth_preference",
            Kind::Token => "token",
            Kind::Lock => "lock",
            Kind::Device => "device",
        }
    }

    /// Accepts singular and plural spellings (`user`, `users`) and `cap` for the cluster
    /// auth preference.
    pub fn parse(s: &str) -> Result<Kind, ResourceError> {
        let k = match s.trim().to_ascii_lowercase().as_str() {
            "role" | "roles" => Kind::Role,
            "user" | "users" => Kind::User,
            "cluster_auth_preference" | "cluster_auth_preferences" | "cap" => {
                Kind::ClusterAuthPreference
            }
            "token" | "tokens" => Kind::Token,
            "lock" | "locks" => Kind::Lock,
            "device" | "devices" => Kind::Device,
            other => return Err(ResourceError::UnknownKind(other.to_string())),
        };
        Ok(k)
    }

    /// The version this build writes.
    pub fn version(self) -> &'static str {
        match self {
            Kind::Role => "v7",
            Kind::User | Kind::ClusterAuthPreference | Kind::Token | Kind::Lock => "v2",
            Kind::Device => "v1",
        }
    }

    /// Versions this build reads.
    fn accepts_version(self, v: &str) -> bool {
        match self {
            Kind::Role => matches!(v, "v5" | "v6" | "v7"),
            Kind::User | Kind::ClusterAuthPreference | Kind::Token | Kind::Lock => v == "v2",
            Kind::Device => v == "v1",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the resource stops applying and is deleted (locks, tokens).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
    /// Storage revision, printed by `get` and used by `edit` to refuse lost updates.
    /// Ignored by `create --force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl Metadata {
    pub fn named(name: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A resource document with a typed spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource<S> {
    pub kind: Kind,
    pub version: String,
    pub metadata: Metadata,
    pub spec: S,
}

impl<S: Spec> Resource<S> {
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Resource {
            kind: S::KIND,
            version: S::KIND.version().to_string(),
            metadata: Metadata::named(name),
            spec,
        }
    }
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Implemented by every spec type: which kind it belongs to and what serde can't check.
pub trait Spec: Serialize + DeserializeOwned + Clone + fmt::Debug {
    const KIND: Kind;
    fn validate(&self, meta: &Metadata) -> Result<(), String>;
}

pub type Role = Resource<RoleSpec>;
pub type User = Resource<UserSpec>;
pub type ClusterAuthPreference = Resource<CapSpec>;
pub type Token = Resource<TokenSpec>;
pub type Lock = Resource<LockSpec>;
pub type Device = Resource<DeviceSpec>;

/// Any resource, as read from a file or from storage.
// A device is the largest variant (~600 bytes); values are short-lived (one per request or
// document), so boxing it would only churn every match on this enum.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum AnyResource {
    Role(Role),
    User(User),
    ClusterAuthPreference(ClusterAuthPreference),
    Token(Token),
    Lock(Lock),
    Device(Device),
}

macro_rules! each {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            AnyResource::Role($r) => $e,
            AnyResource::User($r) => $e,
            AnyResource::ClusterAuthPreference($r) => $e,
            AnyResource::Token($r) => $e,
            AnyResource::Lock($r) => $e,
            AnyResource::Device($r) => $e,
        }
    };
}

impl AnyResource {
    pub fn kind(&self) -> Kind {
        each!(self, r => r.kind)
    }
    pub fn metadata(&self) -> &Metadata {
        each!(self, r => &r.metadata)
    }
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        each!(self, r => &mut r.metadata)
    }
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        // Serializing plain data structs with string keys cannot fail.
        each!(self, r => serde_json::to_value(r).unwrap_or(serde_json::Value::Null))
    }

    /// Build from a generic JSON value (the output of YAML or JSON parsing), checking the
    /// kind, the version and every field, then validating.
    pub fn from_json_value(value: serde_json::Value) -> Result<AnyResource, ResourceError> {
        let kind_str = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| ResourceError::UnknownKind("<missing kind field>".into()))?;
        let kind = Kind::parse(kind_str)?;
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("<missing metadata.name>")
            .to_string();
        // Normalize plural/alias spellings of kind before typed deserialization.
        let mut value = value;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "kind".into(),
                serde_json::Value::String(kind.as_str().into()),
            );
            // A device's name is its id: documents that list new devices may leave it out
            // and get a fresh one.
            if kind == Kind::Device
                && let Some(meta) = obj
                    .entry("metadata")
                    .or_insert_with(|| serde_json::json!({}))
                    .as_object_mut()
                && !meta.contains_key("name")
            {
                meta.insert("name".into(), crate::DeviceId::fresh().into_string().into());
            }
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or(&name)
            .to_string();
        fn typed<S: Spec>(
            kind: Kind,
            name: &str,
            v: serde_json::Value,
        ) -> Result<Resource<S>, ResourceError> {
            serde_json::from_value::<Resource<S>>(v).map_err(|source| ResourceError::Spec {
                kind,
                name: name.to_string(),
                source,
            })
        }
        let r = match kind {
            Kind::Role => AnyResource::Role(typed(kind, &name, value)?),
            Kind::User => AnyResource::User(typed(kind, &name, value)?),
            Kind::ClusterAuthPreference => {
                AnyResource::ClusterAuthPreference(typed(kind, &name, value)?)
            }
            Kind::Token => AnyResource::Token(typed(kind, &name, value)?),
            Kind::Lock => AnyResource::Lock(typed(kind, &name, value)?),
            Kind::Device => AnyResource::Device(typed(kind, &name, value)?),
        };
        r.validate()?;
        Ok(r)
    }

    /// Parse one file: a JSON object, a JSON array of objects, or multi-document YAML.
    /// Empty YAML documents are skipped.
    pub fn parse_documents(text: &str) -> Result<Vec<AnyResource>, ResourceError> {
        let trimmed = text.trim_start();
        let values: Vec<serde_json::Value> = if trimmed.starts_with('{') || trimmed.starts_with('[')
        {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| ResourceError::Syntax {
                    doc: 1,
                    source: Box::new(e),
                })?;
            match v {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            }
        } else {
            serde_saphyr::from_multiple::<serde_json::Value>(text).map_err(|e| {
                ResourceError::Syntax {
                    doc: 1,
                    source: Box::new(e),
                }
            })?
        };
        values
            .into_iter()
            .filter(|v| !v.is_null())
            .enumerate()
            .map(|(i, v)| {
                AnyResource::from_json_value(v).map_err(|e| match e {
                    ResourceError::Syntax { source, .. } => {
                        ResourceError::Syntax { doc: i + 1, source }
                    }
                    other => other,
                })
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ResourceError> {
        fn check<S: Spec>(r: &Resource<S>) -> Result<(), ResourceError> {
            let invalid = |why: String| ResourceError::Invalid {
                kind: r.kind,
                name: r.metadata.name.clone(),
                why,
            };
            if !r.kind.accepts_version(&r.version) {
                return Err(invalid(format!(
                    "unsupported version {:?} (this server writes {})",
                    r.version,
                    r.kind.version()
                )));
            }
            validate_name(&r.metadata.name).map_err(invalid)?;
            r.spec.validate(&r.metadata).map_err(invalid)
        }
        each!(self, r => check(r))
    }
}

/// Names: 1..=253 chars of `[A-Za-z0-9._@:-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("metadata.name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "metadata.name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("metadata.name must not start with '.' or '-'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-')))
    {
        return Err(format!(
            "metadata.name contains {c:?}; use letters, digits and . _ @ : -"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Policy enums

/// Device trust mode, cluster-wide or per role. Unknown values read from storage are kept
/// as `Unknown` so that authorization can fail closed; writing one is refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum DeviceTrustMode {
    Off,
    #[default]
    Optional,
    Required,
    RequiredForHumans,
    Unknown(String),
}

impl DeviceTrustMode {
    pub fn as_str(&self) -> &str {
        match self {
            DeviceTrustMode::Off => "off",
            DeviceTrustMode::Optional => "optional",
            DeviceTrustMode::Required => "required",
            DeviceTrustMode::RequiredForHumans => "required-for-humans",
            DeviceTrustMode::Unknown(s) => s,
        }
    }
    pub fn parse(s: &str) -> DeviceTrustMode {
        match s {
            "off" => DeviceTrustMode::Off,
            "optional" => DeviceTrustMode::Optional,
            "required" => DeviceTrustMode::Required,
            "required-for-humans" => DeviceTrustMode::RequiredForHumans,
            other => DeviceTrustMode::Unknown(other.to_string()),
        }
    }
    fn check(&self) -> Result<(), String> {
        match self {
            DeviceTrustMode::Unknown(s) => Err(format!(
                "unknown device trust mode {s:?} (use off, optional, required or required-for-humans)"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for DeviceTrustMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeviceTrustMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeviceTrustMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML 1.1 reads an unquoted `off` as the boolean false; accept it as `off`.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Flag(bool),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Text(s) => DeviceTrustMode::parse(&s),
            Raw::Flag(false) => DeviceTrustMode::Off,
            Raw::Flag(true) => DeviceTrustMode::Unknown("true".into()),
        })
    }
}

/// What RBAC rules grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Create,
    Read,
    List,
    Update,
    Delete,
    CreateEnrollToken,
    Enroll,
}

impl Verb {
    pub const ALL: [Verb; 7] = [
        Verb::Create,
        Verb::Read,
        Verb::List,
        Verb::Update,
        Verb::Delete,
        Verb::CreateEnrollToken,
        Verb::Enroll,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Read => "read",
            Verb::List => "list",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::CreateEnrollToken => "create_enroll_token",
            Verb::Enroll => "enroll",
        }
    }
    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource names usable in RBAC rules: the stored kinds plus `event` (the audit log) and
/// `db_certificate` (`dtctl auth sign --format=db`).
pub const RULE_RESOURCES: [&str; 8] = [
    "role",
    "user",
    "cluster_auth_preference",
    "token",
    "lock",
    "device",
    "event",
    "db_certificate",
];

// ---------------------------------------------------------------------------------------
// role

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default)]
    pub options: RoleOptions,
    #[serde(default)]
    pub allow: RoleConditions,
    #[serde(default)]
    pub deny: RoleConditions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_trust_mode: Option<DeviceTrustMode>,
    /// Posture rules on the trusted device (attestation, OS version, authentication age),
    /// checked whenever this role's mode requires a device (docs/access.md, "Device posture").
    #[serde(
        default,
        skip_serializing_if = "crate::posture::PostureRules::is_empty"
    )]
    pub device_trust: crate::posture::PostureRules,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_ttl: Option<DurationStr>,
    /// End the holder's live SSH sessions when its certificate expires (new sessions and
    /// API calls are refused at expiry regardless).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disconnect_expired_cert: bool,
}

/// What a role allows (or denies), for every kind of resource (DESIGN.md §10).
///
/// Label selectors (`*_labels`) map a label key (or `*`) to one value or a list; a value is a
/// literal, `*`, or a regular expression written `^...$` that must match the whole label
/// value. Name lists (`logins`, `db_names`, `db_users`, `kubernetes_groups`,
/// `kubernetes_users`, `desktop_logins`) hold literals or `*`; `logins` and
/// `desktop_logins` may also hold `{{internal.logins}}` (the user's login traits).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConditions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logins: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, LabelValues>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub db_labels: BTreeMap<String, LabelValues>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_users: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kubernetes_labels: BTreeMap<String, LabelValues>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubernetes_users: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_labels: BTreeMap<String, LabelValues>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub desktop_labels: BTreeMap<String, LabelValues>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub desktop_logins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

impl RoleConditions {
    /// The label selectors of every kind, with their field names (for validation and
    /// messages).
    pub fn label_selectors(&self) -> [(&'static str, &BTreeMap<String, LabelValues>); 5] {
        [
            ("node_labels", &self.node_labels),
            ("db_labels", &self.db_labels),
            ("kubernetes_labels", &self.kubernetes_labels),
            ("app_labels", &self.app_labels),
            ("desktop_labels", &self.desktop_labels),
        ]
    }

    /// The name lists of every kind, with their field names.
    pub fn name_lists(&self) -> [(&'static str, &Vec<String>); 6] {
        [
            ("logins", &self.logins),
            ("db_names", &self.db_names),
            ("db_users", &self.db_users),
            ("kubernetes_groups", &self.kubernetes_groups),
            ("kubernetes_users", &self.kubernetes_users),
            ("desktop_logins", &self.desktop_logins),
        ]
    }

    fn check(&self, side: &str) -> Result<(), String> {
        for rule in &self.rules {
            rule.check()?;
        }
        for (field, selector) in self.label_selectors() {
            for (key, values) in selector {
                if key.is_empty() {
                    return Err(format!("{side}.{field}: empty label key"));
                }
                for v in values.values() {
                    check_label_value(v).map_err(|e| format!("{side}.{field}.{key}: {e}"))?;
                }
            }
        }
        for (field, names) in self.name_lists() {
            for name in names {
                if name.is_empty()
                    || name.len() > 256
                    || name
                        .chars()
                        .any(|c| c.is_whitespace() || c == ',' || c.is_control())
                {
                    let what = if field == "logins" { "login" } else { field };
                    return Err(format!("invalid {what} {name:?} in {side}.{field}"));
                }
                // Templates expand only in login lists (an unknown one expands to nothing
                // there); anywhere else it would be taken literally, so refuse it.
                if name.contains("{{") && !matches!(field, "logins" | "desktop_logins") {
                    return Err(format!(
                        "{side}.{field}: unknown template {name:?} (templates such as {{{{internal.logins}}}} work only in logins and desktop_logins)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A label selector value is a literal, `*`, or `^regex$` (anchored at both ends, so it
/// matches whole values only).
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty label value (use \"*\" for any)".into());
    }
    if is_label_regex(v) {
        label_regex(v).map_err(|e| format!("invalid regular expression {v:?}: {e}"))?;
    } else if v.starts_with('^') || v.ends_with('$') {
        return Err(format!(
            "{v:?} looks like a regular expression: write it as ^...$ (both anchors)"
        ));
    }
    Ok(())
}

/// `^...$`: a label value written as a regular expression.
pub fn is_label_regex(v: &str) -> bool {
    v.len() >= 2 && v.starts_with('^') && v.ends_with('$')
}

/// Compiles a `^...$` label value so that it matches whole values only, even when the
/// expression inside has alternatives (`^a|b$` means `a` or `b`, never "starts with a").
pub fn label_regex(v: &str) -> Result<regex::Regex, regex::Error> {
    let inner = v.strip_prefix('^').unwrap_or(v);
    let inner = inner.strip_suffix('$').unwrap_or(inner);
    regex::RegexBuilder::new(&format!("^(?:{inner})$"))
        .size_limit(1 << 20)
        .build()
}

/// A label selector value: one string or a list (any of which may match).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelValues {
    One(String),
    Many(Vec<String>),
}

impl LabelValues {
    pub fn values(&self) -> &[String] {
        match self {
            LabelValues::One(v) => std::slice::from_ref(v),
            LabelValues::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

impl Rule {
    fn check(&self) -> Result<(), String> {
        if self.resources.is_empty() || self.verbs.is_empty() {
            return Err("a rule needs at least one resource and one verb".into());
        }
        for r in &self.resources {
            if r != "*" && !RULE_RESOURCES.contains(&r.as_str()) {
                return Err(format!(
                    "unknown resource {r:?} in rule (known: {}, or *)",
                    RULE_RESOURCES.join(", ")
                ));
            }
        }
        for v in &self.verbs {
            if v != "*" && Verb::parse(v).is_none() {
                let known: Vec<_> = Verb::ALL.iter().map(|v| v.as_str()).collect();
                return Err(format!(
                    "unknown verb {v:?} in rule (known: {}, or *)",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
}

impl Spec for RoleSpec {
    const KIND: Kind = Kind::Role;
    fn validate(&self, _meta: &Metadata) -> Result<(), String> {
        if let Some(mode) = &self.options.device_trust_mode {
            mode.check()?;
        }
        self.options.device_trust.check()?;
        if !self.options.device_trust.is_empty()
            && matches!(
                self.options.device_trust_mode,
                Some(DeviceTrustMode::Off | DeviceTrustMode::Optional)
            )
        {
            return Err(
                "options.device_trust posture rules need a trusted device: set device_trust_mode to required or required-for-humans, or leave it unset (then required)"
                    .into(),
            );
        }
        if let Some(ttl) = self.options.max_session_ttl
            && ttl.0.is_zero()
        {
            return Err("options.max_session_ttl must be positive".into());
        }
        self.allow.check("allow")?;
        self.deny.check("deny")?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// user

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub traits: Traits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub created_at: Option<OffsetDateTime>,
    /// `true` for bot users (machine identities).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bot: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traits {
    #[serde(default)]
    pub logins: Vec<String>,
}

impl Spec for UserSpec {
    const KIND: Kind = Kind::User;
    fn validate(&self, _meta: &Metadata) -> Result<(), String> {
        for role in &self.roles {
            validate_name(role).map_err(|e| format!("role {role:?}: {e}"))?;
        }
        for login in &self.traits.logins {
            if login.is_empty()
                || login.len() > 64
                || login
                    .chars()
                    .any(|c| c.is_whitespace() || c == ',' || c.is_control())
            {
                return Err(format!("invalid login {login:?}"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// cluster_auth_preference

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSpec {
    #[serde(default)]
    pub device_trust: DeviceTrustSettings,
    #[serde(default)]
    pub locking_mode: LockingMode,
    /// End every live SSH session when its certificate expires (new sessions and API calls
    /// are refused at expiry regardless). A role can ask for it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disconnect_expired_cert: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTrustSettings {
    #[serde(default)]
    pub mode: DeviceTrustMode,
    #[serde(default)]
    pub auto_enroll: bool,
    /// Auto-enroll only a device whose MDM profile names the user logging in (as its
    /// `assigned_user` or in its `os_usernames`). On by default; turn it off only when the
    /// MDM records no users and every registered device may be claimed by any user.
    #[serde(default = "default_true")]
    pub auto_enroll_require_user_match: bool,
    /// PEM CA certificates; when set, TPM EK certificates must chain to one of them.
    #[serde(default)]
    pub ekcert_allowed_cas: Vec<String>,
    /// Accept devices without a TPM or Secure Enclave (labs and tests).
    #[serde(default)]
    pub allow_software_credentials: bool,
    /// Re-check a TPM device's stored EK certificate against the current
    /// `ekcert_allowed_cas` at every device authentication (not only at enrollment), so
    /// removing a CA cuts off the devices it vouched for.
    #[serde(default)]
    pub ekcert_check_at_authentication: bool,
}

fn default_true() -> bool {
    true
}

impl Default for DeviceTrustSettings {
    fn default() -> Self {
        DeviceTrustSettings {
            mode: DeviceTrustMode::default(),
            auto_enroll: false,
            auto_enroll_require_user_match: true,
            ekcert_allowed_cas: Vec::new(),
            allow_software_credentials: false,
            ekcert_check_at_authentication: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockingMode {
    #[default]
    BestEffort,
    Strict,
}

impl Spec for CapSpec {
    const KIND: Kind = Kind::ClusterAuthPreference;
    fn validate(&self, meta: &Metadata) -> Result<(), String> {
        if meta.name != CAP_NAME {
            return Err(format!(
                "the cluster auth preference must be named {CAP_NAME:?}"
            ));
        }
        self.device_trust.mode.check()?;
        for (i, pem) in self.device_trust.ekcert_allowed_cas.iter().enumerate() {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "device_trust.ekcert_allowed_cas[{i}] is not a PEM certificate"
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// token (join tokens for nodes and bots)

/// What a join token lets its holder join as: an access point of one kind, the MDM sync
/// service, or a bot user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    Node,
    Bot,
    Db,
    Kube,
    App,
    Desktop,
    Mdm,
}

impl TokenRole {
    /// The token role that joins a service of `kind`.
    pub fn for_service(kind: ServiceKind) -> TokenRole {
        match kind {
            ServiceKind::Node => TokenRole::Node,
            ServiceKind::Db => TokenRole::Db,
            ServiceKind::Kube => TokenRole::Kube,
            ServiceKind::App => TokenRole::App,
            ServiceKind::Desktop => TokenRole::Desktop,
            ServiceKind::Mdm => TokenRole::Mdm,
        }
    }

    /// `dtctl tokens add --type=...` spellings.
    pub fn parse(s: &str) -> Option<TokenRole> {
        if s == "bot" {
            return Some(TokenRole::Bot);
        }
        ServiceKind::parse(s).map(TokenRole::for_service)
    }
}

/// The kinds of service that join a cluster with a join token and a host certificate:
/// the access points (DESIGN.md §10) and the MDM sync service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// An SSH node.
    Node,
    Db,
    Kube,
    App,
    Desktop,
    Mdm,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 6] = [
        ServiceKind::Node,
        ServiceKind::Db,
        ServiceKind::Kube,
        ServiceKind::App,
        ServiceKind::Desktop,
        ServiceKind::Mdm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Node => "node",
            ServiceKind::Db => "db",
            ServiceKind::Kube => "kube",
            ServiceKind::App => "app",
            ServiceKind::Desktop => "desktop",
            ServiceKind::Mdm => "mdm",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Does a service of this kind serve resources users reach (an access point)?
    pub fn is_access_point(self) -> bool {
        self != ServiceKind::Mdm
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub roles: Vec<TokenRole>,
    /// For bot tokens: the bot user this token joins as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_name: Option<String>,
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub token_hash: String,
}

impl Spec for TokenSpec {
    const KIND: Kind = Kind::Token;
    fn validate(&self, _meta: &Metadata) -> Result<(), String> {
        if self.roles.is_empty() {
            return Err("spec.roles must name node, db, kube, app, desktop, mdm or bot".into());
        }
        if self.roles.contains(&TokenRole::Bot) && self.bot_name.is_none() {
            return Err("a bot token needs spec.bot_name".into());
        }
        if self.token_hash.len() != 64 || !self.token_hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("spec.token_hash must be 64 hex characters (SHA-256)".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// lock

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// A device credential id: the certificates augmented through that credential (what a
    /// deleted or un-enrolled device leaves behind, see `DeviceSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_credential: Option<String>,
    /// A database by name (as its access point serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    /// A Kubernetes cluster by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_cluster: Option<String>,
    /// An app by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// A desktop by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<String>,
}

impl LockTarget {
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// Every target field with the label [`fmt::Display`] gives it.
    pub fn fields(&self) -> [(&'static str, &Option<String>); 10] {
        [
            ("User", &self.user),
            ("Role", &self.role),
            ("Login", &self.login),
            ("Node", &self.node),
            ("Device", &self.device),
            ("DeviceCredential", &self.device_credential),
            ("Database", &self.db),
            ("KubernetesCluster", &self.kube_cluster),
            ("App", &self.app),
            ("Desktop", &self.desktop),
        ]
    }
}

impl fmt::Display for LockTarget {
    /// `Device:"ID"`, `User:"alice"`, several joined with `, `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (label, v) in self.fields() {
            if let Some(v) = v {
                parts.push(format!("{label}:{v:?}"));
            }
        }
        f.write_str(&parts.join(", "))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    pub target: LockTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub created_at: Option<OffsetDateTime>,
}

impl Spec for LockSpec {
    const KIND: Kind = Kind::Lock;
    fn validate(&self, _meta: &Metadata) -> Result<(), String> {
        if self.target.is_empty() {
            return Err(
                "spec.target needs at least one of user, role, login, node, device, device_credential, db, kube_cluster, app, desktop"
                    .into(),
            );
        }
        if self.message.as_ref().is_some_and(|m| m.len() > 1024) {
            return Err("spec.message is longer than 1024 characters".into());
        }
        // A name that cannot exist would be a lock on nobody: the admin would believe the
        // user, node or device cut off while it is not.
        let t = &self.target;
        let bad = |field: &str, why: String| format!("spec.target.{field}: {why}");
        if let Some(u) = &t.user {
            crate::UserName::parse(u.as_str()).map_err(|e| bad("user", e.to_string()))?;
        }
        if let Some(n) = &t.node {
            crate::NodeName::parse(n.as_str()).map_err(|e| bad("node", e.to_string()))?;
        }
        if let Some(d) = &t.device {
            crate::DeviceId::parse(d.as_str()).map_err(|e| bad("device", e.to_string()))?;
        }
        if let Some(c) = &t.device_credential {
            crate::CredentialId::parse(c.as_str())
                .map_err(|e| bad("device_credential", e.to_string()))?;
        }
        if let Some(r) = &t.role {
            validate_name(r).map_err(|e| bad("role", e.replace("metadata.name ", "")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = r#"
kind: role
version: v7
metadata: {name: require-trusted-device}
spec:
  options: {device_trust_mode: required, max_session_ttl: 12h}
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
    rules: [{resources: [device], verbs: [read, list]}]
  deny: {}
---
kind: user
version: v2
metadata: {name: alice}
spec: {roles: [access, editor], traits: {logins: [root]}}
"#;

    #[test]
    fn disconnect_expired_cert_is_off_unless_set_and_not_written_when_off() {
        let docs = AnyResource::parse_documents(
            "kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  options: {disconnect_expired_cert: true}\n---\nkind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {disconnect_expired_cert: true}\n",
        )
        .unwrap();
        let (AnyResource::Role(r), AnyResource::ClusterAuthPreference(c)) = (&docs[0], &docs[1])
        else {
            panic!("{docs:?}")
        };
        assert!(r.spec.options.disconnect_expired_cert && c.spec.disconnect_expired_cert);
        // Off is the default and is left out, so servers without the field still read it.
        let off = serde_json::to_string(&Resource::new("r", RoleSpec::default())).unwrap();
        assert!(!off.contains("disconnect_expired_cert"), "{off}");
    }

    #[test]
    fn parses_multi_document_yaml() {
        let docs = AnyResource::parse_documents(ROLE).unwrap();
        assert_eq!(docs.len(), 2);
        let AnyResource::Role(role) = &docs[0] else {
            panic!("not a role")
        };
        assert_eq!(
            role.spec.options.device_trust_mode,
            Some(DeviceTrustMode::Required)
        );
        assert_eq!(role.spec.allow.logins, vec!["{{internal.logins}}"]);
        let AnyResource::User(user) = &docs[1] else {
            panic!("not a user")
        };
        assert_eq!(user.spec.traits.logins, vec!["root"]);
    }

    #[test]
    fn json_round_trip_is_identity() {
        for doc in AnyResource::parse_documents(ROLE).unwrap() {
            let text = serde_json::to_string(&doc.to_json_value()).unwrap();
            let back = AnyResource::parse_documents(&text).unwrap();
            assert_eq!(back, vec![doc]);
        }
    }

    #[test]
    fn yaml_round_trip_is_identity() {
        for doc in AnyResource::parse_documents(ROLE).unwrap() {
            let text = serde_saphyr::to_string(&doc.to_json_value()).unwrap();
            let back = AnyResource::parse_documents(&text).unwrap();
            assert_eq!(back, vec![doc]);
        }
    }

    #[test]
    fn unknown_fields_kinds_verbs_modes_are_refused() {
        let cases = [
            (
                "kind: role\nversion: v7\nmetadata: {name: r}\nspec: {allow: {logns: [x]}}",
                "logns",
            ),
            (
                "kind: rolez\nversion: v7\nmetadata: {name: r}\nspec: {}",
                "unknown kind",
            ),
            (
                "kind: role\nversion: v7\nmetadata: {name: r}\nspec: {allow: {rules: [{resources: [device], verbs: [fly]}]}}",
                "unknown verb",
            ),
            (
                "kind: role\nversion: v7\nmetadata: {name: r}\nspec: {options: {device_trust_mode: maybe}}",
                "unknown device trust mode",
            ),
            (
                "kind: user\nversion: v9\nmetadata: {name: u}\nspec: {}",
                "unsupported version",
            ),
            (
                "kind: user\nversion: v2\nmetadata: {name: 'a b'}\nspec: {}",
                "contains",
            ),
            (
                "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {}}",
                "at least one",
            ),
            (
                "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {user: 'alice '}}",
                "spec.target.user: user name contains ' '",
            ),
            (
                "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {node: 'web/1'}}",
                "spec.target.node: node name contains '/'",
            ),
            (
                "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {device: laptop-7}}",
                "spec.target.device: device id is not a UUID",
            ),
            (
                "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {device_credential: 'x y'}}",
                "spec.target.device_credential",
            ),
            (
                "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {role: ''}}",
                "spec.target.role: is empty",
            ),
            (
                "kind: user\nversion: v2\nmetadata: {name: u, nam: x}\nspec: {}",
                "nam",
            ),
        ];
        for (text, want) in cases {
            let err = AnyResource::parse_documents(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: error {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn locks_on_names_that_can_exist_are_accepted() {
        let text = "kind: lock\nversion: v2\nmetadata: {name: l}\nspec: {target: {user: alice@example.com, role: access, node: web-1, login: root, \
            device: 0190b4a2-7c1e-7a55-b3a8-3f2d1c0e9a11, db: pg, kube_cluster: k, app: wiki, desktop: d}}";
        let docs = AnyResource::parse_documents(text).unwrap();
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn kind_aliases() {
        assert_eq!(Kind::parse("users").unwrap(), Kind::User);
        assert_eq!(Kind::parse("cap").unwrap(), Kind::ClusterAuthPreference);
        assert!(Kind::parse("widgets").is_err());
    }

    #[test]
    fn lock_target_display_matches_the_ssh_message_shape() {
        let t = LockTarget {
            device: Some("abc".into()),
            ..Default::default()
        };
        assert_eq!(t.to_string(), "Device:\"abc\"");
    }

    #[test]
    fn unquoted_yaml_off_means_off() {
        let text = "kind: role\nversion: v7\nmetadata: {name: r}\nspec: {options: {device_trust_mode: off}}";
        let AnyResource::Role(r) = AnyResource::parse_documents(text).unwrap().remove(0) else {
            panic!("not a role")
        };
        assert_eq!(r.spec.options.device_trust_mode, Some(DeviceTrustMode::Off));
        let on = "kind: role\nversion: v7\nmetadata: {name: r}\nspec: {options: {device_trust_mode: on}}";
        assert!(
            AnyResource::parse_documents(on).is_err(),
            "`on` is not a mode"
        );
    }

    #[test]
    fn unknown_mode_survives_a_read_but_not_a_write() {
        let m: DeviceTrustMode = serde_json::from_str("\"sometimes\"").unwrap();
        assert_eq!(m, DeviceTrustMode::Unknown("sometimes".into()));
        assert!(m.check().is_err());
    }
}
