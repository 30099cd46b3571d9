//! Clips: consecutive frames encoded into a container in memory and streamed as bytes.
//!
//! One bulk lane decodes the frames in order (a clip is short, and the encoder wants them in
//! order) and hands each one, as RGB24 at the requested size, to the encoder on the decoder
//! thread; the container's bytes go to the client through a small channel. The lane waits
//! between frames while the client is behind (it yields to any other work meanwhile), so a slow
//! reader holds neither memory nor the decoder.
//!
//! Timestamps are the frames' own, shifted so that the clip starts at 0: in the stream's time
//! base for videos with timestamps (VFR kept exactly in MP4; Matroska stores milliseconds), and
//! from the index's times for videos counted frame by frame.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use crate::engine::bulk;
use crate::engine::decoder::{Luma, RawFrame};
use crate::engine::ffmpeg::{ClipCodec, ClipEncoder};
use crate::engine::index::FrameIdentity;
use crate::engine::output::{Encoding, OutputSpec, PixelFormat};
use crate::engine::pool::{DecoderPool, OpenVideo};
use crate::engine::schedule::Class;
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// Largest piece of the container sent in one message.
const CHUNK: usize = 1 << 20;

/// A piece of a clip on its way out.
#[derive(Debug, Clone)]
pub struct ClipChunk {
    pub data: Bytes,
    /// Frames encoded so far.
    pub frames: u64,
}

/// The MIME type of a clip codec's container.
pub fn content_type(codec: &ClipCodec) -> &'static str {
    match codec {
        ClipCodec::H264Mp4 { .. } => "video/mp4",
        ClipCodec::Ffv1Mkv => "video/x-matroska",
    }
}

/// Each frame's timestamp in the clip and the time base it counts in (num, den).
pub fn timestamps(video: &OpenVideo, frames: &[FrameIndex]) -> ((i32, i32), Vec<i64>) {
    let index = &video.index;
    let Some(first) = frames.first().map(|f| &index.frames[f.get()]) else { return ((1, 1000), Vec::new()) };
    match index.identity {
        FrameIdentity::ByPts => {
            let tb = index.stream.time_base;
            ((tb.num, tb.den), frames.iter().map(|f| index.frames[f.get()].pts.0 - first.pts.0).collect())
        }
        FrameIdentity::ByCount => {
            // Microseconds: fine enough for any frame rate, and strictly increasing as the times are.
            let us = |t: f64| (t * 1e6).round() as i64;
            ((1, 1_000_000), frames.iter().map(|f| us(index.frames[f.get()].time_s) - us(first.time_s)).collect())
        }
    }
}

/// Encode `frames` (consecutive, ascending) of `video` at `size` (its max_width/max_height).
pub fn export(
    pool: Arc<DecoderPool>,
    video: Arc<OpenVideo>,
    frames: Vec<FrameIndex>,
    size: OutputSpec,
    codec: ClipCodec,
) -> impl Stream<Item = Result<ClipChunk, EngineError>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<ClipChunk, EngineError>>(8);
    let spec = OutputSpec { encoding: Encoding::Raw, pixel_format: PixelFormat::Rgb24, ..size };
    let (time_base, pts) = timestamps(&video, &frames);
    let first = frames.first().copied().unwrap_or(FrameIndex(0));
    let last = frames.last().copied().unwrap_or(FrameIndex(0));
    let name = video.name.clone();
    let sink_tx = tx.clone();
    let mut encoder: Option<ClipEncoder> = None;
    let sink = move |frame: RawFrame| -> bool {
        // The frames come in order, consecutive: this is the k-th of the clip.
        let k = (frame.index.0 - first.0) as usize;
        let step = (|| -> Result<Vec<u8>, EngineError> {
            let fail = |e| EngineError::from_ffmpeg(&name, e);
            let enc = match &mut encoder {
                Some(e) => e,
                None => {
                    // Sized from the first frame as decoded (the container's header may differ).
                    let input = (frame.spec.width, frame.spec.height);
                    encoder.insert(ClipEncoder::new(&codec, input, even_for(&codec, input), time_base).map_err(fail)?)
                }
            };
            enc.push(&frame.data, (frame.spec.width, frame.spec.height), pts.get(k).copied().unwrap_or(k as i64))
                .map_err(fail)?;
            let mut out = enc.take_output();
            if frame.index == last {
                out.extend(enc.finish().map_err(fail)?);
            }
            Ok(out)
        })();
        match step {
            Ok(bytes) => send(&sink_tx, bytes, k as u64 + 1),
            Err(e) => {
                let _ = sink_tx.blocking_send(Err(e));
                false
            }
        }
    };
    let ready_tx = tx.clone();
    let ready = Box::new(move || ready_tx.capacity() > 0 || ready_tx.is_closed());
    tokio::spawn(async move {
        if let Err(e) =
            bulk::run_lane(pool, video, Class::Bulk, frames, (spec, Luma::Off), Box::new(sink), Some(ready)).await
        {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The encoded size for frames of `size`: H.264 in 4:2:0 needs even sides (the encoder's
/// converter drops the odd row or column).
fn even_for(codec: &ClipCodec, (w, h): (u32, u32)) -> (u32, u32) {
    match codec {
        ClipCodec::H264Mp4 { .. } => ((w & !1).max(2), (h & !1).max(2)),
        ClipCodec::Ffv1Mkv => (w, h),
    }
}

/// Send `bytes` in pieces; false when the client has gone.
fn send(tx: &mpsc::Sender<Result<ClipChunk, EngineError>>, bytes: Vec<u8>, frames: u64) -> bool {
    let bytes = Bytes::from(bytes);
    if bytes.is_empty() {
        return !tx.is_closed();
    }
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + CHUNK).min(bytes.len());
        if tx.blocking_send(Ok(ClipChunk { data: bytes.slice(at..end), frames })).is_err() {
            return false;
        }
        at = end;
    }
    true
}
