//! One desktop session's loop, on its own thread: capture, diff, encode and send the changed
//! tiles; inject the input that arrives; stop when asked, when the client goes, or when the
//! backend says the desktop is over. Generic over [`Backend`], so the benchmark and tests can
//! drive it with any screen source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::tiles::{Frame, TileDiffer, encode_png};
use crate::wire::{ClientMsg, EndReason, ServerMsg};

/// Time between two captures when nothing else happens (about 30 frames per second).
pub const CAPTURE_EVERY: Duration = Duration::from_millis(33);
/// How soon after input the next capture happens.
pub const AFTER_INPUT: Duration = Duration::from_millis(8);

/// Input for the session thread.
#[derive(Debug)]
pub enum Input {
    Msg(ClientMsg),
}

/// Why the loop ended, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: EndReason,
    pub message: String,
}

/// Captures one frame and the tile messages for what changed (the benchmark's unit of work).
pub fn frame_messages(
    backend: &mut dyn Backend,
    frame: &mut Frame,
    differ: &mut TileDiffer,
    full: bool,
) -> Result<Vec<ServerMsg>, String> {
    backend.capture(frame).map_err(|e| e.to_string())?;
    differ
        .diff(frame, full)
        .into_iter()
        .map(|r| {
            encode_png(frame, r)
                .map(|png| ServerMsg::Tile {
                    x: r.x,
                    y: r.y,
                    width: r.width,
                    height: r.height,
                    png,
                })
                .map_err(|e| format!("encoding a tile: {e}"))
        })
        .collect()
}

/// Runs the session until it ends. `send` delivers a message to the client and returns
/// `false` once the client is gone.
pub fn run(
    backend: &mut dyn Backend,
    input: &Receiver<Input>,
    stop: &Arc<AtomicBool>,
    every: Duration,
    mut send: impl FnMut(ServerMsg) -> bool,
) -> Outcome {
    let (w, h) = backend.size();
    let mut frame = Frame::new(w, h);
    let mut differ = TileDiffer::default();
    let mut full = true;
    let mut seq = 0u32;
    let gone = || Outcome {
        reason: EndReason::Ended,
        message: "the client left".into(),
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return Outcome {
                reason: EndReason::Ended,
                message: "the session was ended".into(),
            };
        }
        if let Some(why) = backend.ended() {
            let reason = if why.contains("X server") {
                EndReason::Error
            } else {
                EndReason::Ended
            };
            return Outcome {
                reason,
                message: why,
            };
        }
        match frame_messages(backend, &mut frame, &mut differ, full) {
            Ok(tiles) => {
                full = false;
                if !tiles.is_empty() {
                    for t in tiles {
                        if !send(t) {
                            return gone();
                        }
                    }
                    if !send(ServerMsg::FrameEnd { seq }) {
                        return gone();
                    }
                    seq = seq.wrapping_add(1);
                }
            }
            Err(why) => {
                // The server may have died between the check above and the capture.
                let message = backend.ended().unwrap_or(why);
                return Outcome {
                    reason: EndReason::Error,
                    message,
                };
            }
        }
        let mut deadline = Instant::now() + every;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match input.recv_timeout(left) {
                Ok(Input::Msg(m)) => {
                    let r = match m {
                        ClientMsg::Key { keysym, down } => backend.key(keysym, down),
                        ClientMsg::Pointer { x, y, buttons } => backend.pointer(x, y, buttons),
                        ClientMsg::Refresh => {
                            full = true;
                            Ok(())
                        }
                        // Checked and refused before the loop (clipboard needs the role's
                        // permission; Open only starts a session).
                        ClientMsg::Clipboard(_) | ClientMsg::Open { .. } => Ok(()),
                    };
                    if let Err(e) = r {
                        return Outcome {
                            reason: EndReason::Error,
                            message: backend.ended().unwrap_or_else(|| e.to_string()),
                        };
                    }
                    // Show the effect of input soon: capture shortly after it rather than
                    // at the next tick (the client draws in a few milliseconds).
                    deadline = deadline.min(Instant::now() + AFTER_INPUT);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return gone(),
            }
        }
    }
}
