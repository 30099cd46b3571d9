//! Recognising frames decoded after a seek in a video whose frames have no timestamps.
//!
//! Frames of a video indexed by counting (MPEG-PS and VOB, raw `.h264`/`.hevc` streams, AVI
//! with packed B-frames) are named by their rank in a decode from the start of the file. After a
//! seek that rank is unknown: the demuxer lands near a keyframe, not on a frame number, and the
//! decoder may drop or garble the first pictures it gets without their references. So the
//! index keeps a digest of every frame of the sequential decode
//! ([`DecodedFrame::digest`](crate::engine::ffmpeg::DecodedFrame::digest)), and an
//! [`Anchor`] places each frame decoded after a seek by its digest: among the positions
//! where the digest occurs, the one that also continues the frames placed before it.
//!
//! What makes this exact is not the placing but the check it implies: a frame is only ever
//! named `i` when its digest is frame `i`'s, so its pixels are those of the sequential
//! decode's frame `i` whatever the demuxer did (frame-exact is about pixels). Placing is then
//! only a matter of speed: a frame placed at the wrong one of two equal frames is still served
//! right, and the frame after it, not matching, is placed again. A frame that
//! matches several positions (a still scene) is placed once the run it belongs to becomes
//! unique; until then it is only known to look like each of them ([`Anchor::could_be`]).
//!
//! Pure logic over the digests, unit-tested without FFmpeg.

use crate::units::FrameIndex;

/// Where the frames decoded since a seek stand in the sequential decode.
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The seek point's first frame.
    first: u32,
    state: State,
    /// Frames decoded in a row whose digest is no frame's at all (pictures decoded without
    /// their references).
    garbled: u32,
}

#[derive(Debug, Clone)]
enum State {
    /// The last frame was placed; this is the position the next one should have.
    Placed(u32),
    /// The positions the last frame may have had (none, or several equal frames).
    Searching(Vec<u32>),
}

/// Frames before a seek point's first frame that may still come out of a decode from it, garbled
/// (leading pictures of an open GOP).
const MARGIN: u32 = 16;

/// How far past the expected position a frame is first looked for, when the one expected did not
/// come (skipped or lost). Placing it there when its digest occurs once in that stretch, though
/// maybe elsewhere too, is safe: the frame is named by a position whose digest it has, so its
/// pixels are that frame's, and the next frame is checked against the next position again.
const NEAR: u32 = 32;

impl Anchor {
    /// After a seek to a point whose first frame is `first`.
    pub fn new(first: FrameIndex) -> Anchor {
        Anchor { first: first.0, state: State::Searching(Vec::new()), garbled: 0 }
    }

    /// Place the next frame the decoder output, whose digest is `digest`, among `digests` (one
    /// per frame of the video): where it continues the frames placed before it, or else the one
    /// frame of the video with that digest. Anywhere in the video, so that a demuxer landing
    /// early or late is noticed rather than guessed about. `None` when its position is not known
    /// (yet).
    pub fn place(&mut self, digests: &[u64], digest: u64) -> Option<FrameIndex> {
        let matches = |i: u32| digests.get(i as usize) == Some(&digest);
        let continued: Vec<u32> = match &self.state {
            State::Placed(next) if matches(*next) => return Some(self.placed(*next)),
            // Frames were skipped (non-reference frames the decoder was told to drop) or lost:
            // the frame is most likely a little further on.
            State::Placed(next) => {
                let near: Vec<u32> = (next + 1..=next.saturating_add(NEAR)).filter(|&i| matches(i)).collect();
                if let [only] = near[..] {
                    return Some(self.placed(only));
                }
                Vec::new()
            }
            State::Searching(candidates) => candidates.iter().map(|c| c + 1).filter(|&c| matches(c)).collect(),
        };
        let candidates = if continued.is_empty() {
            digests.iter().enumerate().filter(|(_, &d)| d == digest).map(|(i, _)| i as u32).collect()
        } else {
            continued
        };
        if let [only] = candidates[..] {
            return Some(self.placed(only));
        }
        self.garbled = if candidates.is_empty() { self.garbled + 1 } else { 0 };
        self.state = State::Searching(candidates);
        None
    }

    fn placed(&mut self, at: u32) -> FrameIndex {
        self.state = State::Placed(at + 1);
        self.garbled = 0;
        FrameIndex(at)
    }

    /// Whether the last frame decoded was placed.
    pub fn placed_last(&self) -> bool {
        matches!(self.state, State::Placed(_))
    }

    /// Whether the last frame, not placed, has the digest of `frame` (and so its pixels).
    pub fn could_be(&self, frame: FrameIndex) -> bool {
        matches!(&self.state, State::Searching(c) if c.contains(&frame.0))
    }

    /// Whether the last frame, not placed, stands after `target` wherever it is: every frame of
    /// the video that looks like it does. Frames come out in presentation order, so `target` is
    /// not coming (a seek landed past it in a video that is the same clip twice, say). Were a
    /// frame's true place not among those looked at, this would cost a backoff, never a frame.
    pub fn past(&self, target: FrameIndex) -> bool {
        matches!(&self.state, State::Searching(c) if !c.is_empty() && c.iter().all(|&c| c > target.0))
    }

    /// Whether more garbled frames came in a row than there are frames from the seek point to
    /// `until`: the frames after this seek do not decode as they do from the start, and the
    /// target is not coming.
    pub fn lost(&self, until: FrameIndex) -> bool {
        self.garbled > until.0.saturating_sub(self.first) + 2 * MARGIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests of a video whose frames 10..20 are a still scene (all equal).
    fn video() -> Vec<u64> {
        (0..40u64).map(|i| if (10..20).contains(&i) { 1000 } else { i }).collect()
    }

    #[test]
    fn a_unique_frame_is_placed_and_the_next_ones_follow() {
        let d = video();
        let mut a = Anchor::new(FrameIndex(25));
        assert_eq!(a.place(&d, 27), Some(FrameIndex(27)));
        assert_eq!(a.place(&d, 28), Some(FrameIndex(28)));
    }

    #[test]
    fn garbled_frames_after_a_seek_are_not_placed() {
        let d = video();
        let mut a = Anchor::new(FrameIndex(25));
        assert_eq!(a.place(&d, 0xdead), None);
        assert_eq!(a.place(&d, 0xbeef), None);
        assert_eq!(a.place(&d, 26), Some(FrameIndex(26)));
    }

    #[test]
    fn a_demuxer_landing_early_or_late_is_placed_where_it_landed() {
        let d = video();
        let mut early = Anchor::new(FrameIndex(30));
        assert_eq!(early.place(&d, 5), Some(FrameIndex(5)));
        let mut late = Anchor::new(FrameIndex(20));
        assert_eq!(late.place(&d, 35), Some(FrameIndex(35)));
    }

    #[test]
    fn a_still_scene_is_placed_when_its_run_becomes_unique() {
        let d = video();
        let mut a = Anchor::new(FrameIndex(12));
        for _ in 0..3 {
            assert_eq!(a.place(&d, 1000), None);
            assert!(a.could_be(FrameIndex(15)));
            assert!(!a.could_be(FrameIndex(21)));
        }
        // The scene ends: the frame after it is unique.
        assert_eq!(a.place(&d, 20), Some(FrameIndex(20)));
        assert!(!a.could_be(FrameIndex(15)));
        // Seen whole, a run of equal frames is placed by its length.
        let mut whole = Anchor::new(FrameIndex(10));
        let placed: Vec<Option<FrameIndex>> = (0..10).map(|_| whole.place(&d, 1000)).collect();
        assert_eq!(placed[9], Some(FrameIndex(19)));
        assert!(placed[..9].iter().all(Option::is_none));
    }

    #[test]
    fn a_run_through_a_still_scene_is_placed_by_where_it_continues() {
        // Frames 10..20 all look alike, and so do 30 and 35: after 30, 31 places the run.
        let mut d = video();
        d[35] = 30;
        let mut a = Anchor::new(FrameIndex(28));
        assert_eq!(a.place(&d, 30), None);
        assert_eq!(a.place(&d, 31), Some(FrameIndex(31)));
    }

    #[test]
    fn frames_skipped_after_placing_are_stepped_over_without_a_search_of_the_whole_video() {
        // 28 also appears far away: near the expected position it occurs once, and is placed there.
        let mut d: Vec<u64> = (0..100).collect();
        d[90] = 28;
        let mut a = Anchor::new(FrameIndex(25));
        assert_eq!(a.place(&d, 26), Some(FrameIndex(26)));
        assert_eq!(a.place(&d, 28), Some(FrameIndex(28)));
    }

    #[test]
    fn a_frame_lost_after_placing_is_noticed_and_the_run_placed_again() {
        let d = video();
        let mut a = Anchor::new(FrameIndex(25));
        assert_eq!(a.place(&d, 26), Some(FrameIndex(26)));
        // 27 never came out: 28 is not what was expected next, and is placed afresh.
        assert_eq!(a.place(&d, 28), Some(FrameIndex(28)));
        assert_eq!(a.place(&d, 29), Some(FrameIndex(29)));
    }

    #[test]
    fn a_frame_whose_look_alikes_all_come_after_the_target_is_past_it() {
        // The same clip twice: every frame has a look-alike 50 frames on.
        let d: Vec<u64> = (0..100).map(|i| i % 50).collect();
        let mut a = Anchor::new(FrameIndex(60));
        assert_eq!(a.place(&d, 7), None);
        assert!(a.past(FrameIndex(5)), "7 and 57 are both after 5");
        assert!(!a.past(FrameIndex(20)), "7 may come before 20");
        assert!(!a.past(FrameIndex(57)));
        // A frame matching nothing says nothing about where the decode stands.
        assert_eq!(a.place(&d, 5000), None);
        assert!(!a.past(FrameIndex(5)));
    }

    #[test]
    fn a_seek_whose_frames_never_match_is_given_up_but_a_still_scene_is_not() {
        let d = video();
        let until = FrameIndex(30);
        let mut a = Anchor::new(FrameIndex(25));
        let mut n = 0;
        while !a.lost(until) {
            assert_eq!(a.place(&d, 5000 + n), None);
            n += 1;
        }
        assert_eq!(n as u32, 30 - 25 + 2 * MARGIN + 1);
        // Frames that look like several real ones are real: not lost, however many.
        let mut still = Anchor::new(FrameIndex(10));
        for _ in 0..100 {
            still.place(&d, 1000);
        }
        assert!(!still.lost(FrameIndex(12)));
    }
}
