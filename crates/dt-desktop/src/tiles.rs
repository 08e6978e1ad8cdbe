//! Screen frames, which tiles changed since the last one, and their PNG encoding. Pure: the
//! benchmark and the tests drive it without an X server.

/// The tile edge, in pixels. 64 keeps a typed character to one or two tiles while a full
/// 1280x800 screen is 260 tiles.
pub const TILE: u16 = 64;

/// A captured screen: 32 bits per pixel, `B G R X` byte order (X11 `ZPixmap` at depth 24 on a
/// little-endian server), rows of `width * 4` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn new(width: u16, height: u16) -> Frame {
        Frame {
            width,
            height,
            data: vec![0; usize::from(width) * usize::from(height) * 4],
        }
    }

    fn stride(&self) -> usize {
        usize::from(self.width) * 4
    }

    /// One pixel's bytes, for tests and the benchmark.
    pub fn put(&mut self, x: u16, y: u16, bgrx: [u8; 4]) {
        let at = usize::from(y) * self.stride() + usize::from(x) * 4;
        if let Some(p) = self.data.get_mut(at..at + 4) {
            p.copy_from_slice(&bgrx);
        }
    }
}

/// A rectangle of the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

/// Remembers the last frame sent and says which tiles differ from it.
#[derive(Default)]
pub struct TileDiffer {
    prev: Option<Frame>,
}

impl TileDiffer {
    /// The tiles of `frame` that changed since the last call (all of them the first time,
    /// after a size change, or with `full`), in row order. `frame` becomes the reference.
    pub fn diff(&mut self, frame: &Frame, full: bool) -> Vec<Rect> {
        let prev = match &self.prev {
            Some(p) if !full && p.width == frame.width && p.height == frame.height => Some(p),
            _ => None,
        };
        let mut out = Vec::new();
        let stride = frame.stride();
        let mut ty = 0u16;
        while ty < frame.height {
            let th = TILE.min(frame.height - ty);
            let mut tx = 0u16;
            while tx < frame.width {
                let tw = TILE.min(frame.width - tx);
                let changed = match prev {
                    None => true,
                    Some(p) => (ty..ty + th).any(|row| {
                        let start = usize::from(row) * stride + usize::from(tx) * 4;
                        let end = start + usize::from(tw) * 4;
                        p.data.get(start..end) != frame.data.get(start..end)
                    }),
                };
                if changed {
                    out.push(Rect {
                        x: tx,
                        y: ty,
                        width: tw,
                        height: th,
                    });
                }
                tx += tw;
            }
            ty += th;
        }
        match &mut self.prev {
            Some(p) if p.width == frame.width && p.height == frame.height => {
                p.data.copy_from_slice(&frame.data)
            }
            _ => self.prev = Some(frame.clone()),
        }
        out
    }
}

/// Encodes one rectangle of `frame` as an RGB PNG (fast compression: screens are mostly
/// flat colour, and latency matters more than bytes here).
pub fn encode_png(frame: &Frame, r: Rect) -> Result<Vec<u8>, png::EncodingError> {
    let stride = frame.stride();
    let mut rgb = Vec::with_capacity(usize::from(r.width) * usize::from(r.height) * 3);
    for row in r.y..r.y + r.height {
        let start = usize::from(row) * stride + usize::from(r.x) * 4;
        let end = start + usize::from(r.width) * 4;
        if let Some(px) = frame.data.get(start..end) {
            for p in px.chunks_exact(4) {
                rgb.extend_from_slice(&[p[2], p[1], p[0]]);
            }
        }
    }
    let mut out = Vec::with_capacity(rgb.len() / 8 + 64);
    {
        let mut enc = png::Encoder::new(&mut out, u32::from(r.width), u32::from(r.height));
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(&rgb)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frame_is_all_tiles_then_only_what_changed() {
        let mut f = Frame::new(130, 70);
        let mut d = TileDiffer::default();
        let all = d.diff(&f, false);
        // 130 = 64 + 64 + 2 wide, 70 = 64 + 6 high: 3 x 2 tiles, edges clipped.
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[2],
            Rect {
                x: 128,
                y: 0,
                width: 2,
                height: 64
            }
        );
        assert!(d.diff(&f, false).is_empty(), "nothing changed");
        f.put(129, 69, [1, 2, 3, 0]);
        assert_eq!(
            d.diff(&f, false),
            vec![Rect {
                x: 128,
                y: 64,
                width: 2,
                height: 6
            }]
        );
        assert_eq!(d.diff(&f, true).len(), 6, "refresh sends everything");
        let bigger = Frame::new(140, 70);
        assert_eq!(
            d.diff(&bigger, false).len(),
            6,
            "a new size sends everything"
        );
    }

    #[test]
    fn png_tiles_decode_to_the_pixels() {
        let mut f = Frame::new(64, 64);
        f.put(3, 4, [10, 20, 30, 0]);
        let png_bytes = encode_png(
            &f,
            Rect {
                x: 0,
                y: 0,
                width: 8,
                height: 8,
            },
        )
        .unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (8, 8));
        let at = (4 * 8 + 3) * 3;
        assert_eq!(&buf[at..at + 3], &[30, 20, 10], "BGRX becomes RGB");
    }
}
