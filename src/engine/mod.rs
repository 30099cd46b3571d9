//! The frame-exact decoding engine: from a video file and a frame index (or time) to exactly
//! that frame's pixels.
//!
//! The request path reads top to bottom:
//! - [`store`]: the facade. Answers from the [`cache`] or asks the [`pool`] for a decode, and
//!   makes concurrent requests for the same missing frame share one decode; [`opened`]: the
//!   videos open, each resolved inside the media roots and opened (indexed) once.
//! - [`registry`]: the cache, frames in flight and who waits for them (single-flight); the
//!   decoder threads write to it directly.
//! - [`pool`]: decoder threads per video, a bounded number of them, each with an inbox of jobs
//!   by priority class; picks the decoder that reaches the target cheapest.
//! - [`worker`]: one decoder thread, its inbox and the loop through it; [`threads`]: the kernel
//!   threads it decodes on (its own and its codec's), which its CPU priority moves together.
//! - [`schedule`]: the pure decisions: which job next, when to yield, which decoder gives way,
//!   how many codec threads, the backtrack window to fill.
//! - [`decoder`]: one decoder's frame-exact loop, following the [`plan`].
//! - [`index`]: the demux-once index of a video's frames and keyframes; [`anchor`]: where the
//!   frames of a video without timestamps stand after a seek, by their digests.
//! - [`ffmpeg`]: the only module that touches FFmpeg (and the only `unsafe`).
//! - [`output`]: pixel formats, sizes and PNG/JPEG encoding.
//! - [`budget`]: the bytes of frames on their way to clients, bounded (slow readers wait).
//! - [`buffers`]: recycled pixel buffers (fresh multi-MB allocations cost page zeroing).
//!
//! Beside the frame path, work over many frames of a video:
//! - [`bulk`]: passes over many frames at the bulk class, in lanes on several decoders, each
//!   frame handed to a sink on its decoder thread instead of the cache.
//! - [`hashes`] (what a fingerprint is, how a table is stored) and [`fingerprints`] (a video's
//!   table, computed once by a pass, kept in memory and on disk); [`dups`] finds repeated
//!   frames and loops in tables.
//! - [`segments`]: a long stream on an idle daemon, in segments of whole GOPs on parallel
//!   decoders (lanes at the stream class), delivered in order.
//! - [`storyboard`]: thumbnail grids from keyframes or exact frames.
//! - [`clip`]: frames encoded into a container in memory and streamed.

mod anchor;
mod budget;
pub mod buffers;
mod bulk;
mod cache;
pub mod clip;
pub mod decoder;
mod dups;
pub mod faults;
pub mod ffmpeg;
mod fingerprints;
mod frequency;
mod hashes;
pub mod index;
pub mod index_store;
mod opened;
pub mod output;
pub mod plan;
pub mod pool;
mod registry;
pub mod schedule;
mod segments;
pub mod selection;
pub mod stats;
pub mod store;
pub mod storyboard;
mod threads;
mod turns;
pub mod video;
mod worker;

use ffmpeg::FfmpegError;

/// What can go wrong between a video name and its pixels. Clone, because one decode's outcome
/// is handed to every request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{video}: not a readable video ({reason})")]
    NotAVideo { video: String, reason: String },
    #[error("{video}: the file has no video stream")]
    NoVideoStream { video: String },
    #[error("{video}: the video stream has no decodable frames")]
    NoFrames { video: String },
    #[error("{video}: no decoder for its codec {codec}")]
    UnsupportedCodec { video: String, codec: String },
    #[error("{video}: frame index {index} is out of range: the video has {count} frames (valid indices 0..={last}, or -{count}..=-1 from the end)", last = (*count as i64) - 1)]
    IndexOutOfRange { video: String, index: i64, count: usize },
    #[error("{video}: time {time_s}s is out of range: the video lasts {duration_s:.3}s (valid times 0 <= t < {duration_s:.3})")]
    TimeOutOfRange { video: String, time_s: f64, duration_s: f64 },
    #[error("{video}: frame {index} cannot be decoded: {reason}")]
    FrameUnavailable { video: String, index: u32, reason: String },
    #[error("{video}: decoding failed: {reason}")]
    DecodeFailed { video: String, reason: String },
    #[error("{video}: {reason}")]
    EncodeFailed { video: String, reason: String },
    /// The server's FFmpeg lacks an encoder a request needs (libx264 for MP4 clips).
    #[error("this server cannot encode {codec}: its FFmpeg has no such encoder (install one built with it)")]
    EncoderMissing { codec: String },
    #[error("too busy: {what}")]
    Overloaded { what: String },
    #[error("the frame server is shutting down")]
    ShuttingDown,
    /// The file was removed after the request found it (before it was opened, or while a
    /// decoder had to open it again).
    #[error("{video}: the file went away while it was being read")]
    Vanished { video: String },
    /// The file changed while it was being opened (a request saw the new content and opened
    /// that instead): the old opening stopped.
    #[error("{video}: the file changed while it was being indexed (is it still being written?); ask again")]
    Changed { video: String },
    /// The file was replaced or rewritten while its frames were decoded: the index describes
    /// the bytes it had, so nothing more is decoded from the ones it has now.
    #[error("{video}: the file changed while its frames were being read (replaced or rewritten); ask again")]
    ChangedWhileRead { video: String },
    /// A decoder closed to make room for more urgent work gave the job back; the store submits
    /// it again, so this reaches a client only if that keeps happening.
    #[error("the decoder was taken for more urgent work; retry")]
    Preempted,
    /// A bug: code that should never fail panicked (a decoder thread, an index build, an
    /// encoder). The panic was caught and logged; the decoder is replaced.
    #[error("{video}: an internal error stopped {what} (a bug, logged on the server); the request can be retried")]
    Panicked { video: String, what: &'static str },
}

impl EngineError {
    pub(crate) fn from_ffmpeg(video: &str, e: FfmpegError) -> EngineError {
        let video = video.to_string();
        match e {
            FfmpegError::Open(reason) => EngineError::NotAVideo { video, reason },
            FfmpegError::Missing => EngineError::Vanished { video },
            FfmpegError::NoVideoStream => EngineError::NoVideoStream { video },
            FfmpegError::NoDecoder(codec) => EngineError::UnsupportedCodec { video, codec },
            FfmpegError::NoEncoder(codec) => EngineError::EncoderMissing { codec },
            FfmpegError::Demux(reason)
            | FfmpegError::Seek(reason)
            | FfmpegError::Decode(reason)
            | FfmpegError::Convert(reason) => EngineError::DecodeFailed { video, reason },
            FfmpegError::Encode(reason) => EngineError::EncodeFailed { video, reason },
        }
    }

    /// How a blocking task that did not finish is told to the request: a panic (a bug, logged and
    /// counted) is [`EngineError::Panicked`]; a task cancelled by the runtime shutting down is
    /// [`EngineError::ShuttingDown`].
    pub(crate) fn joined<'a>(
        stats: &'a stats::EngineStats,
        video: &'a str,
        what: &'static str,
    ) -> impl Fn(tokio::task::JoinError) -> EngineError + 'a {
        move |e| {
            if e.is_panic() {
                tracing::error!(video, what, error = %e, "a panic was caught");
                stats.panics.inc();
                EngineError::Panicked { video: video.to_string(), what }
            } else {
                EngineError::ShuttingDown
            }
        }
    }
}
