//! Inventory sync from an MDM (Jamf Pro, Microsoft Intune): what `devtrust mdm start` runs.
//!
//! What it guarantees:
//! - devices are keyed by (OS, serial) and carry the source `{name, origin}` and the MDM's
//!   profile; a sync never changes a device of another source or one added by hand (the
//!   planner skips it, and the auth service refuses it again on its own);
//! - `on_missing: DELETE` runs only after a full sync whose every page arrived; a failed
//!   fetch (refused credentials, a malformed page, a page that never ends) writes nothing;
//! - records devtrust cannot keep (no serial, unsupported OS, duplicate serials) are skipped
//!   with a reason and counted, never half-applied;
//! - secrets come from files and never reach logs or errors.
//!
//! What it deliberately does not do: decide who may enroll. Auto-enrollment compares the
//! synced profile with the live device in the auth service (`dt-auth`'s device code).
//!
//! Modules: [`config`] (the file), [`record`] (an MDM record into a profile), [`plan`] (the
//! pure planner), [`http`] (HTTPS client, retry policy), [`source`] (the Jamf and Graph
//! clients), [`sync`] (the driver: fetch, plan, apply in batches, report).

pub mod config;
pub mod error;
pub mod http;
pub mod plan;
pub mod record;
pub mod source;
pub mod sync;

pub use error::MdmError;
