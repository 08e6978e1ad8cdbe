//! devtrust's desktop access point (`devtrust desktop start`): Linux X11 desktops in the
//! browser behind role-based device trust. The cluster-wide device-trust mode does not apply
//! to desktops (as the seeds say): only the granting roles' `device_trust_mode`,
//! `desktop_labels`, `desktop_logins` and locks decide, through the access-point runtime.
//!
//! - [`wire`]: the binary protocol between the browser, the auth service and the access point
//!   (pure, bounds-checked, property-tested).
//! - [`tiles`]: frames, which 64x64 tiles changed, PNG encoding (pure).
//! - [`backend`]: the screen-source + input-sink trait an RDP backend would also implement.
//! - [`x11`]: a private Xvfb per session, as the login's user, XTEST input.
//! - [`session`]: one session's capture/input loop over any [`backend::Backend`].
//! - [`server`]: mTLS, the decision, lock enforcement and audit.
//!
//! What it does not do (yet): clipboard sharing (messages exist; the access point refuses
//! and audits them), resizing a running desktop (the size is the browser's at open), PAM
//! sessions. See docs/desktops.md.

pub mod backend;
pub mod server;
pub mod session;
pub mod tiles;
pub mod wire;
pub mod x11;

pub use server::{Desktop, DesktopConfig, RunningDesktop, start};
