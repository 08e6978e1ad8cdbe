//! Plain data shared by every devtrust crate: typed ids, the resource model
//! (`kind`/`version`/`metadata`/`spec`), policy enums, audit events and `Secret<T>`.
//!
//! Why a crate of its own: it is the vocabulary the pure crates (authz, ceremonies, CA) and
//! the I/O crates (auth service, CLIs) share, and it depends on serde only — no runtime, no
//! network, no storage. Parsing follows "parse, don't validate": raw serde structs reject
//! unknown fields, and `validate` turns them into values the rest of the system can trust.

pub mod audit;
pub mod device;
pub mod duration;
pub mod ids;
pub mod mdm;
pub mod posture;
pub mod resource;
pub mod secret;

pub use duration::DurationStr;
pub use ids::{
    CredentialId, CredentialIdError, DeviceId, DeviceIdError, NameError, NodeName, UserName,
};
pub use resource::{
    AnyResource, ClusterAuthPreference, Device, DeviceTrustMode, Kind, Lock, LockTarget, Metadata,
    ResourceError, Role, Rule, ServiceKind, Token, User, Verb,
};
pub use secret::Secret;
