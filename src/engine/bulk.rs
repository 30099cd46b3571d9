//! Bulk passes: many frames of one video decoded in order, at the bulk class, for work that
//! looks at every frame (hashes, clip export) rather than returning frames to a client.
//!
//! A pass is split into lanes at GOP boundaries; each lane is one [`Pass`] job on a decoder of
//! its own (the pool gives a pass starting far from every decoder a new one while the bounds
//! allow), so the lanes decode in parallel on the cores, and each frame is handed to the lane's
//! sink on its decoder thread as it comes out, never cached. A lane yields at frame boundaries
//! to more urgent work; a lane whose decoder is taken for an interactive request is handed back
//! with the frames it has not done and submitted again from there, so a pass is slowed by
//! urgent work, never wrong and never lost.
//!
//! A pass whose frames may be taken in any order (hashes) is cut into more chunks than lanes
//! ([`run_chunks`]): each lane takes the next chunk when it is done with its own, so a lane whose
//! GOPs were easier to decode takes work from the others instead of leaving its core idle while
//! they finish, as fixed halves would on a video whose content changes along its length.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::engine::decoder::Luma;
use crate::engine::output::OutputSpec;
use crate::engine::pool::{DecoderPool, OpenVideo, Pass, SubmitError};
use crate::engine::schedule::Class;
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// Split ascending `frames` into at most `lanes` runs of about equal length, each cut where a
/// new GOP starts (so no two lanes decode the same GOP). Pure, for the tests below.
pub fn split_lanes(
    frames: &[FrameIndex],
    lanes: usize,
    gop_of: impl Fn(FrameIndex) -> crate::engine::index::SeekTarget,
) -> Vec<Vec<FrameIndex>> {
    let lanes = lanes.max(1);
    let mut out: Vec<Vec<FrameIndex>> = Vec::new();
    let mut start = 0;
    for lane in 1..lanes {
        let mut cut = (frames.len() * lane / lanes).max(start);
        while cut > start && cut < frames.len() && gop_of(frames[cut]) == gop_of(frames[cut - 1]) {
            cut += 1;
        }
        if cut > start && cut < frames.len() {
            out.push(frames[start..cut].to_vec());
            start = cut;
        }
    }
    if start < frames.len() {
        out.push(frames[start..].to_vec());
    }
    out
}

/// How many lanes a pass over `frames` frames of a video with `gops` GOPs gets: one per core
/// the pool lets one video use, and at least a few GOPs per lane (a lane's first GOP costs a
/// seek and a decoder).
pub fn lane_count(cores: usize, max_per_video: usize, frames: usize, gops: usize) -> usize {
    const MIN_GOPS_PER_LANE: usize = 2;
    const MIN_FRAMES_PER_LANE: usize = 64;
    let by_gops = (gops / MIN_GOPS_PER_LANE).max(1);
    let by_frames = (frames / MIN_FRAMES_PER_LANE).max(1);
    cores.min(max_per_video).min(by_gops).min(by_frames).max(1)
}

/// How many chunks a pass of `lanes` lanes over `frames` frames is cut into (at GOP starts, by
/// [`split_lanes`], which may make fewer): a few per lane, and more on long videos so that no
/// chunk is much longer than `MAX_CHUNK_FRAMES` and the last lane ends soon after the others.
/// One lane takes its frames in one piece: every chunk costs a seek.
pub fn chunk_count(lanes: usize, frames: usize) -> usize {
    const CHUNKS_PER_LANE: usize = 4;
    const MAX_CHUNK_FRAMES: usize = 600;
    if lanes <= 1 {
        return 1;
    }
    (lanes * CHUNKS_PER_LANE).max(frames.div_ceil(MAX_CHUNK_FRAMES))
}

/// Run `chunks` (each ascending, in whole GOPs) on `lanes` lanes of `class`: each lane runs the
/// next chunk not yet taken (see [`run_lane`]) until none is left. `sink` makes each chunk's
/// frame sink. The first error ends the pass: the lanes take no more chunks, and it is returned.
pub async fn run_chunks(
    pool: Arc<DecoderPool>,
    video: Arc<OpenVideo>,
    class: Class,
    (chunks, lanes): (Vec<Vec<FrameIndex>>, usize),
    (spec, luma): (OutputSpec, Luma),
    sink: impl Fn() -> Box<dyn FnMut(crate::engine::decoder::RawFrame) -> bool + Send>,
) -> Result<(), EngineError> {
    let queue = parking_lot::Mutex::new(VecDeque::from(chunks));
    let lane = async || -> Result<(), EngineError> {
        loop {
            let Some(chunk) = queue.lock().pop_front() else { return Ok(()) };
            let run = run_lane(pool.clone(), video.clone(), class, chunk, (spec, luma), sink(), None).await;
            if run.is_err() {
                queue.lock().clear();
                return run;
            }
        }
    };
    let results = futures::future::join_all((0..lanes.max(1)).map(|_| lane())).await;
    results.into_iter().collect()
}

/// Run one lane to its end: submit it (waiting for a decoder slot when there is none), and
/// submit again from where it stopped whenever its decoder is taken for more urgent work.
/// `luma` says whether frames carry their luma (see [`Luma`]); `ready` paces the lane to its
/// consumer (see [`Pass::ready`]). Passes are bulk work; a stream's segments run as `class`
/// [`Class::Stream`].
pub async fn run_lane(
    pool: Arc<DecoderPool>,
    video: Arc<OpenVideo>,
    class: Class,
    frames: Vec<FrameIndex>,
    (spec, luma): (OutputSpec, Luma),
    sink: Box<dyn FnMut(crate::engine::decoder::RawFrame) -> bool + Send>,
    ready: Option<Box<dyn Fn() -> bool + Send>>,
) -> Result<(), EngineError> {
    let mut pass = Pass { frames: VecDeque::from(frames), spec: spec.as_raw(), luma, sink, ready };
    let room = pool.room();
    loop {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |pass: Pass, result: Result<(), EngineError>| {
            let _ = tx.send((pass, result));
        });
        let notified = room.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match pool.submit_pass(&video, pass, class, reply) {
            Ok(()) => {}
            Err(SubmitError::Overloaded(e)) => return Err(e),
            Err(SubmitError::NoRoom((back, _))) => {
                pass = back;
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), notified).await;
                continue;
            }
        }
        let (back, result) = rx.await.map_err(|_| EngineError::ShuttingDown)?;
        match result {
            Err(EngineError::Preempted) => pass = back,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::index::SeekTarget;

    fn gop_of(gop: u32) -> impl Fn(FrameIndex) -> SeekTarget {
        move |i| SeekTarget::Point((i.0 / gop) as usize)
    }

    fn frames(n: u32) -> Vec<FrameIndex> {
        (0..n).map(FrameIndex).collect()
    }

    #[test]
    fn lanes_are_cut_at_gop_starts_and_cover_every_frame_once() {
        let all = frames(1000);
        let lanes = split_lanes(&all, 3, gop_of(48));
        assert_eq!(lanes.len(), 3);
        let joined: Vec<FrameIndex> = lanes.concat();
        assert_eq!(joined, all);
        for lane in &lanes[1..] {
            assert_eq!(lane[0].0 % 48, 0, "lane starts mid-GOP at {}", lane[0].0);
        }
    }

    #[test]
    fn one_gop_gives_one_lane() {
        let all = frames(40);
        assert_eq!(split_lanes(&all, 4, gop_of(48)), vec![all.clone()]);
        assert_eq!(split_lanes(&[], 4, gop_of(48)), Vec::<Vec<FrameIndex>>::new());
    }

    #[test]
    fn a_pass_is_cut_into_a_few_chunks_per_lane_and_short_ones_on_long_videos() {
        assert_eq!(chunk_count(1, 100_000), 1, "one lane: one piece, no seeks");
        assert_eq!(chunk_count(2, 1_800), 8);
        assert_eq!(chunk_count(2, 108_000), 180, "an hour at 30 fps: chunks of 600 frames");
        let all = frames(1_800);
        let chunks = split_lanes(&all, chunk_count(2, all.len()), gop_of(300));
        assert_eq!(chunks.len(), 6, "no more chunks than GOPs");
        assert_eq!(chunks.concat(), all);
    }

    #[test]
    fn lane_count_respects_cores_bounds_and_size() {
        assert_eq!(lane_count(2, 4, 10_000, 200), 2);
        assert_eq!(lane_count(8, 3, 10_000, 200), 3);
        assert_eq!(lane_count(8, 8, 100, 40), 1);
        assert_eq!(lane_count(8, 8, 10_000, 3), 1);
        assert_eq!(lane_count(0, 0, 0, 0), 1);
    }
}
