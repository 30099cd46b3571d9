//! Repeated frames and loops, found from a video's fingerprints (pure, no decoding).
//!
//! Two frames match when their `ahash` values are within `max_distance` bits of each other, or,
//! with `max_distance` 0, when their md5s are equal (identical pixels). Candidates come from a
//! BK-tree over the distinct `ahash` values, so a query costs a walk over the few hashes near it
//! instead of a comparison with every frame (an hour of video has 108,000 frames).
//!
//! - A **loop** is a run of consecutive frames matching an earlier run at a constant offset
//!   (a diagonal in the match matrix): `second_start + k` matches `first_start + k` for
//!   `k < length`, with gaps of at most [`GAP`] unmatched frames (compression noise). Runs are
//!   followed diagonal by diagonal as the frames go by. A run whose frames are all alike (a
//!   frozen picture, a static shot) is not a loop, and in one video the offset must be at least
//!   `min_loop_frames`; of runs on neighbouring diagonals over the same frames the longest is
//!   reported. Longest loops first.
//! - A **group** is a set of matching frames not explained by a loop: identical frames (by
//!   md5, `exact`), such as a frozen tail, and, with `max_distance` > 0, near-identical frames
//!   at least `min_loop_frames` apart (neighbours in a slow shot are alike without repeating).
//!
//! With a second video, the first side of every loop and group is the first video and the
//! second side the other one.

use std::collections::HashMap;

use crate::engine::hashes::{distance, Fingerprint};

/// Unmatched frames a loop may contain in a row.
pub const GAP: u32 = 3;
/// Candidate earlier frames considered per frame when looking for new loops (the closest and
/// most recent first); runs already followed are checked directly, whatever this says.
const CANDIDATES: usize = 48;

#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateGroup {
    /// Frames of the first video, ascending.
    pub indices: Vec<u32>,
    /// Frames of the other video (empty without one), ascending.
    pub other_indices: Vec<u32>,
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Loop {
    pub first_start: u32,
    pub second_start: u32,
    pub length: u32,
    pub mean_distance: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub groups: Vec<DuplicateGroup>,
    pub loops: Vec<Loop>,
}

/// A BK-tree over distinct 64-bit hashes under Hamming distance.
struct BkTree {
    nodes: Vec<(u64, Vec<(u32, usize)>)>,
}

impl BkTree {
    fn new(hashes: impl IntoIterator<Item = u64>) -> BkTree {
        let mut tree = BkTree { nodes: Vec::new() };
        for h in hashes {
            tree.insert(h);
        }
        tree
    }

    fn insert(&mut self, h: u64) {
        if self.nodes.is_empty() {
            self.nodes.push((h, Vec::new()));
            return;
        }
        let mut at = 0;
        loop {
            let d = distance(self.nodes[at].0, h);
            if d == 0 {
                return;
            }
            match self.nodes[at].1.iter().find(|(e, _)| *e == d) {
                Some(&(_, child)) => at = child,
                None => {
                    let id = self.nodes.len();
                    self.nodes.push((h, Vec::new()));
                    self.nodes[at].1.push((d, id));
                    return;
                }
            }
        }
    }

    /// Every stored hash within `max` of `h`, with its distance.
    fn within(&self, h: u64, max: u32, out: &mut Vec<(u64, u32)>) {
        out.clear();
        if self.nodes.is_empty() {
            return;
        }
        let mut stack = vec![0];
        while let Some(at) = stack.pop() {
            let (node, children) = &self.nodes[at];
            let d = distance(*node, h);
            if d <= max {
                out.push((*node, d));
            }
            for &(e, child) in children {
                if e + max >= d && e <= d + max {
                    stack.push(child);
                }
            }
        }
    }
}

/// Which frames of the first side match a frame, by one of the two rules.
struct Matcher<'a> {
    first: &'a [Fingerprint],
    max: u32,
    tree: BkTree,
    by_ahash: HashMap<u64, Vec<u32>>,
    by_md5: HashMap<[u8; 16], Vec<u32>>,
}

impl<'a> Matcher<'a> {
    fn new(first: &'a [Fingerprint], max: u32) -> Matcher<'a> {
        let mut by_ahash: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut by_md5: HashMap<[u8; 16], Vec<u32>> = HashMap::new();
        for (i, f) in first.iter().enumerate() {
            if max == 0 {
                if let Some(m) = f.md5 {
                    by_md5.entry(m).or_default().push(i as u32);
                }
            } else {
                by_ahash.entry(f.ahash).or_default().push(i as u32);
            }
        }
        let tree = BkTree::new(by_ahash.keys().copied());
        Matcher { first, max, tree, by_ahash, by_md5 }
    }

    /// Distance between first-side frame `j` and `f` if they match.
    fn matches(&self, j: u32, f: &Fingerprint) -> Option<u32> {
        let g = self.first.get(j as usize)?;
        if self.max == 0 {
            (g.md5.is_some() && g.md5 == f.md5).then_some(0)
        } else {
            let d = distance(g.ahash, f.ahash);
            (d <= self.max).then_some(d)
        }
    }

    /// Up to [`CANDIDATES`] first-side frames matching `f` below `before` (closest hashes first,
    /// then the most recent).
    fn candidates(&self, f: &Fingerprint, before: u32, near: &mut Vec<(u64, u32)>, out: &mut Vec<(u32, u32)>) {
        out.clear();
        if self.max == 0 {
            if let Some(list) = f.md5.and_then(|m| self.by_md5.get(&m)) {
                out.extend(list.iter().rev().filter(|&&j| j < before).take(CANDIDATES).map(|&j| (j, 0)));
            }
            return;
        }
        self.tree.within(f.ahash, self.max, near);
        near.sort_by_key(|&(_, d)| d);
        for &(h, d) in near.iter() {
            let list = &self.by_ahash[&h];
            let room = CANDIDATES - out.len();
            out.extend(list.iter().rev().filter(|&&j| j < before).take(room).map(|&j| (j, d)));
            if out.len() >= CANDIDATES {
                return;
            }
        }
    }
}

struct Run {
    start: u32,
    last: u32,
    matched: u32,
    distance_sum: u64,
}

/// Find loops and groups in `first` (and against `other`, when given).
pub fn find(first: &[Fingerprint], other: Option<&[Fingerprint]>, max_distance: u32, min_loop_frames: u32) -> Report {
    let min_loop = min_loop_frames.max(2);
    let matcher = Matcher::new(first, max_distance);
    let second = other.unwrap_or(first);
    let same = other.is_none();
    // Diagonals being followed, by offset (second index - first index).
    let mut runs: HashMap<i64, Run> = HashMap::new();
    let mut finished: Vec<(i64, Run)> = Vec::new();
    let (mut near, mut candidates) = (Vec::new(), Vec::new());
    // Matching pairs seen (second, first, distance), for the groups.
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for (i, f) in second.iter().enumerate() {
        let i = i as u32;
        runs.retain(|&offset, run| {
            let j = i as i64 - offset;
            if let Some(d) = (j >= 0).then(|| matcher.matches(j as u32, f)).flatten() {
                run.last = i;
                run.matched += 1;
                run.distance_sum += u64::from(d);
                return true;
            }
            if i - run.last > GAP {
                finished.push((offset, std::mem::replace(run, Run { start: 0, last: 0, matched: 0, distance_sum: 0 })));
                return false;
            }
            true
        });
        let before = if same { i } else { u32::MAX };
        matcher.candidates(f, before, &mut near, &mut candidates);
        for &(j, d) in &candidates {
            let offset = i as i64 - j as i64;
            if same && (offset as u32) < min_loop {
                if d == 0 || max_distance == 0 {
                    pairs.push((i, j));
                }
                continue;
            }
            pairs.push((i, j));
            runs.entry(offset).or_insert(Run { start: i, last: i, matched: 1, distance_sum: u64::from(d) });
        }
    }
    finished.extend(runs.drain());
    let loops = select_loops(finished, first, &matcher, min_loop);
    let groups = groups(&pairs, &loops, first, second, same, max_distance, min_loop);
    Report { groups, loops }
}

/// Runs long enough, not frozen, the longest of neighbouring diagonals; longest first.
fn select_loops(runs: Vec<(i64, Run)>, first: &[Fingerprint], matcher: &Matcher, min_loop: u32) -> Vec<Loop> {
    let mut found: Vec<Loop> = runs
        .into_iter()
        .filter(|(_, r)| r.last - r.start + 1 >= min_loop)
        .filter_map(|(offset, r)| {
            let first_start = (r.start as i64 - offset) as u32;
            let length = r.last - r.start + 1;
            // A frozen picture matches itself at every offset: it is a group, not a loop.
            let anchor = first.get(first_start as usize)?;
            let moving = (first_start..first_start + length).any(|j| matcher.matches(j, anchor).is_none());
            moving.then(|| Loop {
                first_start,
                second_start: r.start,
                length,
                mean_distance: r.distance_sum as f64 / r.matched.max(1) as f64,
            })
        })
        .collect();
    found.sort_by(|a, b| b.length.cmp(&a.length).then(a.second_start.cmp(&b.second_start)));
    let mut kept: Vec<Loop> = Vec::new();
    for l in found {
        let offset = l.second_start as i64 - l.first_start as i64;
        let shadowed = kept.iter().any(|k| {
            let k_offset = k.second_start as i64 - k.first_start as i64;
            let overlap = (l.second_start + l.length).min(k.second_start + k.length) as i64
                - l.second_start.max(k.second_start) as i64;
            (offset - k_offset).abs() <= (2 * GAP) as i64 && overlap > 0
        });
        if !shadowed {
            kept.push(l);
        }
    }
    kept
}

/// Connected groups of matching pairs that no loop explains.
fn groups(
    pairs: &[(u32, u32)],
    loops: &[Loop],
    first: &[Fingerprint],
    second: &[Fingerprint],
    same: bool,
    max_distance: u32,
    min_loop: u32,
) -> Vec<DuplicateGroup> {
    let in_loop = |i: u32, j: u32| {
        loops.iter().any(|l| {
            let offset = l.second_start as i64 - l.first_start as i64;
            i >= l.second_start
                && i < l.second_start + l.length
                && ((i as i64 - j as i64) - offset).abs() <= (2 * GAP) as i64
        })
    };
    let identical = |i: u32, j: u32| {
        let (a, b) = (second[i as usize].md5, first[j as usize].md5);
        a.is_some() && a == b
    };
    // Union-find over nodes: first-side frames are 0..n, second-side ones n.. (the same
    // numbers as the first side when there is one video).
    let n = first.len();
    let node = |i: u32| if same { i as usize } else { n + i as usize };
    let mut parent: Vec<usize> = (0..n + if same { 0 } else { second.len() }).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut joined = false;
    for &(i, j) in pairs {
        let exact = identical(i, j);
        let near_enough = max_distance > 0 && (!same || i - j >= min_loop);
        if !(exact || near_enough) || in_loop(i, j) {
            continue;
        }
        let (a, b) = (root(&mut parent, node(i)), root(&mut parent, j as usize));
        if a != b {
            parent[a] = b;
        }
        joined = true;
    }
    if !joined {
        return Vec::new();
    }
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for x in 0..parent.len() {
        let r = root(&mut parent, x);
        members.entry(r).or_default().push(x);
    }
    let mut out: Vec<DuplicateGroup> = members
        .into_values()
        .filter(|m| m.len() >= 2)
        .map(|m| {
            let indices: Vec<u32> = m.iter().filter(|&&x| x < n).map(|&x| x as u32).collect();
            let other_indices: Vec<u32> = m.iter().filter(|&&x| x >= n).map(|&x| (x - n) as u32).collect();
            let md5_of = |x: usize| if x < n { first[x].md5 } else { second[x - n].md5 };
            let exact = md5_of(m[0]).is_some() && m.iter().all(|&x| md5_of(x) == md5_of(m[0]));
            DuplicateGroup { indices, other_indices, exact }
        })
        .collect();
    out.sort_by(|a, b| {
        (b.indices.len() + b.other_indices.len())
            .cmp(&(a.indices.len() + a.other_indices.len()))
            .then(a.indices.first().cmp(&b.indices.first()))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with a distinct hash per `content` value (far apart in Hamming distance).
    fn frame(content: u64) -> Fingerprint {
        let h =
            content.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ content.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        Fingerprint {
            ahash: h,
            dhash: h.rotate_left(7),
            md5: Some((u128::from(content) * 0x1234_5678_9ABC).to_le_bytes()),
        }
    }

    /// The same picture re-encoded: a bit or two flipped, different bytes.
    fn noisy(content: u64, bits: u32) -> Fingerprint {
        let f = frame(content);
        let mut a = f.ahash;
        for b in 0..bits {
            a ^= 1 << ((content as u32 * 7 + b * 13) % 64);
        }
        Fingerprint { ahash: a, dhash: f.dhash, md5: Some([0xEE; 16].map(|x: u8| x ^ content as u8)) }
    }

    #[test]
    fn finds_a_reencoded_segment_and_a_frozen_tail() {
        // 0..100 a segment, 100..200 other content, 200..300 the segment again (noisy), then
        // 40 frames frozen.
        let mut v: Vec<Fingerprint> = (0..200).map(frame).collect();
        v.extend((0..100).map(|c| noisy(c, 2)));
        v.extend(std::iter::repeat_n(frame(999), 40));
        let r = find(&v, None, 4, 25);
        assert_eq!(r.loops.len(), 1, "{:?}", r.loops);
        let l = &r.loops[0];
        assert_eq!((l.first_start, l.second_start, l.length), (0, 200, 100));
        assert!(l.mean_distance > 0.0 && l.mean_distance <= 2.0);
        assert_eq!(r.groups.len(), 1, "{:?}", r.groups);
        assert!(r.groups[0].exact);
        assert_eq!(r.groups[0].indices, (300..340).collect::<Vec<u32>>());
    }

    #[test]
    fn exact_mode_sees_only_identical_pixels() {
        let mut v: Vec<Fingerprint> = (0..60).map(frame).collect();
        v.extend((0..60).map(|c| noisy(c, 1)));
        v.extend((0..60).map(frame));
        let r = find(&v, None, 0, 25);
        assert_eq!(r.loops.len(), 1, "{:?}", r.loops);
        assert_eq!((r.loops[0].first_start, r.loops[0].second_start, r.loops[0].length), (0, 120, 60));
        assert!(r.groups.is_empty(), "{:?}", r.groups);
    }

    #[test]
    fn no_repeats_no_report() {
        let v: Vec<Fingerprint> = (0..500).map(frame).collect();
        assert_eq!(find(&v, None, 6, 25), Report::default());
    }

    #[test]
    fn short_repeats_are_groups_not_loops() {
        let mut v: Vec<Fingerprint> = (0..100).map(frame).collect();
        v[80] = frame(10);
        let r = find(&v, None, 4, 25);
        assert!(r.loops.is_empty());
        assert_eq!(r.groups, vec![DuplicateGroup { indices: vec![10, 80], other_indices: vec![], exact: true }]);
    }

    #[test]
    fn a_clip_is_found_in_another_video() {
        let a: Vec<Fingerprint> = (0..300).map(frame).collect();
        let b: Vec<Fingerprint> = (1000..1050).chain(120..170).chain(2000..2030).map(frame).collect();
        let r = find(&a, Some(&b), 4, 25);
        assert_eq!(r.loops.len(), 1, "{:?}", r.loops);
        assert_eq!((r.loops[0].first_start, r.loops[0].second_start, r.loops[0].length), (120, 50, 50));
    }

    #[test]
    fn the_tree_finds_what_a_scan_finds() {
        let hashes: Vec<u64> = (0..2000u64).map(|i| frame(i).ahash & 0xFFFF_0000_FFFF).collect();
        let tree = BkTree::new(hashes.iter().copied());
        let mut out = Vec::new();
        for q in hashes.iter().step_by(97) {
            tree.within(*q, 6, &mut out);
            let mut got: Vec<u64> = out.iter().map(|p| p.0).collect();
            got.sort();
            let mut want: Vec<u64> = hashes.iter().copied().filter(|h| distance(*h, *q) <= 6).collect();
            want.sort();
            want.dedup();
            assert_eq!(got, want);
        }
    }
}
