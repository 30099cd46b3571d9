//! Scheduling decisions, as pure functions: which queued job a decoder takes next, when the job
//! it is running must yield, which decoder gives way when an urgent request needs one, how many
//! codec threads a decoder runs and at which CPU priority a class of work runs.
//!
//! Why a scheduler and not a queue: a decoder is shared by clients who want very different
//! things. A labelling tool waits for one frame with a person watching; a stream wants frames
//! in order and soon; a bulk pass (hashing, export) wants throughput; read-ahead and the
//! backtrack fill are guesses nobody waits for yet. Served first come, first served, one
//! client's bulk work sits in front of another's click. So every job carries a [`Class`], a
//! decoder between frames takes the most urgent class waiting, and work of a lower class yields
//! at the next frame boundary when something more urgent arrives (a decoder never stops in the
//! middle of a frame: its position stays valid, and the yielded job continues or re-seeks when
//! its turn comes back). Queue order alone does not give interactive work the cores when other
//! decoders are busy with streams, so classes also map to CPU priorities ([`Class::nice`]).
//!
//! Everything here is unit-tested without FFmpeg or threads (see the tests below), the way
//! [`plan`](crate::engine::plan) is.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::engine::decoder::DecodeOptions;
use crate::engine::index::SeekTarget;
use crate::units::FrameIndex;

/// What the decoder pool and its threads are allowed to do, from config.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_per_video: usize,
    pub max_total: usize,
    /// Decoder threads beyond `max_total` that only interactive requests may open.
    pub interactive_reserve: usize,
    /// Jobs one decoder may have waiting before requests are refused as overload.
    pub max_queue: usize,
    /// Frames decoded ahead of a sequential reader.
    pub readahead: u32,
    /// Codec threads per decoder; 0 adapts them to load ([`schedule::codec_threads`]).
    pub threads: usize,
    /// Run each class of work at its CPU priority ([`Class::nice`]), where the system allows.
    pub cpu_priorities: bool,
    /// How long a stream frame may wait for its turn before it is taken as interactive
    /// ([`aged`]).
    pub stream_max_wait: Duration,
    pub decode: DecodeOptions,
}

/// How urgent a piece of decode work is. Ordered: `Interactive` is the most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Class {
    /// A unary `RequestFrame`: somebody is looking at the screen.
    Interactive = 0,
    /// A frame of a `RequestFrames` stream.
    Stream = 1,
    /// Whole-video passes (hashing, export).
    Bulk = 2,
    /// Work nobody waits for yet: read-ahead, the backtrack fill.
    Speculative = 3,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Interactive, Class::Stream, Class::Bulk, Class::Speculative];

    pub(crate) fn from_u8(v: u8) -> Class {
        match v {
            0 => Class::Interactive,
            1 => Class::Stream,
            2 => Class::Bulk,
            _ => Class::Speculative,
        }
    }

    /// The nice value a decoder thread runs this class of work at (Linux: per thread). With
    /// CFS weights, nice 0 against nice 8 is about 6:1, so an interactive decode sharing a core
    /// with streams keeps most of it, and streams still get the cores whenever nothing more
    /// urgent runs. Speculative work runs at the lowest priority.
    pub fn nice(self) -> i32 {
        match self {
            Class::Interactive => 0,
            Class::Stream => 8,
            Class::Bulk => 14,
            Class::Speculative => 19,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Interactive => "interactive",
            Class::Stream => "stream",
            Class::Bulk => "bulk",
            Class::Speculative => "speculative",
        }
    }
}

/// The nice value of a decode pass indexing a file (bulk work, `bulk`) while requests of class
/// `waiting` at most wait for it: theirs, when more urgent. Priority inheritance: a click on a
/// file being indexed waits for nothing but the pass, which at the bulk priority would get a
/// sliver of the cores beside streams of other files, and a stream following the pass would
/// take the cores from the pass it cannot get ahead of.
pub fn pass_nice(bulk: i32, waiting: Option<Class>) -> i32 {
    waiting.map_or(bulk, |class| class.nice().min(bulk))
}

/// A job's class, shared between the queue and whoever may raise it: a speculative fill that an
/// interactive client starts waiting on becomes interactive work.
#[derive(Debug)]
pub struct ClassCell(AtomicU8);

impl ClassCell {
    pub fn new(class: Class) -> ClassCell {
        ClassCell(AtomicU8::new(class as u8))
    }

    pub fn get(&self) -> Class {
        Class::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Make the job at least as urgent as `class`; true if that changed anything.
    pub fn raise(&self, class: Class) -> bool {
        self.0.fetch_min(class as u8, Ordering::AcqRel) > class as u8
    }
}

/// What the scheduler needs to know of one queued job to choose among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub class: Class,
    /// Arrival order on this decoder (a yielded job keeps its number).
    pub seq: u64,
    /// The frame the job would decode next.
    pub target: FrameIndex,
    /// The seek point that frame decodes from (its GOP).
    pub gop: SeekTarget,
    /// The decoder can reach the target by decoding forward from where it stands (no seek).
    pub reachable: bool,
}

/// The job a decoder takes next, by position in `queue`.
///
/// The most urgent class goes first, and within it the oldest job (the head). Jobs of the same
/// class in the head's GOP are coalesced into one forward scan: among them, one the decoder can
/// reach without seeking goes first, and otherwise the earliest frame, so that many clients
/// asking for frames of one GOP cost one seek and one pass in presentation order rather than a
/// seek each. The head waits at most for the other frames of its own GOP, which the decoder
/// passes on the way to it anyway.
pub fn pick(queue: &[Candidate]) -> Option<usize> {
    let head = queue.iter().min_by_key(|c| (c.class, c.seq))?;
    queue
        .iter()
        .enumerate()
        .filter(|(_, c)| c.class == head.class && c.gop == head.gop)
        .min_by_key(|(_, c)| (!c.reachable, c.target, c.seq))
        .map(|(i, _)| i)
}

/// A request's place in line for a decoder slot: its class, then its arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotTicket {
    pub class: Class,
    pub arrival: u64,
}

/// Whether a request of `class` (waiting in line with `ticket`, or not yet) may take a decoder
/// slot that is free, given the first request in line (`first_waiting`): only when nobody more
/// urgent, or as urgent and waiting longer, is in line. A slot frees up when a decoder exits or
/// goes idle; every waiting request is woken and tries again, and so does any request that
/// arrives meanwhile: without a line, whoever tries first takes it, and under a load over more
/// videos than decoders a request could wait seconds while later ones went ahead.
pub fn may_take_slot(class: Class, ticket: Option<SlotTicket>, first_waiting: Option<SlotTicket>) -> bool {
    let me = ticket.unwrap_or(SlotTicket { class, arrival: u64::MAX });
    first_waiting.is_none_or(|first| me <= first)
}

/// The class a queued job competes and runs at after waiting `waited` since it was queued or
/// last had a turn: a stream frame that has waited `max_wait` (`decoder.stream_max_wait_s`, 2 s)
/// is taken as interactive (the oldest first) and decoded to its end, so under a steady
/// interactive load a stream (and a storyboard, which is one) still gets a frame every two
/// seconds, at the cost to clicks of one frame then. Without it, the soak saw storyboards wait
/// past their deadline for 30 minutes. A stream segment's lane (a pass at the stream class) ages
/// the same way and is interactive for one frame of its turn (the worker sees to it). Bulk
/// passes do not age: one taken as interactive would hold a decoder against clicks for the
/// whole pass. Speculative work nobody waits for never ages either.
pub fn aged(class: Class, waited: Duration, max_wait: Duration) -> Class {
    match class {
        Class::Stream if waited >= max_wait => Class::Interactive,
        class => class,
    }
}

/// Whether a job of class `running` must stop at the next frame boundary because work of class
/// `waiting` (the most urgent queued on the same decoder) has arrived.
pub fn must_yield(running: Class, waiting: Option<Class>) -> bool {
    waiting.is_some_and(|w| w < running)
}

/// The dispatcher's view of a decoder, when one must be closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupant {
    /// The most urgent class of work queued or running on it (`None`: idle).
    pub busy: Option<Class>,
    /// Ordering of last use: smaller is longer ago.
    pub last_used: u64,
    /// The class of the last work routed to it.
    pub last_class: Class,
}

/// The decoder to close so that a request of class `for_class` for a video with no decoder can
/// have one. Idle decoders go first (least recently used first); then a busy decoder whose work
/// is no more urgent than the request, the least urgent work first, least recently used among
/// equals (it finishes what requests wait for, then exits; closing one of equal class keeps the
/// videos taking turns instead of one starving). Work is never closed for a less urgent
/// request. `None`: nothing may be closed for this request.
pub fn victim(decoders: &[Occupant], for_class: Class) -> Option<usize> {
    decoders
        .iter()
        .enumerate()
        .filter(|(_, d)| d.busy.is_none_or(|busy| busy >= for_class))
        .min_by_key(|(_, d)| (d.busy.map(|b| Class::Speculative as u8 + 1 - b as u8).unwrap_or(0), d.last_used))
        .map(|(i, _)| i)
}

/// The decoder a lane of a bulk pass may close, at the total bound, to run beside the pass's
/// other lanes instead of queueing behind one of them: an idle one whose last work was bulk (a
/// finished pass: nobody reads from where it stands) or that has been unused for at least
/// `idle_for` (`now` and `idle_for` on the [`Occupant::last_used`] scale), least recently used
/// first. A stream's decoder between two frames, or a labelling client's between two clicks,
/// is idle for moments only, and is not closed for bulk work.
pub fn lane_may_close(decoders: &[Occupant], now: u64, idle_for: u64) -> Option<usize> {
    decoders
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.busy.is_none() && (d.last_class == Class::Bulk || d.last_used.saturating_add(idle_for) <= now)
        })
        .min_by_key(|(_, d)| d.last_used)
        .map(|(i, _)| i)
}

/// How many decoder threads may be alive when a request of `class` needs a new one: the
/// configured total, plus a small reserve only interactive requests may use, so that a click on
/// a video with no decoder does not have to close a stream's decoder (which would cost the
/// stream a seek and a pass over its GOP) while the machine is busy streaming.
pub fn decoder_bound(max_total: usize, interactive_reserve: usize, class: Option<Class>) -> usize {
    match class {
        Some(Class::Interactive) => max_total + interactive_reserve,
        _ => max_total,
    }
}

/// Codec threads for a decoder about to (re)open its codec: every core when no other decoder is
/// busy (a lone stream or cold request then uses the whole machine, as an all-core `ffmpeg` or
/// a PyAV reader with `thread_type = "AUTO"` does), one under load, where decoders already run
/// in parallel and extra codec threads only add contention and frame delay. `fixed` > 0 is an
/// operator's choice and wins.
pub fn codec_threads(fixed: usize, busy_elsewhere: usize, cores: usize) -> usize {
    if fixed > 0 {
        fixed
    } else if busy_elsewhere == 0 {
        cores.clamp(1, 16)
    } else {
        1
    }
}

/// Whether the backtrack window behind a cold answer may be decoded (a fill nobody waits for
/// yet, started or going on) or kept on the way: only while a core is free, that is while the
/// decoders elsewhere running work somebody waits for use fewer codec threads (`threads_elsewhere`)
/// than there are cores, and no click waits for a decoder. A decoder working alone runs on every
/// core, so one click elsewhere stops a fill. The window is a guess; under a load it took CPU
/// from the requests queued behind it and pushed the frames they asked for out of the cache
/// (64 clients, zipf over 8 videos: 46 req/s with the window, 57 without). A fill somebody
/// started waiting for is no longer a guess.
pub fn fill_may_run(threads_elsewhere: usize, clicks_waiting: usize, cores: usize) -> bool {
    clicks_waiting == 0 && threads_elsewhere < cores.max(1)
}

/// How many frames to read ahead of a sequential reader: `readahead`, but no more than half of
/// the `room` frames the cache's speculative share holds. Frames read ahead are speculative
/// entries, and more of them than the share holds push each other out before the reader gets
/// to them: its next frame is then a miss and a seek back, every step (large frames in a small
/// cache: a 4K rgb24 frame is 25 MB, and a 512 MiB cache's share holds five). Half leaves the
/// rest to other readers and to the frames kept on the way to a target.
pub fn readahead_depth(readahead: u32, room: u32) -> u32 {
    readahead.min(room / 2)
}

/// How many frames behind a cold answer to keep or fill: `keep_behind`, but no more than the
/// `room` frames the cache's speculative share holds. A larger window evicts its own first
/// frames (and frames clients asked for) before anyone steps back to them, and each of its
/// frames costs a conversion.
pub fn window_depth(keep_behind: u32, room: u32) -> u32 {
    keep_behind.min(room)
}

/// The frames of the backtrack window behind `target` that a fill should decode: up to
/// `keep_behind` frames before it, within the target's GOP (`gop_of(i)` gives the seek point
/// frame `i` decodes from; stepping back past the keyframe is a cold request of its own, and
/// extending the window into the previous GOP would double a short-GOP fill), skipping frames
/// `have(i)` says are cached or already in flight. Ascending, so the fill is one forward scan.
pub fn fill_window(
    target: FrameIndex,
    keep_behind: u32,
    gop_of: impl Fn(FrameIndex) -> SeekTarget,
    have: impl Fn(FrameIndex) -> bool,
) -> Vec<FrameIndex> {
    let gop = gop_of(target);
    let mut out: Vec<FrameIndex> = (1..=keep_behind)
        .map_while(|k| target.0.checked_sub(k).map(FrameIndex))
        .take_while(|&i| gop_of(i) == gop)
        .filter(|&i| !have(i))
        .collect();
    out.reverse();
    out
}

/// How a stream over `frames` is split into segments decoded by parallel decoders, or `None` to
/// decode it on one decoder as usual. The segments are runs of whole GOPs (`gop_of(i)`: the
/// seek point frame `i` decodes from), in order, so each decoder seeks once and no GOP is
/// decoded twice. Delivery is in order, so the segments ahead of the one being read are held in
/// memory whole: `parallel` segments of `frame_bytes` frames must fit in `budget` bytes (0:
/// unbounded), which sets their length, and fewer decoders are used when a GOP is too long for
/// that. A selection that is not ascending, that spans fewer than two GOPs or is shorter than
/// [`MIN_SEGMENTED_FRAMES`], stays on one decoder (a split costs a seek and a decoder).
pub fn stream_segments(
    frames: &[FrameIndex],
    gop_of: impl Fn(FrameIndex) -> SeekTarget,
    frame_bytes: u64,
    budget: u64,
    parallel: usize,
) -> Option<Vec<Vec<FrameIndex>>> {
    if parallel < 2 || frames.len() < MIN_SEGMENTED_FRAMES || frames.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    // The selection's frames, grouped by the GOP they decode from.
    let mut gops: Vec<&[FrameIndex]> = Vec::new();
    let mut start = 0;
    for i in 1..=frames.len() {
        if i == frames.len() || gop_of(frames[i]) != gop_of(frames[i - 1]) {
            gops.push(&frames[start..i]);
            start = i;
        }
    }
    if gops.len() < 2 {
        return None;
    }
    let frame_bytes = frame_bytes.max(1);
    let longest = gops.iter().map(|g| g.len()).max().unwrap_or(1) as u64;
    let parallel = if budget == 0 { parallel } else { parallel.min((budget / (longest * frame_bytes)) as usize) };
    if parallel < 2 {
        return None;
    }
    // Frames one segment may hold: the budget shared by the segments decoded at once. Within
    // that, segments of about equal length, at least one per decoder.
    let cap = if budget == 0 { frames.len() } else { (budget / (parallel as u64 * frame_bytes)) as usize };
    let count = parallel.max(frames.len().div_ceil(cap.max(1)));
    let even = frames.len().div_ceil(count);
    let mut segments: Vec<Vec<FrameIndex>> = Vec::new();
    let mut current: Vec<FrameIndex> = Vec::new();
    for gop in gops {
        if !current.is_empty() && (current.len() >= even || current.len() + gop.len() > cap) {
            segments.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(gop);
    }
    segments.push(current);
    (segments.len() >= 2).then_some(segments)
}

/// Streams shorter than this stay on one decoder.
pub const MIN_SEGMENTED_FRAMES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn gops_of(gop: u32) -> impl Fn(FrameIndex) -> SeekTarget {
        move |i| SeekTarget::Point((i.0 / gop) as usize)
    }

    fn range(from: u32, to: u32) -> Vec<FrameIndex> {
        (from..to).map(FrameIndex).collect()
    }

    #[test]
    fn a_pass_runs_at_the_priority_of_the_most_urgent_request_waiting_for_it() {
        let bulk = Class::Bulk.nice();
        assert_eq!(pass_nice(bulk, None), bulk, "nobody waits: bulk work");
        assert_eq!(pass_nice(bulk, Some(Class::Interactive)), Class::Interactive.nice());
        assert_eq!(pass_nice(bulk, Some(Class::Stream)), Class::Stream.nice());
        assert_eq!(pass_nice(bulk, Some(Class::Bulk)), bulk);
        assert_eq!(pass_nice(bulk, Some(Class::Speculative)), bulk, "never below bulk");
    }

    #[test]
    fn a_long_stream_is_split_into_whole_gops_in_order_covering_every_frame_once() {
        let frames = range(10, 1000);
        let segments = stream_segments(&frames, gops_of(50), 100, 0, 2).unwrap();
        assert_eq!(segments.concat(), frames, "in order, every frame once");
        assert_eq!(segments.len(), 2, "an even share each when memory is no bound");
        for s in &segments[1..] {
            assert_eq!(s[0].0 % 50, 0, "a segment starts on a GOP: {}", s[0].0);
        }
        // A sparse selection (a storyboard's frames) splits the same way.
        let sparse: Vec<FrameIndex> = (0..64).map(|k| FrameIndex(k * 100)).collect();
        let segments = stream_segments(&sparse, gops_of(50), 100, 0, 4).unwrap();
        assert_eq!(segments.len(), 4);
        assert_eq!(segments.concat(), sparse);
    }

    #[test]
    fn segments_are_as_long_as_the_memory_budget_allows() {
        let frames = range(0, 1000);
        // 2 decoders, 100 bytes a frame, 20,000 bytes: 100 frames a segment, two GOPs.
        let segments = stream_segments(&frames, gops_of(50), 100, 20_000, 2).unwrap();
        assert_eq!(segments.len(), 10);
        assert!(segments.iter().all(|s| s.len() == 100));
        // A GOP that does not fit with four decoders gets two (each still whole).
        let segments = stream_segments(&frames, gops_of(50), 100, 10_000, 4).unwrap();
        assert!(segments.iter().all(|s| s.len() == 50), "{:?}", segments.iter().map(Vec::len).collect::<Vec<_>>());
        // Not even two GOPs fit: one decoder, frame by frame as before.
        assert_eq!(stream_segments(&frames, gops_of(50), 100, 9_999, 4), None);
    }

    #[test]
    fn short_unordered_single_gop_or_single_decoder_streams_are_not_split() {
        assert_eq!(stream_segments(&range(0, 1000), gops_of(50), 100, 0, 1), None, "one decoder");
        assert_eq!(stream_segments(&range(0, 20), gops_of(10), 100, 0, 2), None, "too short");
        assert_eq!(stream_segments(&range(0, 250), gops_of(250), 100, 0, 2), None, "one GOP");
        let mut backwards = range(0, 1000);
        backwards.reverse();
        assert_eq!(stream_segments(&backwards, gops_of(50), 100, 0, 2), None, "not ascending");
        let mut repeated = range(0, 1000);
        repeated[500] = FrameIndex(499);
        assert_eq!(stream_segments(&repeated, gops_of(50), 100, 0, 2), None, "a frame twice");
    }

    #[test]
    fn only_stream_frames_age_into_interactive_and_only_after_the_limit() {
        let limit = Duration::from_secs(2);
        let long = limit + Duration::from_millis(1);
        assert_eq!(aged(Class::Stream, long, limit), Class::Interactive);
        assert_eq!(aged(Class::Stream, limit - Duration::from_millis(1), limit), Class::Stream);
        assert_eq!(aged(Class::Bulk, long * 100, limit), Class::Bulk);
        assert_eq!(aged(Class::Speculative, long * 100, limit), Class::Speculative);
        assert_eq!(aged(Class::Interactive, long, limit), Class::Interactive);
    }

    fn job(class: Class, seq: u64, target: u32, gop: usize, reachable: bool) -> Candidate {
        Candidate { class, seq, target: FrameIndex(target), gop: SeekTarget::Point(gop), reachable }
    }

    #[test]
    fn the_most_urgent_class_goes_first_whatever_arrived_before() {
        let q = [
            job(Class::Speculative, 0, 10, 0, true),
            job(Class::Stream, 1, 11, 0, true),
            job(Class::Interactive, 2, 500, 9, false),
            job(Class::Bulk, 3, 12, 0, true),
        ];
        assert_eq!(pick(&q), Some(2));
        assert_eq!(pick(&q[..2]), Some(1), "a stream frame before read-ahead");
        assert_eq!(pick(&[q[0], q[3]]), Some(1), "bulk before speculative");
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn within_a_class_the_oldest_goes_first_across_gops() {
        let q = [job(Class::Interactive, 5, 300, 3, false), job(Class::Interactive, 4, 900, 8, false)];
        assert_eq!(pick(&q), Some(1));
    }

    #[test]
    fn targets_in_the_heads_gop_are_served_by_one_forward_scan() {
        // Three clients asked for 40, 35 and 38 of one GOP; the decoder stands elsewhere.
        let q = [
            job(Class::Interactive, 0, 40, 2, false),
            job(Class::Interactive, 1, 35, 2, false),
            job(Class::Interactive, 2, 90, 7, false),
            job(Class::Interactive, 3, 38, 2, false),
        ];
        assert_eq!(pick(&q), Some(1), "seek once, to the earliest frame of the GOP");
        // Having decoded 35 the decoder can continue to 38 and then 40.
        let q = [
            job(Class::Interactive, 0, 40, 2, true),
            job(Class::Interactive, 2, 90, 7, false),
            job(Class::Interactive, 3, 38, 2, true),
        ];
        assert_eq!(pick(&q), Some(2));
        let q = [job(Class::Interactive, 0, 40, 2, true), job(Class::Interactive, 2, 90, 7, false)];
        assert_eq!(pick(&q), Some(0));
        assert_eq!(pick(&q[1..]), Some(0), "then the other GOP");
    }

    #[test]
    fn a_reachable_target_goes_before_an_earlier_one_that_needs_a_seek() {
        // The decoder has passed 20 (a seek back) but can continue to 30.
        let q = [job(Class::Stream, 0, 30, 1, true), job(Class::Stream, 1, 20, 1, false)];
        assert_eq!(pick(&q), Some(0));
    }

    #[test]
    fn coalescing_never_mixes_classes() {
        // A speculative frame of the same GOP does not jump ahead of the interactive head.
        let q = [job(Class::Interactive, 1, 40, 2, false), job(Class::Speculative, 0, 30, 2, true)];
        assert_eq!(pick(&q), Some(0));
    }

    #[test]
    fn only_more_urgent_work_makes_a_running_job_yield() {
        assert!(must_yield(Class::Stream, Some(Class::Interactive)));
        assert!(must_yield(Class::Speculative, Some(Class::Bulk)));
        assert!(!must_yield(Class::Stream, Some(Class::Stream)));
        assert!(!must_yield(Class::Interactive, Some(Class::Stream)));
        assert!(!must_yield(Class::Speculative, None));
    }

    #[test]
    fn a_raised_class_never_goes_down() {
        let c = ClassCell::new(Class::Speculative);
        assert!(c.raise(Class::Interactive));
        assert_eq!(c.get(), Class::Interactive);
        assert!(!c.raise(Class::Stream));
        assert_eq!(c.get(), Class::Interactive);
    }

    #[test]
    fn room_is_made_by_closing_idle_decoders_first_then_the_least_urgent_work() {
        let at = |busy, last_used| Occupant { busy, last_used, last_class: Class::Interactive };
        let idle_old = at(None, 1);
        let idle_new = at(None, 5);
        let stream = at(Some(Class::Stream), 0);
        let spec = at(Some(Class::Speculative), 9);
        let inter = at(Some(Class::Interactive), 0);
        assert_eq!(victim(&[idle_new, stream, idle_old], Class::Interactive), Some(2));
        assert_eq!(victim(&[stream, spec, inter], Class::Interactive), Some(1), "speculative work first");
        assert_eq!(victim(&[stream, inter], Class::Interactive), Some(0), "then a stream before interactive work");
        assert_eq!(victim(&[inter], Class::Interactive), Some(0), "equals take turns");
        assert_eq!(victim(&[inter, stream], Class::Stream), Some(1));
        assert_eq!(victim(&[inter], Class::Stream), None, "a stream never closes interactive work");
        assert_eq!(victim(&[spec], Class::Bulk), Some(0), "anyone closes speculation");
    }

    #[test]
    fn a_lane_closes_only_a_finished_pass_or_a_decoder_idle_for_a_while() {
        let idle = |last_used| Occupant { busy: None, last_used, last_class: Class::Stream };
        let pass_done = |last_used| Occupant { busy: None, last_used, last_class: Class::Bulk };
        let stream = Occupant { busy: Some(Class::Stream), last_used: 0, last_class: Class::Stream };
        let lane = Occupant { busy: Some(Class::Bulk), last_used: 0, last_class: Class::Bulk };
        assert_eq!(lane_may_close(&[idle(95), stream, idle(20), idle(10)], 100, 50), Some(3), "the longest idle");
        assert_eq!(lane_may_close(&[idle(95), stream, lane], 100, 50), None, "just used, or busy");
        assert_eq!(lane_may_close(&[idle(95), pass_done(99)], 100, 50), Some(1), "a finished pass, at once");
        assert_eq!(lane_may_close(&[], 100, 50), None);
    }

    #[test]
    fn only_interactive_requests_may_use_the_reserve() {
        assert_eq!(decoder_bound(4, 1, Some(Class::Interactive)), 5);
        assert_eq!(decoder_bound(4, 1, Some(Class::Stream)), 4);
        assert_eq!(decoder_bound(4, 1, None), 4, "nor a second decoder for parallelism");
        assert_eq!(decoder_bound(4, 0, Some(Class::Interactive)), 4);
    }

    #[test]
    fn a_lone_decoder_gets_every_core_and_one_under_load() {
        assert_eq!(codec_threads(0, 0, 2), 2);
        assert_eq!(codec_threads(0, 1, 2), 1);
        assert_eq!(codec_threads(0, 0, 64), 16, "bounded");
        assert_eq!(codec_threads(3, 5, 2), 3, "a configured count wins");
    }

    #[test]
    fn a_fill_runs_only_while_a_core_is_free() {
        assert!(fill_may_run(0, 0, 2));
        assert!(fill_may_run(1, 0, 2), "a one-thread decoder elsewhere leaves the second core");
        assert!(!fill_may_run(2, 0, 2), "one decoder on two codec threads, or two on one");
        assert!(!fill_may_run(5, 0, 2));
        assert!(!fill_may_run(0, 1, 2), "a click waits for a decoder");
        assert!(fill_may_run(0, 0, 1));
        assert!(!fill_may_run(1, 0, 1));
        assert!(fill_may_run(0, 0, 0), "an unknown core count is one");
    }

    #[test]
    fn the_fill_window_stays_in_the_gop_skips_what_is_there_and_ascends() {
        // GOPs start at 0, 50, 100.
        let gop = |i: FrameIndex| SeekTarget::Point(i.0 as usize / 50);
        let none = |_: FrameIndex| false;
        let w = fill_window(FrameIndex(60), 32, gop, none);
        assert_eq!(w, (50..60).map(FrameIndex).collect::<Vec<_>>(), "stops at the keyframe");
        let w = fill_window(FrameIndex(90), 5, gop, |i| i.0 == 87);
        assert_eq!(w, [85, 86, 88, 89].map(FrameIndex).to_vec());
        assert!(fill_window(FrameIndex(50), 32, gop, none).is_empty(), "a keyframe has nothing behind it");
        assert!(fill_window(FrameIndex(3), 0, gop, none).is_empty());
        assert_eq!(fill_window(FrameIndex(2), 32, gop, none), [0, 1].map(FrameIndex).to_vec());
    }

    #[test]
    fn speculation_is_bounded_by_what_the_cache_share_holds() {
        // 720p rgb24 in a 512 MiB cache: the share holds 46 frames; the configured depths stand.
        assert_eq!(readahead_depth(8, 46), 8);
        assert_eq!(window_depth(32, 46), 32);
        // 4K rgb24 in the same cache: 5 frames. Read-ahead takes half, the window all of it.
        assert_eq!(readahead_depth(8, 5), 2);
        assert_eq!(window_depth(32, 5), 5);
        // A share that holds one frame (or a cache of 0) leaves nothing to read ahead: the
        // frame would be evicted by the next one before the reader asked for it.
        assert_eq!(readahead_depth(8, 1), 0);
        assert_eq!(readahead_depth(8, 0), 0);
        assert_eq!(window_depth(32, 0), 0);
        // What the client asked for is never raised.
        assert_eq!(readahead_depth(0, 100), 0);
        assert_eq!(window_depth(3, 100), 3);
    }

    #[test]
    fn a_free_slot_goes_to_the_most_urgent_request_that_has_waited_longest() {
        let ticket = |class, arrival| SlotTicket { class, arrival };
        let first = Some(ticket(Class::Stream, 7));
        // Nobody in line: anyone takes it.
        assert!(may_take_slot(Class::Bulk, None, None));
        // The first in line takes it; those behind it, and requests arriving now, wait their turn.
        assert!(may_take_slot(Class::Stream, Some(ticket(Class::Stream, 7)), first));
        assert!(!may_take_slot(Class::Stream, Some(ticket(Class::Stream, 9)), first));
        assert!(!may_take_slot(Class::Stream, None, first));
        assert!(!may_take_slot(Class::Bulk, None, first));
        // A more urgent request goes ahead of less urgent ones, however long they have waited,
        // and waits behind a more urgent one that came later.
        assert!(may_take_slot(Class::Interactive, None, first));
        assert!(may_take_slot(Class::Interactive, Some(ticket(Class::Interactive, 12)), first));
        assert!(!may_take_slot(Class::Stream, Some(ticket(Class::Stream, 7)), Some(ticket(Class::Interactive, 12))));
    }

    #[test]
    fn the_line_for_slots_orders_by_class_then_arrival() {
        let mut line = std::collections::BTreeSet::new();
        for (class, arrival) in [(Class::Stream, 1), (Class::Interactive, 5), (Class::Bulk, 0), (Class::Interactive, 3)]
        {
            line.insert(SlotTicket { class, arrival });
        }
        let order: Vec<_> = line.iter().map(|t| (t.class, t.arrival)).collect();
        assert_eq!(order, [(Class::Interactive, 3), (Class::Interactive, 5), (Class::Stream, 1), (Class::Bulk, 0)]);
    }
}
