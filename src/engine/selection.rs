//! What a request points at, resolved against a video's index: one target (an index, negative
//! from the end, or a time) or a selection of many frames (a range, a time range, a list).
//!
//! This is where negative indices, `stop = 0` meaning "to the end", time ranges and clamping are
//! decided, once, for every front end: the gRPC service (and any later HTTP route) only turns
//! its request into a [`Target`] or a [`Selection`] and hands it here. Pure logic over the index,
//! unit-tested below.

use crate::engine::index::VideoIndex;
use crate::engine::EngineError;
use crate::units::FrameIndex;

/// What a client points at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Presentation index; negative counts from the end (-1 is the last frame).
    Index(i64),
    /// Seconds from the first frame's presentation time.
    Time(f64),
}

/// Many frames of one video, in the order they are to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `start..stop` by `step` (stop exclusive, 0 meaning the end, so `0, 0` is the whole video
    /// and `-3, 0` its last three frames; negative values count from the end; a step of 0 means
    /// 1).
    Range { start: i64, stop: i64, step: i64 },
    /// The frame on screen at `start_s` and every frame starting before `stop_s`.
    TimeRange { start_s: f64, stop_s: f64 },
    /// These frames, in this order (negative counts from the end).
    Indices(Vec<i64>),
    /// Every `every`-th keyframe (0 and 1: each one), optionally only those presented from
    /// `start_s` up to (not including) `stop_s`.
    Keyframes { every: u32, within: Option<(f64, f64)> },
}

/// Why a selection cannot be served (besides an index or time out of range).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SelectionError {
    #[error("{0}")]
    BadRange(String),
    #[error("time {0} is not a finite number of seconds")]
    BadTime(f64),
    #[error("the request selects {count} frames; at most {max} are allowed in one call")]
    TooMany { count: u64, max: u64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Target {
    /// The frame this target points at, clamped to the video or an OUT_OF_RANGE error.
    pub fn resolve(self, name: &str, index: &VideoIndex, clamp: bool) -> Result<FrameIndex, EngineError> {
        let count = index.frame_count();
        let last = count as i64 - 1;
        match self {
            Target::Index(i) => {
                let absolute = if i < 0 { count as i64 + i } else { i };
                if (0..=last).contains(&absolute) {
                    Ok(FrameIndex(absolute as u32))
                } else if clamp && count > 0 {
                    Ok(FrameIndex(absolute.clamp(0, last) as u32))
                } else {
                    Err(EngineError::IndexOutOfRange { video: name.to_string(), index: i, count })
                }
            }
            Target::Time(t) => match index.frame_at(t) {
                Some(i) => Ok(i),
                None if clamp && t.is_finite() && count > 0 => Ok(FrameIndex(if t < 0.0 { 0 } else { last as u32 })),
                None => Err(EngineError::TimeOutOfRange {
                    video: name.to_string(),
                    time_s: t,
                    duration_s: index.duration_s,
                }),
            },
        }
    }
}

impl Selection {
    /// Whether the selection can be streamed while a decode pass counts the video's frames, and
    /// the first frame it needs then: frames counted from the start (a range from a frame `>= 0`
    /// to a later one or to the end, or a list of frames `>= 0`), delivered in order, each once
    /// the pass has counted that far ([`Selection::counted_part`]). `None` when it needs the
    /// whole index first (frames counted from the end, times, keyframes, a range to check).
    pub fn first_counted(&self) -> Option<u64> {
        match self {
            &Selection::Range { start, stop, step } if start >= 0 && step >= 0 && (stop == 0 || stop > start) => {
                Some(start as u64)
            }
            Selection::Indices(list) if list.iter().all(|&i| i >= 0) => list.first().map(|&i| i as u64),
            _ => None,
        }
    }

    /// Of a selection streamed as a pass counts ([`Selection::first_counted`]), the frame it
    /// needs after its first `done` frames, if any (a range to the end always needs one more
    /// until the whole index says where the end is).
    pub fn needed_after(&self, done: usize) -> Option<u64> {
        match self {
            &Selection::Range { start, stop, step } => {
                let next = start as u64 + done as u64 * step.max(1) as u64;
                (stop == 0 || next < stop as u64).then_some(next)
            }
            Selection::Indices(list) => list.get(done).map(|&i| i as u64),
            _ => None,
        }
    }

    /// Of a selection streamed as a pass counts ([`Selection::first_counted`]), the frames after
    /// its first `done` that the first `counted` frames of the video hold, in delivery order: a
    /// range's frames below `counted`, a list's up to its first frame not counted yet. More than
    /// `max` frames is an error as soon as that many are known to be selected.
    pub fn counted_part(&self, done: usize, counted: u64, max: usize) -> Result<Vec<FrameIndex>, SelectionError> {
        let too_many =
            |n: u64| if n > max as u64 { Err(SelectionError::TooMany { count: n, max: max as u64 }) } else { Ok(()) };
        match self {
            &Selection::Range { start, stop, step } => {
                let (start, step) = (start.max(0) as u64, step.max(1) as u64);
                let known_end = if stop > 0 { stop as u64 } else { counted };
                too_many(known_end.saturating_sub(start).div_ceil(step))?;
                let end = known_end.min(counted);
                Ok((start..end.max(start)).step_by(step as usize).skip(done).map(|i| FrameIndex(i as u32)).collect())
            }
            Selection::Indices(list) => {
                too_many(list.len() as u64)?;
                let rest = list.iter().skip(done).take_while(|&&i| i >= 0 && (i as u64) < counted);
                Ok(rest.map(|&i| FrameIndex(i as u32)).collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// What a selection streamed as a pass counts ([`Selection::first_counted`]) selects, to ask
    /// frame after frame: what the pass converts for it as it counts
    /// ([`crate::engine::video::Following`]).
    pub fn selects(&self) -> Selects {
        match self {
            &Selection::Range { start, stop, step } if start >= 0 && stop >= 0 && step >= 0 => Selects::Range {
                start: start as u64,
                stop: (stop > 0).then_some(stop as u64),
                step: step.max(1) as u64,
            },
            Selection::Indices(list) => {
                let mut listed: Vec<u64> = list.iter().filter(|&&i| i >= 0).map(|&i| i as u64).collect();
                listed.sort_unstable();
                listed.dedup();
                Selects::Listed(listed)
            }
            _ => Selects::Nothing,
        }
    }

    /// The frame indices selected, checked against the video and `max` frames before the first
    /// frame is decoded.
    pub fn resolve(&self, name: &str, index: &VideoIndex, max: usize) -> Result<Vec<FrameIndex>, SelectionError> {
        let count = index.frame_count() as i64;
        let max = max as u64;
        let too_many = |n: u64| if n > max { Err(SelectionError::TooMany { count: n, max }) } else { Ok(()) };
        match self {
            &Selection::Range { start, stop, step } => {
                let step = if step == 0 { 1 } else { step };
                if step < 0 {
                    return Err(SelectionError::BadRange(format!(
                        "range.step = {step} must be positive (use `indices` for other orders)"
                    )));
                }
                let absolute = |i: i64| if i < 0 { count + i } else { i };
                let first = absolute(start);
                let end = if stop == 0 { count } else { absolute(stop) };
                if !(0..count).contains(&first) || end > count || end < first {
                    return Err(EngineError::IndexOutOfRange {
                        video: name.to_string(),
                        index: if !(0..count).contains(&first) { start } else { stop },
                        count: count as usize,
                    }
                    .into());
                }
                let n = ((end - first) + step - 1) / step;
                too_many(n as u64)?;
                Ok((first..end).step_by(step as usize).map(|i| FrameIndex(i as u32)).collect())
            }
            &Selection::TimeRange { start_s, stop_s } => {
                check_interval(start_s, stop_s)?;
                let first = Target::Time(start_s).resolve(name, index, false)?;
                let frames = &index.frames;
                let mut out = Vec::new();
                let mut i = first.get();
                while i < frames.len() && (i == first.get() || frames[i].time_s < stop_s) {
                    out.push(FrameIndex(i as u32));
                    too_many(out.len() as u64)?;
                    i += 1;
                }
                Ok(out)
            }
            Selection::Indices(list) => {
                too_many(list.len() as u64)?;
                list.iter().map(|&i| Ok(Target::Index(i).resolve(name, index, false)?)).collect()
            }
            &Selection::Keyframes { every, within } => {
                if let Some((start_s, stop_s)) = within {
                    check_interval(start_s, stop_s)?;
                }
                let inside = |t: f64| within.is_none_or(|(a, b)| t >= a && t < b);
                let out: Vec<FrameIndex> = index
                    .frames
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.key && inside(f.time_s))
                    .map(|(i, _)| FrameIndex(i as u32))
                    .step_by(every.max(1) as usize)
                    .collect();
                too_many(out.len() as u64)?;
                Ok(out)
            }
        }
    }
}

/// A time range's ends: finite, and in order.
fn check_interval(start_s: f64, stop_s: f64) -> Result<(), SelectionError> {
    for v in [start_s, stop_s] {
        if !v.is_finite() {
            return Err(SelectionError::BadTime(v));
        }
    }
    if stop_s < start_s {
        return Err(SelectionError::BadRange(format!("time_range.stop_s = {stop_s} is before start_s = {start_s}")));
    }
    Ok(())
}

/// The frames a selection selects, asked frame after frame by a decode pass as it shows them
/// ([`Selection::selects`]): a list sorted once, so that each question is a binary search, not
/// a scan of up to `limits.max_batch_frames` indices for every frame of the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Selects {
    Range { start: u64, stop: Option<u64>, step: u64 },
    Listed(Vec<u64>),
    Nothing,
}

impl Selects {
    /// Whether frame `i` (counted from the start) is selected.
    pub fn frame(&self, i: u64) -> bool {
        match self {
            &Selects::Range { start, stop, step } => {
                i >= start && stop.is_none_or(|stop| i < stop) && (i - start).is_multiple_of(step)
            }
            Selects::Listed(listed) => listed.binary_search(&i).is_ok(),
            Selects::Nothing => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ffmpeg::{PacketMeta, StreamInfo};

    #[test]
    fn a_selection_of_frames_counted_from_the_start_is_served_as_a_pass_counts_them() {
        let range = |start, stop| Selection::Range { start, stop, step: 3 };
        assert_eq!(range(2, 9).first_counted(), Some(2));
        assert_eq!(range(2, 0).first_counted(), Some(2), "to the end");
        // From the end, backwards, empty or reversed, by time, keyframes: the whole index first.
        assert_eq!(range(-5, 9).first_counted(), None);
        assert_eq!(range(2, -1).first_counted(), None);
        assert_eq!(range(9, 2).first_counted(), None);
        assert_eq!(range(9, 9).first_counted(), None);
        assert_eq!(Selection::Range { start: 0, stop: 9, step: -1 }.first_counted(), None);
        assert_eq!(Selection::Indices(vec![7, 300, 2]).first_counted(), Some(7));
        assert_eq!(Selection::Indices(vec![7, -1]).first_counted(), None);
        assert_eq!(Selection::Indices(vec![]).first_counted(), None);
        assert_eq!(Selection::TimeRange { start_s: 0.0, stop_s: 1.0 }.first_counted(), None);
        assert_eq!(Selection::Keyframes { every: 1, within: None }.first_counted(), None);

        // What comes next, and how far it goes.
        assert_eq!(
            (range(2, 9).needed_after(0), range(2, 9).needed_after(2), range(2, 9).needed_after(3)),
            (Some(2), Some(8), None)
        );
        assert_eq!(range(2, 0).needed_after(1000), Some(3002), "to an end not known yet");
        let list = Selection::Indices(vec![7, 300, 2]);
        assert_eq!((list.needed_after(1), list.needed_after(3)), (Some(300), None));

        // The part the frames counted so far hold, after what was delivered.
        let part = |s: &Selection, done, counted| s.counted_part(done, counted, 100).unwrap();
        assert_eq!(part(&range(2, 20), 0, 10), ids(&[2, 5, 8]));
        assert_eq!(part(&range(2, 20), 3, 30), ids(&[11, 14, 17]));
        assert_eq!(part(&range(2, 0), 1, 12), ids(&[5, 8, 11]));
        assert_eq!(part(&range(2, 0), 0, 1), ids(&[]), "its first frame not counted yet");
        assert_eq!(part(&list, 0, 100), ids(&[7]), "a list stops at its first frame not counted");
        assert_eq!(part(&list, 1, 301), ids(&[300, 2]));
        // Too many frames, as soon as that is known.
        let too_many =
            |s: &Selection, counted| matches!(s.counted_part(0, counted, 4), Err(SelectionError::TooMany { .. }));
        assert!(too_many(&range(0, 15), 1), "a range with its end: at once");
        assert!(!too_many(&range(0, 0), 12) && too_many(&range(0, 0), 13), "to the end: once counted");
        assert!(too_many(&Selection::Indices(vec![1, 2, 3, 4, 5]), 1));

        // The frames a pass converts for it as it counts them.
        let selected = |s: &Selection| (0..30).filter(|&i| s.selects().frame(i)).collect::<Vec<u64>>();
        assert_eq!(selected(&range(2, 20)), [2, 5, 8, 11, 14, 17]);
        assert_eq!(selected(&range(25, 0)), [25, 28], "to the end");
        assert_eq!(selected(&list), [2, 7]);
        assert_eq!(selected(&Selection::Indices(vec![9, -1, 4, 9, 0])), [0, 4, 9], "sorted once, the end's left out");
        assert_eq!(selected(&Selection::Range { start: 4, stop: 7, step: 0 }), [4, 5, 6], "step 0 is 1");
        assert!(selected(&Selection::Range { start: -3, stop: 0, step: 1 }).is_empty(), "counted from the end");
    }

    /// Ten frames at 10 fps, all keyframes: frame i is on screen from i/10 s.
    fn index() -> VideoIndex {
        let stream = StreamInfo::for_tests(8, 10);
        let packets: Vec<PacketMeta> = (0..10)
            .map(|i| PacketMeta { pts: Some(i), dts: Some(i), duration: 1, key: true, discard: false })
            .collect();
        VideoIndex::from_packets(stream, &packets).unwrap()
    }

    fn ids(v: &[u32]) -> Vec<FrameIndex> {
        v.iter().map(|&i| FrameIndex(i)).collect()
    }

    #[test]
    fn negative_indices_count_from_the_end_and_clamping_answers_the_edge() {
        let idx = index();
        assert_eq!(Target::Index(-1).resolve("v", &idx, false).ok(), Some(FrameIndex(9)));
        assert_eq!(Target::Index(-10).resolve("v", &idx, false).ok(), Some(FrameIndex(0)));
        let err = Target::Index(10).resolve("v", &idx, false).unwrap_err();
        assert!(err.to_string().contains("valid indices 0..=9, or -10..=-1"), "{err}");
        assert!(Target::Index(-11).resolve("v", &idx, false).is_err());
        assert_eq!(Target::Index(99).resolve("v", &idx, true).ok(), Some(FrameIndex(9)));
        assert_eq!(Target::Index(-99).resolve("v", &idx, true).ok(), Some(FrameIndex(0)));
    }

    #[test]
    fn a_time_is_the_frame_on_screen_then() {
        let idx = index();
        assert_eq!(Target::Time(0.0).resolve("v", &idx, false).ok(), Some(FrameIndex(0)));
        assert_eq!(Target::Time(0.35).resolve("v", &idx, false).ok(), Some(FrameIndex(3)));
        assert!(Target::Time(1.0).resolve("v", &idx, false).is_err(), "the video lasts 1 s");
        assert_eq!(Target::Time(5.0).resolve("v", &idx, true).ok(), Some(FrameIndex(9)));
        assert_eq!(Target::Time(-1.0).resolve("v", &idx, true).ok(), Some(FrameIndex(0)));
        assert!(Target::Time(f64::NAN).resolve("v", &idx, true).is_err(), "clamping never invents a time");
    }

    #[test]
    fn ranges_select_in_order_with_negative_ends_and_steps() {
        let idx = index();
        let r = |start, stop, step| Selection::Range { start, stop, step }.resolve("v", &idx, 100);
        assert_eq!(r(0, 0, 0).unwrap(), ids(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), "0, 0 is the whole video");
        assert_eq!(r(2, 8, 3).unwrap(), ids(&[2, 5]));
        assert_eq!(r(-3, 0, 1).unwrap(), ids(&[7, 8, 9]), "stop 0 is the end, whatever the start");
        assert_eq!(r(-3, -1, 1).unwrap(), ids(&[7, 8]));
        assert!(matches!(r(0, 5, -1), Err(SelectionError::BadRange(_))));
        assert!(matches!(r(10, 11, 1), Err(SelectionError::Engine(EngineError::IndexOutOfRange { index: 10, .. }))));
        assert!(matches!(r(2, 11, 1), Err(SelectionError::Engine(EngineError::IndexOutOfRange { index: 11, .. }))));
        assert!(matches!(
            Selection::Range { start: 0, stop: 0, step: 1 }.resolve("v", &idx, 4),
            Err(SelectionError::TooMany { count: 10, max: 4 })
        ));
    }

    #[test]
    fn time_ranges_start_with_the_frame_on_screen() {
        let idx = index();
        let t = |start_s, stop_s| Selection::TimeRange { start_s, stop_s }.resolve("v", &idx, 100);
        assert_eq!(t(0.25, 0.5).unwrap(), ids(&[2, 3, 4]));
        assert_eq!(t(0.25, 0.25).unwrap(), ids(&[2]), "an empty interval still has the frame on screen");
        assert!(matches!(t(0.5, 0.2), Err(SelectionError::BadRange(_))));
        assert!(matches!(t(0.0, f64::INFINITY), Err(SelectionError::BadTime(_))));
        assert!(matches!(t(2.0, 3.0), Err(SelectionError::Engine(EngineError::TimeOutOfRange { .. }))));
    }

    #[test]
    fn keyframes_are_selected_by_step_and_time() {
        let stream = StreamInfo::for_tests(8, 10);
        let packets: Vec<PacketMeta> = (0..20)
            .map(|i| PacketMeta { pts: Some(i), dts: Some(i), duration: 1, key: i % 5 == 0, discard: false })
            .collect();
        let idx = VideoIndex::from_packets(stream, &packets).unwrap();
        let k = |every, within| Selection::Keyframes { every, within }.resolve("v", &idx, 100);
        assert_eq!(k(0, None).unwrap(), ids(&[0, 5, 10, 15]));
        assert_eq!(k(2, None).unwrap(), ids(&[0, 10]));
        assert_eq!(k(1, Some((0.5, 1.5))).unwrap(), ids(&[5, 10]));
        assert_eq!(k(1, Some((0.6, 0.7))).unwrap(), ids(&[]));
        assert!(matches!(k(1, Some((1.0, 0.5))), Err(SelectionError::BadRange(_))));
    }

    #[test]
    fn lists_keep_their_order_and_duplicates() {
        let idx = index();
        let l = |v: Vec<i64>| Selection::Indices(v).resolve("v", &idx, 3);
        assert_eq!(l(vec![5, -1, 5]).unwrap(), ids(&[5, 9, 5]));
        assert!(matches!(l(vec![1, 2, 3, 4]), Err(SelectionError::TooMany { count: 4, max: 3 })));
        assert!(matches!(l(vec![1, 20]), Err(SelectionError::Engine(EngineError::IndexOutOfRange { .. }))));
    }
}
