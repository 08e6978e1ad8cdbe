//! Just enough WebSocket (RFC 6455 §5.2) for the relay of an upgraded exec connection: find
//! frame boundaries in the server-to-client byte stream (to add a frame without cutting
//! one), and write the error-channel frame of the Kubernetes channel protocols
//! (`v4.channel.k8s.io`, `v5.channel.k8s.io`: channel 3 carries a `metav1.Status`).
//!
//! The relay never parses or changes the frames it passes on.

/// Follows frame headers and payload lengths through a byte stream.
#[derive(Default, Debug)]
pub struct FrameTracker {
    head: Vec<u8>,
    remaining: u64,
}

/// The length of a complete frame header and the payload length it announces, once `h`
/// holds enough of it.
fn header(h: &[u8]) -> Option<(usize, u64)> {
    let b1 = *h.get(1)?;
    let masked = b1 & 0x80 != 0;
    let (ext, len) = match b1 & 0x7f {
        126 => (2, u64::from(u16::from_be_bytes([*h.get(2)?, *h.get(3)?]))),
        127 => {
            let b: [u8; 8] = h.get(2..10)?.try_into().ok()?;
            (8, u64::from_be_bytes(b))
        }
        n => (0, u64::from(n)),
    };
    Some((2 + ext + if masked { 4 } else { 0 }, len))
}

impl FrameTracker {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if let Some((len, payload)) = header(&self.head)
                && self.head.len() >= len
            {
                self.head.clear();
                self.remaining = payload;
            }
        }
    }

    /// Between two frames?
    pub fn at_boundary(&self) -> bool {
        self.head.is_empty() && self.remaining == 0
    }
}

/// A binary frame on channel 3 with `status_json`, then a normal close (1000).
pub fn error_channel_frames(status_json: &str) -> Vec<u8> {
    let mut payload = vec![3u8];
    payload.extend_from_slice(status_json.as_bytes());
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x82);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&payload);
    out.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = error_channel_frames(&"x".repeat(len.saturating_sub(1)));
        f.truncate(f.len() - 4); // without the close frame
        f
    }

    #[test]
    fn boundaries_of_short_medium_and_long_frames() {
        for len in [1, 125, 126, 300, 70_000] {
            let f = frame(len);
            let mut t = FrameTracker::default();
            t.feed(&f[..f.len() - 1]);
            assert!(!t.at_boundary(), "{len}: inside the frame");
            t.feed(&f[f.len() - 1..]);
            assert!(t.at_boundary(), "{len}: after the frame");
        }
    }

    proptest! {
        /// `boundaries_survive_any_split`: however the bytes of several frames arrive,
        /// the tracker is at a boundary exactly at the end.
        #[test]
        fn boundaries_survive_any_split(lens in proptest::collection::vec(1usize..400, 1..5), cut in 1usize..50) {
            let wire: Vec<u8> = lens.iter().flat_map(|l| frame(*l)).collect();
            let mut t = FrameTracker::default();
            for chunk in wire.chunks(cut) {
                t.feed(chunk);
            }
            prop_assert!(t.at_boundary());
        }
    }
}
