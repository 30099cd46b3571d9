//! Storyboards: thumbnails at evenly spaced times laid out in one grid image (a sprite), the
//! shape scrub bars and hover previews use (Mux, YouTube): one JPEG plus where each tile is.
//!
//! Tile *t* of *n* stands for time `t * duration / n`. In keyframe mode a tile shows the
//! keyframe nearest that time, so only keyframes are decoded (each costs one seek and a
//! keyframe's decode: an order of magnitude cheaper than decoding up to arbitrary frames); in
//! exact mode it shows the frame on screen at that time. The layout and the choice of frames
//! are pure (tested below); the store fetches the frames and [`compose`] draws the grid.

use crate::engine::index::VideoIndex;
use crate::engine::output::fit_inside;
use crate::units::FrameIndex;

/// Where the tiles go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub tiles: u32,
    pub tile_width: u32,
    pub tile_height: u32,
    pub columns: u32,
    pub rows: u32,
}

impl Layout {
    /// `tiles` tiles of the video's frame fit inside `tile_width` x `tile_height` (0: no bound
    /// on that side), `columns` per row (0: 10, or fewer tiles).
    pub fn new(video_w: u32, video_h: u32, tiles: u32, tile_width: u32, tile_height: u32, columns: u32) -> Layout {
        let tiles = tiles.max(1);
        let (tile_width, tile_height) = fit_inside(video_w, video_h, tile_width, tile_height);
        let columns = if columns == 0 { 10 } else { columns }.min(tiles);
        Layout { tiles, tile_width, tile_height, columns, rows: tiles.div_ceil(columns) }
    }

    pub fn width(&self) -> u32 {
        self.columns * self.tile_width
    }

    pub fn height(&self) -> u32 {
        self.rows * self.tile_height
    }

    /// Top-left corner of tile `t`.
    pub fn origin(&self, t: u32) -> (u32, u32) {
        ((t % self.columns) * self.tile_width, (t / self.columns) * self.tile_height)
    }
}

/// The frame each tile shows.
pub fn frames(index: &VideoIndex, tiles: u32, exact: bool) -> Vec<FrameIndex> {
    let count = index.frame_count();
    if count == 0 {
        return Vec::new();
    }
    let keyframes: Vec<usize> = index.frames.iter().enumerate().filter(|(_, f)| f.key).map(|(i, _)| i).collect();
    (0..tiles.max(1))
        .map(|t| {
            let time = index.duration_s * f64::from(t) / f64::from(tiles.max(1));
            let at = index.frame_at(time).map(|f| f.get()).unwrap_or(if t == 0 { 0 } else { count - 1 });
            if exact || keyframes.is_empty() {
                return FrameIndex(at as u32);
            }
            // The keyframe presented nearest the tile's time.
            let after = keyframes.partition_point(|&k| index.frames[k].time_s <= time);
            let before = after.checked_sub(1).map(|i| keyframes[i]);
            let next = keyframes.get(after).copied();
            let distance = |k: usize| (index.frames[k].time_s - time).abs();
            let nearest = match (before, next) {
                (Some(b), Some(n)) if distance(n) < distance(b) => n,
                (Some(b), _) => b,
                (None, Some(n)) => n,
                (None, None) => at,
            };
            FrameIndex(nearest as u32)
        })
        .collect()
}

/// Draw tiles (RGB24, each `w` x `h` no larger than a tile, centred in it) into the grid:
/// `tiles[t]` is what tile `t` shows. The background is black.
pub fn compose(layout: &Layout, tiles: &[(&[u8], u32, u32)]) -> Vec<u8> {
    let (width, height) = (layout.width() as usize, layout.height() as usize);
    let mut out = vec![0u8; width * height * 3];
    for (t, &(pixels, w, h)) in tiles.iter().enumerate().take(layout.tiles as usize) {
        let (w, h) = (w.min(layout.tile_width) as usize, h.min(layout.tile_height) as usize);
        if pixels.len() < w * h * 3 {
            continue;
        }
        let (x0, y0) = layout.origin(t as u32);
        let x0 = x0 as usize + (layout.tile_width as usize - w) / 2;
        let y0 = y0 as usize + (layout.tile_height as usize - h) / 2;
        for row in 0..h {
            let src = &pixels[row * w * 3..(row + 1) * w * 3];
            let at = ((y0 + row) * width + x0) * 3;
            out[at..at + w * 3].copy_from_slice(src);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ffmpeg::{PacketMeta, StreamInfo};

    /// 100 frames at 10 fps, a keyframe every 10.
    fn index() -> VideoIndex {
        let packets: Vec<PacketMeta> = (0..100)
            .map(|i| PacketMeta { pts: Some(i), dts: Some(i), duration: 1, key: i % 10 == 0, discard: false })
            .collect();
        VideoIndex::from_packets(StreamInfo::for_tests(64, 10), &packets).unwrap()
    }

    #[test]
    fn tiles_sit_in_rows_of_columns() {
        let l = Layout::new(1280, 720, 50, 160, 0, 0);
        assert_eq!((l.tile_width, l.tile_height, l.columns, l.rows), (160, 90, 10, 5));
        assert_eq!((l.width(), l.height()), (1600, 450));
        assert_eq!(l.origin(0), (0, 0));
        assert_eq!(l.origin(13), (480, 90));
        let few = Layout::new(1280, 720, 3, 160, 0, 0);
        assert_eq!((few.columns, few.rows), (3, 1));
    }

    #[test]
    fn tiles_are_evenly_spaced_in_time() {
        let idx = index();
        assert_eq!(frames(&idx, 5, true), [0, 20, 40, 60, 80].map(FrameIndex).to_vec());
        // 4 tiles: times 0, 2.5, 5, 7.5 s; nearest keyframes 0, 20 or 30 (a tie goes back), 50, 70 or 80.
        assert_eq!(frames(&idx, 4, false), [0, 20, 50, 70].map(FrameIndex).to_vec());
        assert_eq!(frames(&idx, 4, true), [0, 25, 50, 75].map(FrameIndex).to_vec());
        assert!(frames(&idx, 7, false).iter().all(|f| f.0 % 10 == 0));
    }

    #[test]
    fn compose_centres_each_tile() {
        let l = Layout::new(4, 2, 2, 4, 2, 2);
        let red = [255u8, 0, 0].repeat(2 * 2);
        let green = [0u8, 255, 0].repeat(4 * 2);
        let out = compose(&l, &[(&red, 2, 2), (&green, 4, 2)]);
        assert_eq!(out.len(), 8 * 2 * 3);
        // Tile 0: black, red, red, black on each row; tile 1: green.
        assert_eq!(&out[0..3], &[0, 0, 0]);
        assert_eq!(&out[3..6], &[255, 0, 0]);
        assert_eq!(&out[9..12], &[0, 0, 0]);
        assert_eq!(&out[12..15], &[0, 255, 0]);
    }
}
