//! Per-frame fingerprints: what they are, and how a video's table of them is stored.
//!
//! - `ahash`: the frame's luma averaged down to 8x8 cells, one bit per cell: brighter than the
//!   mean of the cells or not. Compression noise rarely moves a cell across the mean, so a
//!   re-encoded frame lands within a few bits (Hamming distance) of the original.
//! - `dhash`: the luma averaged down to 9x8 cells, one bit per neighbouring pair in a row: the
//!   right one brighter or not. It follows gradients where `ahash` follows brightness.
//! - `md5`: of the frame's native-size RGB24 bytes, exactly the bytes `RequestFrame` returns
//!   (what `hashlib.md5(frame.tobytes())` gives on the array), so identical means identical.
//!
//! The luma is the decoded picture's own 8-bit luma plane, as the codec produced it (Y′ in its
//! coded range, nothing converted, so a hash pass costs little more than the decode); pictures
//! without one (RGB codecs, more than 8 bits) are converted to GRAY8. Anyone can recompute the
//! hashes: for yuv420p video, the first width x height bytes of each frame of `ffmpeg -i v
//! -f rawvideo -pix_fmt yuv420p -` are that plane. A cell's value is the integer mean of its
//! pixels; cells split the frame at `c * size / cells`. Cell (row r, column c) is bit
//! `63 - (8r + c)` of `ahash` (and of `dhash`, for the pair (c, c + 1)): printed as hex, the
//! first digit is the top-left corner.
//!
//! A table is stored beside the daemon's other state under a key made from the file's path,
//! size, modification and change times and inode, so a changed file is never answered from the
//! table of its previous contents (it gets a new key; the old table is simply not found).

use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

/// One frame's fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub ahash: u64,
    pub dhash: u64,
    pub md5: Option<[u8; 16]>,
}

/// Fingerprint a frame from its luma (`height` rows of `width` bytes) and, for the md5, its
/// RGB24 bytes.
pub fn fingerprint(luma: &[u8], width: u32, height: u32, rgb: Option<&[u8]>) -> Fingerprint {
    let (ahash, dhash) = perceptual(luma, width as usize, height as usize);
    let md5 = rgb.map(|rgb| Md5::digest(rgb).into());
    Fingerprint { ahash, dhash, md5 }
}

/// Column range of cell `c` of `cells` over `len` pixels (never empty, so tiny frames work).
fn span(c: usize, cells: usize, len: usize) -> (usize, usize) {
    let start = (c * len / cells).min(len.saturating_sub(1));
    let end = ((c + 1) * len / cells).max(start + 1).min(len.max(1));
    (start, end)
}

fn perceptual(luma: &[u8], w: usize, h: usize) -> (u64, u64) {
    if w == 0 || h == 0 || luma.len() < w * h {
        return (0, 0);
    }
    // Per band of rows, the column sums (vectorised: 16-bit sums of up to 257 rows, eight or
    // more lanes a vector, added into 32-bit ones), then reduced per cell.
    const ROWS_IN_U16: usize = (u16::MAX / u8::MAX as u16) as usize;
    let mut columns = vec![0u32; w];
    let mut partial = vec![0u16; w];
    let mut a = [0u64; 64];
    let mut d = [0u64; 72];
    for band in 0..8 {
        let (y0, y1) = span(band, 8, h);
        columns.iter_mut().for_each(|c| *c = 0);
        for rows in luma[y0 * w..y1 * w].chunks(w * ROWS_IN_U16) {
            partial.iter_mut().for_each(|c| *c = 0);
            for row in rows.chunks_exact(w) {
                for (acc, &v) in partial.iter_mut().zip(row) {
                    *acc += u16::from(v);
                }
            }
            for (acc, &p) in columns.iter_mut().zip(&partial) {
                *acc += u32::from(p);
            }
        }
        let rows = (y1 - y0) as u64;
        let cell = |x0: usize, x1: usize| -> u64 {
            columns[x0..x1].iter().map(|&c| u64::from(c)).sum::<u64>() / (rows * (x1 - x0) as u64)
        };
        for c in 0..8 {
            let (x0, x1) = span(c, 8, w);
            a[band * 8 + c] = cell(x0, x1);
        }
        for c in 0..9 {
            let (x0, x1) = span(c, 9, w);
            d[band * 9 + c] = cell(x0, x1);
        }
    }
    let mean = a.iter().sum::<u64>() / 64;
    let mut ahash = 0u64;
    for (i, &v) in a.iter().enumerate() {
        if v > mean {
            ahash |= 1 << (63 - i);
        }
    }
    let mut dhash = 0u64;
    for r in 0..8 {
        for c in 0..8 {
            if d[r * 9 + c + 1] > d[r * 9 + c] {
                dhash |= 1 << (63 - (r * 8 + c));
            }
        }
    }
    (ahash, dhash)
}

/// Hamming distance between two 64-bit hashes.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Every frame's fingerprints, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTable {
    pub frames: Vec<Fingerprint>,
    /// Whether every entry has its md5.
    pub md5: bool,
}

const MAGIC: &[u8; 8] = b"FSRVHASH";
/// 2: hashes from the decoder's luma plane (1, never released, took the luma of RGB24).
/// 3: md5s of frames converted with the matrix and range they are tagged with, and in the
/// right order for files whose pts are decode-order stamps; 2's md5s of BT.709 or full-range
/// video were of wrongly converted frames, so those tables are computed again.
const VERSION: u32 = 3;

impl HashTable {
    /// The stored form: magic, version, flags, frame count, then per frame ahash, dhash (and
    /// the md5 when present), little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let record = if self.md5 { 32 } else { 16 };
        let mut out = Vec::with_capacity(24 + self.frames.len() * record);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&u32::from(self.md5).to_le_bytes());
        out.extend_from_slice(&(self.frames.len() as u64).to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&f.ahash.to_le_bytes());
            out.extend_from_slice(&f.dhash.to_le_bytes());
            if self.md5 {
                out.extend_from_slice(&f.md5.unwrap_or_default());
            }
        }
        out
    }

    /// A stored table, if `bytes` is one of exactly `frame_count` frames (anything else,
    /// a truncated or foreign file included, is no table).
    pub fn decode(bytes: &[u8], frame_count: usize) -> Option<HashTable> {
        let word = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
        if bytes.get(..8)? != MAGIC || bytes.get(8..12)? != VERSION.to_le_bytes() {
            return None;
        }
        let md5 = match u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) {
            0 => false,
            1 => true,
            _ => return None,
        };
        if word(16)? != frame_count as u64 {
            return None;
        }
        let record = if md5 { 32 } else { 16 };
        if bytes.len() != 24 + frame_count * record {
            return None;
        }
        let frames = bytes[24..]
            .chunks_exact(record)
            .map(|r| Fingerprint {
                ahash: u64::from_le_bytes(r[0..8].try_into().unwrap_or_default()),
                dhash: u64::from_le_bytes(r[8..16].try_into().unwrap_or_default()),
                md5: md5.then(|| r[16..32].try_into().unwrap_or_default()),
            })
            .collect();
        Some(HashTable { frames, md5 })
    }
}

/// Where the table of the file at `path` (as it is now) is stored under `dir`; `None` when the
/// file's metadata cannot be read.
pub fn table_path(dir: &Path, path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mut key = Md5::new();
    key.update(b"framesrv hashes v2\0");
    key.update(path.as_os_str().as_encoded_bytes());
    for n in [meta.size() as i64, meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec(), meta.ino() as i64] {
        key.update(n.to_le_bytes());
    }
    let hex: String = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join("hashes").join(format!("{hex}.fph")))
}

/// Store a table atomically (written beside, then renamed), so a reader never sees half.
pub fn save(file: &Path, table: &HashTable) -> std::io::Result<()> {
    let dir = file.parent().ok_or_else(|| std::io::Error::other("no directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, table.encode())?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect()
    }

    #[test]
    fn ahash_marks_the_bright_cells() {
        // Left half white, right half black: the four left columns of cells are set.
        let luma = image(64, 32, |x, _| if x < 32 { 235 } else { 16 });
        let f = fingerprint(&luma, 64, 32, None);
        assert_eq!(f.ahash, 0xF0F0_F0F0_F0F0_F0F0);
        // Brightness falls only between the middle cells: no pair gets brighter to the right.
        assert_eq!(f.dhash, 0);
    }

    /// Cell means the plain way, pixel by pixel, for the vectorised sums to be checked against.
    fn naive(luma: &[u8], w: usize, h: usize) -> (u64, u64) {
        let mean = |(x0, x1): (usize, usize), (y0, y1): (usize, usize)| -> u64 {
            let sum: u64 = (y0..y1).flat_map(|y| (x0..x1).map(move |x| u64::from(luma[y * w + x]))).sum();
            sum / ((x1 - x0) * (y1 - y0)) as u64
        };
        let a: Vec<u64> = (0..64).map(|i| mean(span(i % 8, 8, w), span(i / 8, 8, h))).collect();
        let avg = a.iter().sum::<u64>() / 64;
        let ahash = (0..64).filter(|&i| a[i] > avg).fold(0u64, |h, i| h | 1 << (63 - i));
        let d = |r: usize, c: usize| mean(span(c, 9, w), span(r, 8, h));
        let dhash = (0..64).filter(|&i| d(i / 8, i % 8 + 1) > d(i / 8, i % 8)).fold(0u64, |h, i| h | 1 << (63 - i));
        (ahash, dhash)
    }

    #[test]
    fn vectorised_sums_match_the_plain_ones_on_tall_bright_frames() {
        // Bands of 300 rows of values up to 255: past what 16-bit sums of a band would hold.
        for (w, h) in [(64, 2400), (33, 2056), (1280, 720), (7, 9)] {
            let luma = image(w, h, |x, y| if (x * 31 + y * 17) % 5 == 0 { 255 } else { ((x ^ y) % 256) as u8 });
            assert_eq!(perceptual(&luma, w, h), naive(&luma, w, h), "{w}x{h}");
        }
    }

    #[test]
    fn dhash_follows_a_gradient() {
        let luma = image(90, 16, |x, _| (x * 2) as u8);
        assert_eq!(fingerprint(&luma, 90, 16, None).dhash, u64::MAX);
    }

    #[test]
    fn small_noise_moves_few_bits_and_md5_sees_everything() {
        let base = image(160, 90, |x, y| ((x * 7 + y * 3) % 256) as u8);
        let mut noisy = base.clone();
        for (i, v) in noisy.iter_mut().enumerate() {
            *v = v.saturating_add((i % 3) as u8);
        }
        let (a, b) = (fingerprint(&base, 160, 90, Some(&base)), fingerprint(&noisy, 160, 90, Some(&noisy)));
        assert!(distance(a.ahash, b.ahash) <= 4);
        assert_ne!(a.md5, b.md5);
        assert_eq!(a.md5, Some(Md5::digest(&base).into()));
        assert_eq!(fingerprint(&base, 160, 90, None).md5, None);
    }

    #[test]
    fn tiny_and_empty_frames_do_not_panic() {
        let one = image(1, 1, |_, _| 9);
        let _ = fingerprint(&one, 1, 1, Some(&one));
        let _ = fingerprint(&[], 0, 0, Some(&[]));
        let _ = fingerprint(&[1, 2], 4, 4, None);
    }

    #[test]
    fn tables_round_trip_and_reject_anything_else() {
        let t = HashTable {
            frames: vec![
                Fingerprint { ahash: 1, dhash: 2, md5: Some([3; 16]) },
                Fingerprint { ahash: u64::MAX, dhash: 0, md5: Some([4; 16]) },
            ],
            md5: true,
        };
        let bytes = t.encode();
        assert_eq!(HashTable::decode(&bytes, 2), Some(t.clone()));
        assert_eq!(HashTable::decode(&bytes, 3), None);
        assert_eq!(HashTable::decode(&bytes[..bytes.len() - 1], 2), None);
        assert_eq!(HashTable::decode(b"garbage", 2), None);
        let plain = HashTable { frames: vec![Fingerprint { ahash: 5, dhash: 6, md5: None }], md5: false };
        assert_eq!(HashTable::decode(&plain.encode(), 1), Some(plain));
    }

    #[test]
    fn a_changed_file_gets_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.mp4");
        std::fs::write(&file, b"one").unwrap();
        let first = table_path(dir.path(), &file).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"two").unwrap();
        assert_ne!(first, table_path(dir.path(), &file).unwrap());
    }
}
