//! The three devtrust programs, as library modules so their logic is testable:
//! `devtrust` (the server), `dtctl` (the admin CLI), `dtsh` (the user CLI). The files in
//! `src/bin/` only call into here. `anyhow` lives here and nowhere else.

pub mod app_cmd;
pub mod common;
pub mod db_cmd;
pub mod desktop_cmd;
pub mod devtrust;
pub mod dtctl;
pub mod dtctl_access;
pub mod dtctl_auth;
pub mod dtctl_bots;
pub mod dtctl_devices;
pub mod dtctl_events;
pub mod dtctl_mdm;
pub mod dtsh;
pub mod dtsh_app;
pub mod dtsh_db;
pub mod dtsh_device;
pub mod dtsh_kube;
pub mod dtsh_ssh;
pub mod dtsh_web;
pub mod kube_cmd;
pub mod mdm_cmd;
pub mod node_cmd;
