//! What the access point needs of a desktop, whatever serves it: a screen to capture and an
//! input sink. [`crate::x11::XSession`] (a private Xvfb) is the one implementation today; an
//! RDP backend (a Windows host reached over RDP, its bitmap updates as the screen source and
//! its input PDUs as the sink) fits the same trait.

use crate::tiles::Frame;

/// Why a backend stopped working; the session ends with this text.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the X server went away: {0}")]
    Gone(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A desktop's screen source and input sink. Calls come from one thread (the session's).
pub trait Backend: Send {
    /// The screen's size.
    fn size(&self) -> (u16, u16);
    /// Capture the whole screen into `frame` (resized if needed).
    fn capture(&mut self, frame: &mut Frame) -> Result<(), BackendError>;
    /// A key (X keysym) went down or up.
    fn key(&mut self, keysym: u32, down: bool) -> Result<(), BackendError>;
    /// The pointer moved to (x, y) with `buttons` held (bit 0 = button 1).
    fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> Result<(), BackendError>;
    /// Why the desktop is over (its session command or server exited), if it is.
    fn ended(&mut self) -> Option<String>;
}
