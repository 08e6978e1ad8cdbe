//! `cargo bench -p dt-e2e --bench desktop`: what the desktop access point costs per frame
//! and per keystroke, side by side with the raw X capture it is built on, as ratios.
//!
//! Real parts: a private Xvfb with xterm started by `dt_desktop::x11::XSession` (as `nobody`
//! when run as root), captured with X11 `GetImage`, keys injected with XTEST.
//!
//! Printed:
//! - **full-screen redraw**: frames/s of capture + tile diff + PNG encoding when every tile
//!   changed (the captured frame is XOR-ed with a per-frame pattern, so each frame differs
//!   everywhere), against capture alone and capture + diff.
//! - **key to screen**: a key injected through the session loop (the access point's path:
//!   input message → XTEST → xterm draws → capture → changed tile encoded), timed until the
//!   changed tile is produced; against one raw capture (the floor of any screen update).
//!
//! `BENCH_SECONDS` (default 5) bounds each measurement; CI smoke-runs it with 1 in debug.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dt_desktop::backend::Backend;
use dt_desktop::session::{self, Input};
use dt_desktop::tiles::{Frame, TileDiffer, encode_png};
use dt_desktop::wire::{ClientMsg, ServerMsg};
use dt_desktop::x11::{self, XConfig, XSession};

const W: u16 = 1280;
const H: u16 = 800;

fn seconds() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    )
}

fn start() -> XSession {
    let login = if x11::effective_uid() == 0 {
        "nobody".to_string()
    } else {
        std::env::var("USER").expect("USER")
    };
    let account = x11::lookup_account(&login).unwrap();
    let cfg = XConfig {
        command: "SHELL=/bin/sh exec xterm -geometry 120x40+0+0".into(),
        ..XConfig::default()
    };
    XSession::start(&account, &cfg, W, H)
        .unwrap_or_else(|e| panic!("{e} (install xvfb and xterm: scripts/install-deps.sh)"))
}

/// Runs `f` repeatedly for `budget`; calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < budget {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let budget = seconds();
    let mut xs = start();
    // Let xterm draw its window first.
    std::thread::sleep(Duration::from_millis(500));

    // Full-screen redraw.
    let mut frame = Frame::new(W, H);
    // Warm up (page in the server's framebuffer and our buffers), then measure.
    rate(Duration::from_millis(300), || {
        xs.capture(&mut frame).unwrap()
    });
    let capture_fps = rate(budget, || xs.capture(&mut frame).unwrap());
    let mut differ = TileDiffer::default();
    let mut k = 0u8;
    let mut change = |f: &mut Frame| {
        k = k.wrapping_add(1);
        for (i, b) in f.data.iter_mut().enumerate() {
            *b ^= k.wrapping_add((i / 4096) as u8);
        }
    };
    let diff_fps = rate(budget, || {
        xs.capture(&mut frame).unwrap();
        change(&mut frame);
        differ.diff(&frame, false);
    });
    let mut tiles = 0usize;
    let mut bytes = 0usize;
    let mut frames = 0usize;
    let full_fps = rate(budget, || {
        xs.capture(&mut frame).unwrap();
        change(&mut frame);
        for r in differ.diff(&frame, false) {
            bytes += encode_png(&frame, r).unwrap().len();
            tiles += 1;
        }
        frames += 1;
    });
    println!("desktop: full-screen redraw, {W}x{H}, every 64x64 tile changed");
    println!(
        "  {:<36} {:>10.1} frames/s",
        "raw capture (GetImage)", capture_fps
    );
    println!(
        "  {:<36} {:>10.1} frames/s   {:.2}x of raw capture",
        "capture + diff",
        diff_fps,
        diff_fps / capture_fps
    );
    println!(
        "  {:<36} {:>10.1} frames/s   {:.2}x of raw capture   ({} tiles/frame, {} KiB/frame)",
        "capture + diff + PNG (the AP's frame)",
        full_fps,
        full_fps / capture_fps,
        tiles / frames.max(1),
        bytes / frames.max(1) / 1024
    );

    // Key to screen, through the session loop.
    let raw: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            xs.capture(&mut frame).unwrap();
            t.elapsed()
        })
        .collect();
    let (in_tx, in_rx) = mpsc::channel::<Input>();
    let (tile_tx, tile_rx) = mpsc::channel::<Instant>();
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let worker = std::thread::spawn(move || {
        session::run(&mut xs, &in_rx, &thread_stop, session::CAPTURE_EVERY, |m| {
            if matches!(m, ServerMsg::Tile { .. }) {
                let _ = tile_tx.send(Instant::now());
            }
            true
        })
    });
    // The first frame is the whole screen: drain until quiet.
    while tile_rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut type_a = true;
    while lat.len() < 5 || (start.elapsed() < budget && lat.len() < 200) {
        let keysym = if type_a { u32::from(b'a') } else { 0xff08 }; // a, BackSpace
        type_a = !type_a;
        let t = Instant::now();
        for down in [true, false] {
            in_tx
                .send(Input::Msg(ClientMsg::Key { keysym, down }))
                .unwrap();
        }
        let Ok(at) = tile_rx.recv_timeout(Duration::from_secs(5)) else {
            panic!("no tile within 5 s of a key");
        };
        lat.push(at.duration_since(t));
        while tile_rx.recv_timeout(Duration::from_millis(60)).is_ok() {}
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(in_tx);
    worker.join().unwrap();
    let raw_ms = median_ms(raw);
    let key_ms = median_ms(lat.clone());
    println!("desktop: key to screen (median of {} keys)", lat.len());
    println!("  {:<36} {:>10.2} ms", "one raw capture (GetImage)", raw_ms);
    println!(
        "  {:<36} {:>10.2} ms   {:.1}x of one raw capture",
        "key -> XTEST -> xterm -> tile",
        key_ms,
        key_ms / raw_ms
    );
}
