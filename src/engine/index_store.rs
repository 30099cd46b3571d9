//! Indexes kept across restarts, and the content key that names a file's bytes.
//!
//! Building an index demuxes the whole file (12.5 s for an hour of 1080p read from disk); reading
//! it back is a few milliseconds. An entry is only as good as its key, so the key is the file's
//! identity (device, inode, size, modification time in ns) plus an MD5 of its first and last
//! MiB: a file replaced, rewritten in place or appended to gets a new key and a new index. The
//! same [`ContentKey`] names the video to HTTP caches (ETags), so a changed file never gets an
//! old frame from them either.
//!
//! Entries are written atomically (a temporary file beside, then a rename), start with a magic,
//! a format version and a CRC-32 of the body (an MD5 took a third of the load time), and are checked again as an index
//! ([`VideoIndex::checked`]) after decoding: a corrupt, truncated, old-version or
//! mismatched entry is rebuilt, never trusted. The directory is bounded: after each write the
//! least recently used files (their modification time is refreshed on every read) go until the
//! total fits.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use md5::{Digest, Md5};

use crate::engine::ffmpeg::{Orientation, StreamInfo};
use crate::engine::index::{FrameEntry, FrameIdentity, SeekBy, SeekPoint, SeekTarget, VideoIndex};
use crate::units::{PacketNo, Pts, TimeBase};

const MAGIC: &[u8; 8] = b"FSRVIDX\0";
/// Bump on any change to the layout below, or to what an index of the same file holds: entries
/// of other versions are rebuilt. 6: files whose pts follow decode order are indexed by decoding
/// (`index::pts_in_decode_order`); version 5 had indexed them, wrongly, by their pts. 7: videos
/// indexed by decoding keep seek points and frame digests.
const VERSION: u32 = 7;
/// Magic, version, checksum.
const HEAD: usize = 16;
/// Bytes hashed at each end of the file.
const EDGE: u64 = 1 << 20;

/// Where stored indexes go and how much the directory may hold.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// `None`: nothing is kept on disk.
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
}

/// What identifies a file's content: its inode and times, and a digest of both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentKey(pub [u8; 16]);

impl ContentKey {
    /// The key of the file at `path` as it is now.
    pub fn of(path: &Path) -> std::io::Result<ContentKey> {
        use std::os::unix::fs::MetadataExt;
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let mut key = Md5::new();
        key.update(b"framesrv content v1\0");
        for n in [meta.dev() as i64, meta.ino() as i64, meta.size() as i64, meta.mtime(), meta.mtime_nsec()] {
            key.update(n.to_le_bytes());
        }
        let mut buf = vec![0u8; EDGE.min(meta.size()) as usize];
        file.read_exact(&mut buf)?;
        key.update(&buf);
        if meta.size() > EDGE {
            let tail = EDGE.min(meta.size() - EDGE);
            file.seek(SeekFrom::End(-(tail as i64)))?;
            buf.resize(tail as usize, 0);
            file.read_exact(&mut buf)?;
            key.update(&buf);
        }
        Ok(ContentKey(key.finalize().into()))
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Where the index of content `key` lives under `dir`.
pub fn entry_path(dir: &Path, key: &ContentKey) -> PathBuf {
    dir.join("index").join(format!("{}.fsi", key.hex()))
}

/// The stored index for `key`, if there is a sound one. Reading marks it recently used.
pub fn load(dir: &Path, key: &ContentKey) -> Option<VideoIndex> {
    let path = entry_path(dir, key);
    let bytes = std::fs::read(&path).ok()?;
    let index = decode(&bytes, key);
    match &index {
        Some(_) => {
            let _ = File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        }
        None => {
            if bytes.get(..8) == Some(&MAGIC[..]) && bytes.get(8..12) != Some(&VERSION.to_le_bytes()[..]) {
                // Expected once per video after an upgrade that changed what an index holds.
                tracing::info!(path = %path.display(), "stored index is of another version: rebuilding");
            } else {
                tracing::warn!(path = %path.display(), "stored index is damaged or stale: rebuilding");
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    index
}

/// Store `index` for `key` atomically, then keep the directory within `max_bytes`.
pub fn save(dir: &Path, key: &ContentKey, index: &VideoIndex, max_bytes: u64) -> std::io::Result<()> {
    let path = entry_path(dir, key);
    let parent = path.parent().ok_or_else(|| std::io::Error::other("no directory"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, encode(index, key))?;
    std::fs::rename(&tmp, &path)?;
    prune(dir, max_bytes);
    Ok(())
}

/// Remove the least recently used files under `dir` (indexes and hash tables) until the rest
/// fit in `max_bytes`.
pub fn prune(dir: &Path, max_bytes: u64) {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = ["index", "hashes"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            tracing::debug!(path = %path.display(), "state directory over its bound: removed");
            total -= len;
        }
    }
}

/// The entry's bytes: magic, version, CRC-32 of the body, body.
pub fn encode(index: &VideoIndex, key: &ContentKey) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + index.frames.len() * 37 + index.packet_pts_list().len() * 8));
    w.0.extend_from_slice(&key.0);
    let s = &index.stream;
    for text in [&s.codec, &s.container, &s.pixel_format] {
        w.bytes(text.as_bytes());
    }
    // The display matrix, read again on load (never a filter description from disk).
    w.u8(s.orientation.display_matrix.is_some() as u8);
    for v in s.orientation.display_matrix.unwrap_or_default() {
        w.u32(v as u32);
    }
    w.u32(s.sample_aspect_ratio.0 as u32);
    w.u32(s.sample_aspect_ratio.1 as u32);
    w.u32(s.width);
    w.u32(s.height);
    w.u32(s.time_base.num as u32);
    w.u32(s.time_base.den as u32);
    w.f64(s.header_fps);
    w.u8(match index.identity {
        FrameIdentity::ByPts => 0,
        FrameIdentity::ByCount => 1,
    });
    w.u64(index.packet_count as u64);
    w.f64(index.start_time_s);
    w.f64(index.duration_s);
    w.f64(index.avg_fps);
    w.u8(index.variable_frame_rate as u8);
    w.u64(index.keyframe_count as u64);
    w.u64(index.frames.len() as u64);
    for f in &index.frames {
        w.u64(f.pts.0 as u64);
        w.f64(f.time_s);
        w.f64(f.duration_s);
        w.u8(f.key as u8);
        w.u32(f.packet.map_or(u32::MAX, |p| p.0));
        w.u32(match f.seek {
            SeekTarget::Start => u32::MAX,
            SeekTarget::Point(i) => i as u32,
        });
    }
    w.u8(match index.seek_by {
        SeekBy::Timestamp => 0,
        SeekBy::Byte => 1,
    });
    w.u64(index.seek_points.len() as u64);
    for p in &index.seek_points {
        w.u32(p.packet.0);
        w.opt(p.pts);
        w.opt(p.dts);
        w.opt(p.pos);
    }
    w.u64s(index.digests.iter().copied());
    w.u64s(index.packet_pts_list().iter().map(|&pts| pts as u64));
    let body = w.0;
    let mut out = entry_head(&body);
    out.extend_from_slice(&body);
    out
}

/// The head of an entry whose body is `body`: magic, version, the body's CRC-32.
pub fn entry_head(body: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(body.len() + HEAD);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    head
}

/// The index in `bytes`, if they are a sound entry of this version for `key`.
pub fn decode(bytes: &[u8], key: &ContentKey) -> Option<VideoIndex> {
    let (head, body) = (bytes.get(..HEAD)?, bytes.get(HEAD..)?);
    if &head[..8] != MAGIC
        || head[8..12] != VERSION.to_le_bytes()
        || head[12..16] != crc32fast::hash(body).to_le_bytes()
    {
        return None;
    }
    let mut r = Reader(body);
    if r.take(16)? != key.0 {
        return None;
    }
    let mut text = || String::from_utf8(r.bytes()?.to_vec()).ok();
    let (codec, container, pixel_format) = (text()?, text()?, text()?);
    let has_matrix = r.u8()? != 0;
    let mut matrix = [0i32; 9];
    for v in &mut matrix {
        *v = r.u32()? as i32;
    }
    let orientation = Orientation::from_display_matrix(has_matrix.then_some(&matrix));
    let sample_aspect_ratio = (r.u32()? as i32, r.u32()? as i32);
    let stream = StreamInfo {
        orientation,
        sample_aspect_ratio,
        codec,
        container,
        pixel_format,
        width: r.u32()?,
        height: r.u32()?,
        time_base: TimeBase { num: r.u32()? as i32, den: r.u32()? as i32 },
        header_fps: r.f64()?,
    };
    let identity = match r.u8()? {
        0 => FrameIdentity::ByPts,
        1 => FrameIdentity::ByCount,
        _ => return None,
    };
    let packet_count = r.len()?;
    let (start_time_s, duration_s, avg_fps) = (r.f64()?, r.f64()?, r.f64()?);
    let variable_frame_rate = r.u8()? != 0;
    let keyframe_count = r.len()?;
    // Vectors sized up front: collecting through `Option` grows them by doubling, and with
    // mimalloc every growth of a multi-megabyte vector is a copy into fresh pages (tens of ms
    // for an hour of video).
    let n = r.count(33)?;
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(FrameEntry {
            pts: Pts(r.u64()? as i64),
            time_s: r.f64()?,
            duration_s: r.f64()?,
            key: r.u8()? != 0,
            packet: Some(r.u32()?).filter(|&p| p != u32::MAX).map(PacketNo),
            seek: match r.u32()? {
                u32::MAX => SeekTarget::Start,
                i => SeekTarget::Point(i as usize),
            },
        });
    }
    let seek_by = match r.u8()? {
        0 => SeekBy::Timestamp,
        1 => SeekBy::Byte,
        _ => return None,
    };
    let n = r.count(31)?;
    let mut seek_points = Vec::with_capacity(n);
    for _ in 0..n {
        seek_points.push(SeekPoint { packet: PacketNo(r.u32()?), pts: r.opt()?, dts: r.opt()?, pos: r.opt()? });
    }
    let digests = r.u64s()?;
    let packet_pts: Vec<i64> = r.u64s()?.into_iter().map(|v| v as i64).collect();
    if !r.0.is_empty() {
        return None;
    }
    VideoIndex {
        stream,
        identity,
        frames,
        seek_points,
        seek_by,
        digests,
        digest_unique: Vec::new(),
        packet_by_pts: Vec::new(),
        packet_pts,
        packet_count,
        start_time_s,
        duration_s,
        avg_fps,
        variable_frame_rate,
        keyframe_count,
    }
    .checked()
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn opt(&mut self, v: Option<i64>) {
        self.u8(v.is_some() as u8);
        self.u64(v.unwrap_or(0) as u64);
    }
    /// A count, then the values.
    fn u64s(&mut self, values: impl ExactSizeIterator<Item = u64>) {
        self.u64(values.len() as u64);
        values.for_each(|v| self.u64(v));
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.u64()?))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn opt(&mut self) -> Option<Option<i64>> {
        let some = self.u8()? != 0;
        let v = self.u64()? as i64;
        Some(some.then_some(v))
    }
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }
    /// What [`Writer::u64s`] wrote.
    fn u64s(&mut self) -> Option<Vec<u64>> {
        let n = self.count(8)?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(self.u64()?);
        }
        Some(values)
    }
    /// A count of records of `size` bytes each, no more than the bytes left can hold (a
    /// damaged count never allocates more than the file).
    fn count(&mut self, size: usize) -> Option<usize> {
        self.len().filter(|&n| n.checked_mul(size).is_some_and(|b| b <= self.0.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ffmpeg::PacketMeta;

    fn index() -> VideoIndex {
        // Three GOPs of four frames with B-frames: decode order I P B B.
        let mut packets = Vec::new();
        for gop in 0..3i64 {
            for (k, pts) in [0i64, 3, 1, 2].into_iter().enumerate() {
                let pts = gop * 4 + pts;
                packets.push(PacketMeta {
                    pts: Some(pts),
                    dts: Some(gop * 4 + k as i64 - 1),
                    duration: 1,
                    key: k == 0,
                    discard: false,
                });
            }
        }
        VideoIndex::from_packets(StreamInfo::for_tests(64, 25), &packets).unwrap()
    }

    fn same(a: &VideoIndex, b: &VideoIndex) {
        assert_eq!(a.frames, b.frames);
        assert_eq!(a.seek_points, b.seek_points);
        assert_eq!(a.packet_pts_list(), b.packet_pts_list());
        assert_eq!((a.packet_count, a.keyframe_count, a.identity), (b.packet_count, b.keyframe_count, b.identity));
        assert_eq!((a.duration_s, a.avg_fps, a.start_time_s), (b.duration_s, b.avg_fps, b.start_time_s));
        assert_eq!(a.stream.codec, b.stream.codec);
        assert_eq!(a.stream.orientation, b.stream.orientation);
        assert_eq!(a.stream.sample_aspect_ratio, b.stream.sample_aspect_ratio);
        assert_eq!(a.packet_by_pts(5), b.packet_by_pts(5));
    }

    #[test]
    fn an_entry_reads_back_as_the_same_index() {
        let key = ContentKey([7; 16]);
        let index = index();
        same(&index, &decode(&encode(&index, &key), &key).unwrap());
        // A phone video's display matrix (a quarter turn) is kept, and read again on load.
        let mut turned = self::index();
        let quarter = [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30];
        turned.stream.orientation = crate::engine::ffmpeg::Orientation::from_display_matrix(Some(&quarter));
        turned.stream.sample_aspect_ratio = (64, 45);
        assert_eq!(turned.stream.orientation.turned_size((64, 48)), (48, 64));
        same(&turned, &decode(&encode(&turned, &key), &key).unwrap());
    }

    #[test]
    fn damaged_stale_or_foreign_entries_are_refused() {
        let key = ContentKey([7; 16]);
        let bytes = encode(&index(), &key);
        assert!(decode(&bytes, &ContentKey([8; 16])).is_none(), "another file's entry");
        for cut in [0, 10, HEAD, HEAD + 16, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], &key).is_none(), "truncated at {cut}");
        }
        for at in [0, 9, 20, 40, bytes.len() / 2, bytes.len() - 3] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped, &key).is_none(), "bit flipped at {at}");
        }
        let mut old = bytes.clone();
        old[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&old, &key).is_none(), "another version");
    }

    #[test]
    fn a_sound_checksum_over_unsound_content_is_still_refused() {
        // A frame pointing at a seek point that does not exist: the checksum matches (it is
        // recomputed), the index check refuses it.
        let key = ContentKey([1; 16]);
        let mut index = index();
        index.frames[3].seek = SeekTarget::Point(99);
        assert!(decode(&encode(&index, &key), &key).is_none());
    }

    #[test]
    fn the_key_changes_with_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.bin");
        std::fs::write(&path, vec![1u8; 3 << 20]).unwrap();
        let a = ContentKey::of(&path).unwrap();
        assert_eq!(a, ContentKey::of(&path).unwrap());
        // Same size, the last byte changed, modification time put back: the tail digest differs.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() = 2;
        std::fs::write(&path, &bytes).unwrap();
        File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_ne!(a, ContentKey::of(&path).unwrap());
    }

    #[test]
    fn the_directory_is_pruned_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let index = index();
        let keys: Vec<ContentKey> = (0..4u8).map(|k| ContentKey([k; 16])).collect();
        let size = encode(&index, &keys[0]).len() as u64;
        for (age, key) in keys.iter().enumerate() {
            save(dir.path(), key, &index, u64::MAX).unwrap();
            let t = SystemTime::now() - std::time::Duration::from_secs(100 - age as u64);
            File::options().write(true).open(entry_path(dir.path(), key)).unwrap().set_modified(t).unwrap();
        }
        // Reading the oldest makes it the newest; a bound of two entries drops keys 1 and 2.
        assert!(load(dir.path(), &keys[0]).is_some());
        prune(dir.path(), 2 * size);
        let kept: Vec<bool> = keys.iter().map(|k| entry_path(dir.path(), k).exists()).collect();
        assert_eq!(kept, [true, false, false, true]);
    }
}
