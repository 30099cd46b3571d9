//! What a video is to the engine: its identity on disk, its name, and its index, built once when
//! it is first opened.
//!
//! A [`VideoId`] names the file's content as far as caching goes (a replaced file is a new
//! video, so stale frames are never served); an [`OpenVideo`] is what requests, decoders and the
//! frame registry share; [`build_index`] makes the index with one demux pass (or, for files
//! without usable timestamps, one decode pass).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::ffmpeg::{FfmpegError, MediaFile};
use crate::engine::index::{DecodedFrameMeta, VideoIndex};
use crate::engine::index_store::ContentKey;
use crate::engine::output::OutputSpec;
use crate::engine::EngineError;

/// Identity of a video file's content as far as caching goes: a replaced file (another inode,
/// as a rename or `cp -p` leaves it even with the old size and time), or one changed in place
/// (new size or modification time), is a new video, so stale frames are never served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VideoId {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub modified_ns: i128,
}

/// An indexed video, shared by requests, decoders and the cache.
#[derive(Debug)]
pub struct OpenVideo {
    pub id: VideoId,
    /// The name clients use (relative to its media root).
    pub name: String,
    pub index: Arc<VideoIndex>,
    /// Names the file's bytes (identity plus a digest of both ends): keys the stored index
    /// and the HTTP ETags.
    pub content_key: ContentKey,
}

impl OpenVideo {
    /// The raw size of one frame of this video in `spec` (an upper bound for PNG and JPEG).
    pub fn frame_bytes(&self, spec: OutputSpec) -> u64 {
        let (width, height) = self.index.stream.shown_size(spec.upright);
        let raw = spec.raw_spec(width, height);
        u64::from(raw.width) * u64::from(raw.height) * raw.pixel_format.bytes_per_pixel() as u64
    }

    /// About what the cache holds of one frame of this video in `spec`: the decoder's planes
    /// where they are smaller than the output (8-bit YUV or gray at its own size, not turned:
    /// see the registry's `Stored`), else the output itself. An estimate from the stream's
    /// pixel format, on the high side (decoders pad rows: 192 pixels wide, rows of 256 bytes),
    /// for bounds such as the speculative share's frames.
    pub fn cached_bytes(&self, spec: OutputSpec) -> u64 {
        let output = self.frame_bytes(spec);
        let stream = &self.index.stream;
        let (width, height) = stream.shown_size(spec.upright);
        let raw = spec.raw_spec(width, height);
        let turned = spec.upright && !stream.orientation.is_upright();
        let at_own_size = (raw.width, raw.height) == (stream.width, stream.height);
        match planes_eighths_per_pixel(&stream.pixel_format) {
            Some(eighths) if at_own_size && !turned => {
                let row = (u64::from(stream.width) + 64).next_multiple_of(64);
                (row * u64::from(stream.height) * eighths / 8 + 512).min(output)
            }
            _ => output,
        }
    }
}

/// Bytes per pixel, in eighths, of the planes the cache keeps for a pixel format (those the
/// decoder's planes are copied for: 8-bit planar and semi-planar YUV and gray).
fn planes_eighths_per_pixel(pixel_format: &str) -> Option<u64> {
    Some(match pixel_format {
        "yuv410p" => 9,
        "yuv420p" | "yuvj420p" | "nv12" | "nv21" | "yuv411p" => 12,
        "yuv422p" | "yuvj422p" | "yuv440p" | "yuvj440p" => 16,
        "yuva420p" => 20,
        "yuv444p" | "yuvj444p" => 24,
        "gray" => 8,
        _ => return None,
    })
}

/// Build a video's index: one demux pass without decoding, or, for files whose packets carry
/// no usable timestamps, one sequential decode pass.
pub fn build_index(path: &Path, video: &str) -> Result<VideoIndex, EngineError> {
    let mut file = MediaFile::open(path).map_err(|e| EngineError::from_ffmpeg(video, e))?;
    let mut packets = Vec::new();
    while let Some(p) = file.read_packet().map_err(|e| EngineError::from_ffmpeg(video, e))? {
        packets.push(p.meta);
    }
    let stream = file.info().clone();
    let index = match VideoIndex::from_packets(stream.clone(), &packets) {
        Some(index) => index,
        None => decode_pass(path, video, stream, packets.len())?,
    };
    if index.frame_count() == 0 {
        return Err(EngineError::NoFrames { video: video.to_string() });
    }
    Ok(index)
}

fn decode_pass(
    path: &Path,
    video: &str,
    stream: crate::engine::ffmpeg::StreamInfo,
    packet_count: usize,
) -> Result<VideoIndex, EngineError> {
    let map = |e: FfmpegError| EngineError::from_ffmpeg(video, e);
    let mut file = MediaFile::open(path).map_err(map)?;
    let mut decoder = file.new_decoder(1).map_err(map)?;
    let mut metas = Vec::new();
    loop {
        let packet = file.read_packet().map_err(map)?;
        decoder
            .decode(packet.as_ref(), false, &mut |f| {
                metas.push(DecodedFrameMeta { best_effort_timestamp: f.best_effort_timestamp(), key: f.is_key() });
            })
            .map_err(map)?;
        if packet.is_none() {
            break;
        }
    }
    Ok(VideoIndex::from_decode(stream, packet_count, &metas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ffmpeg::{PacketMeta, StreamInfo};
    use crate::engine::output::PixelFormat;

    fn video(pixel_format: &str) -> OpenVideo {
        let packets = [PacketMeta { pts: Some(0), dts: Some(0), duration: 1, key: true, discard: false }];
        let stream = StreamInfo { pixel_format: pixel_format.into(), ..StreamInfo::for_tests(640, 25) };
        let index = VideoIndex::from_packets(stream, &packets).unwrap();
        let id = VideoId { path: "v.mp4".into(), device: 0, inode: 0, size: 0, modified_ns: 0 };
        OpenVideo { id, name: "v.mp4".into(), index: Arc::new(index), content_key: ContentKey([0; 16]) }
    }

    #[test]
    fn the_cache_holds_8_bit_yuv_frames_at_their_own_size_as_planes() {
        let rgb = OutputSpec::default();
        let yuv = video("yuv420p");
        assert_eq!(yuv.frame_bytes(rgb), 640 * 640 * 3);
        // Rows of 640 pixels padded to 704 bytes, plus the planes' alignment and slack.
        assert_eq!(yuv.cached_bytes(rgb), 704 * 640 * 3 / 2 + 512, "4:2:0 planes, about half of rgb24");
        let rgba = OutputSpec { pixel_format: PixelFormat::Rgba, ..rgb };
        assert_eq!(video("yuv444p").cached_bytes(rgba), 704 * 640 * 3 + 512, "4:4:4 planes, smaller than rgba");
        assert_eq!(video("yuv444p").cached_bytes(rgb), 640 * 640 * 3, "no smaller than rgb24: the output");
        let gray = OutputSpec { pixel_format: PixelFormat::Gray8, ..rgb };
        assert_eq!(yuv.cached_bytes(gray), 640 * 640, "gray output is smaller than the planes");
        let scaled = OutputSpec { max_width: 320, ..rgb };
        assert_eq!(yuv.cached_bytes(scaled), yuv.frame_bytes(scaled), "scaled frames are kept as output");
        assert_eq!(video("yuv420p10le").cached_bytes(rgb), 640 * 640 * 3, "10-bit planes are not kept");
    }
}
