//! A long stream on parallel decoders: the frames of a `RequestFrames` split into segments of
//! whole GOPs ([`schedule::stream_segments`] decides when and where), each decoded by a lane of
//! its own (a [`bulk`] pass at the stream class) and delivered in order.
//!
//! Why, when a decoder alone already opens with frame threads on every core: frame threads stop
//! scaling long before the cores do (we cap them at 16, FFmpeg's H.264 gains little past 8), the
//! conversion to the output format runs on the decoder's own thread, and some decoders have no
//! frame threads at all. Segments scale with decoders. What they cost is memory: the segments
//! ahead of the one being read are decoded while it is read, so they are held whole. Each
//! segment is paid for from the in-flight budget ([`Budget`]) before its lane starts, in one
//! payment (a stream never holds part of a segment's payment while waiting for the rest, so two
//! streams cannot wait on each other), and each frame carries its part of it to the transport.
//! At most `parallel` segments are decoded or held at once.
//!
//! Frame-exactness is the passes' own (a lane seeks to the seek point of its first GOP and hands
//! out its frames in presentation order); the delivery checks every frame is the one expected
//! next, so a lane that ends early or out of step is an error, never a wrong frame.

use std::sync::Arc;

use futures::stream::{self, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::engine::budget::{Budget, Paid};
use crate::engine::bulk;
use crate::engine::decoder::{Luma, RawFrame};
use crate::engine::output::OutputSpec;
use crate::engine::pool::{DecoderPool, OpenVideo};
use crate::engine::registry::{CachedFrame, FrameKey, Registry};
use crate::engine::schedule::Class;
use crate::engine::stats::EngineStats;
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// One segment on its way: the frames it must deliver, in order, what its lane hands out, and
/// its payment (split among its frames as they are delivered).
struct Segment {
    expected: std::vec::IntoIter<FrameIndex>,
    frames: mpsc::UnboundedReceiver<Result<RawFrame, EngineError>>,
    paid: Paid,
}

/// What the segmented stream needs of the engine.
pub(crate) struct Engine {
    pub(crate) pool: Arc<DecoderPool>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) budget: Budget,
    pub(crate) stats: Arc<EngineStats>,
}

/// The frames of `segments` (in order) of `video` in the raw output `spec`, each with its part
/// of its segment's payment; `frame_bytes` is what one frame is paid for. Ends after the first
/// error.
pub(crate) fn deliver(
    engine: Engine,
    video: Arc<OpenVideo>,
    segments: Vec<Vec<FrameIndex>>,
    parallel: usize,
    spec: OutputSpec,
    frame_bytes: u64,
) -> impl Stream<Item = Result<(CachedFrame, Paid), EngineError>> + Send + 'static {
    // The segment being read is out of the channel; the channel holds the ones decoded ahead.
    let (started, ready) = mpsc::channel::<Segment>(parallel.saturating_sub(1).max(1));
    let lanes = video.clone();
    tokio::spawn(async move {
        for frames in segments {
            // A slot first (at most `parallel` segments at once), then the payment.
            let Ok(slot) = started.reserve().await else { return };
            let paid = tokio::select! {
                paid = engine.budget.pay(frames.len() as u64 * frame_bytes) => paid,
                _ = started.closed() => return,
            };
            engine.stats.stream_segments.inc();
            let (tx, rx) = mpsc::unbounded_channel();
            let failed = tx.clone();
            let sink = Box::new(move |frame: RawFrame| tx.send(Ok(frame)).is_ok());
            let lane = bulk::run_lane(
                engine.pool.clone(),
                lanes.clone(),
                Class::Stream,
                frames.clone(),
                (spec, Luma::Off),
                sink,
                None,
            );
            // A lane whose stream is gone stops: one waiting for a decoder slot or for its turn
            // is not submitted again (one already running sees it at its next frame).
            tokio::spawn(async move {
                tokio::select! {
                    result = lane => if let Err(e) = result {
                        let _ = failed.send(Err(e));
                    },
                    _ = failed.closed() => {}
                }
            });
            slot.send(Segment { expected: frames.into_iter(), frames: rx, paid });
        }
    });
    let registry = engine.registry;
    let mut frames = tokio_stream::wrappers::ReceiverStream::new(ready)
        .flat_map(move |segment| {
            let (video, registry) = (video.clone(), registry.clone());
            stream::unfold(Some(segment), move |segment| {
                let (video, registry) = (video.clone(), registry.clone());
                async move {
                    let mut segment = segment?;
                    let expected = segment.expected.next()?;
                    let item = match segment.frames.recv().await {
                        Some(Ok(frame)) if frame.index == expected => {
                            let cached = Registry::cached_from_raw(&video, &frame);
                            // Cached as any decode is, and handed to whoever waits for the same frame.
                            let key = FrameKey { video: video.id.clone(), index: expected, spec };
                            registry.complete(key, Ok(cached.clone()));
                            Ok((cached, segment.paid.split_off(frame_bytes)))
                        }
                        Some(Ok(frame)) => Err(out_of_step(
                            &video,
                            format!("frame {} came where frame {} was due", frame.index.0, expected.0),
                        )),
                        Some(Err(e)) => Err(e),
                        None => Err(out_of_step(&video, format!("the segment ended before frame {}", expected.0))),
                    };
                    let next = item.is_ok().then_some(segment);
                    Some((item, next))
                }
            })
        })
        .boxed();
    // Nothing after an error.
    let mut failed = false;
    stream::poll_fn(move |cx| {
        if failed {
            return std::task::Poll::Ready(None);
        }
        let item = std::task::ready!(frames.poll_next_unpin(cx));
        failed = matches!(item, Some(Err(_)));
        std::task::Poll::Ready(item)
    })
}

fn out_of_step(video: &OpenVideo, what: String) -> EngineError {
    EngineError::DecodeFailed {
        video: video.name.clone(),
        reason: format!("a stream segment went out of step: {what}"),
    }
}
