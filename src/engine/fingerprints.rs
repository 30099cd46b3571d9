//! A video's fingerprint table: computed once by a bulk pass, kept in memory and on disk.
//!
//! The first request for a video's hashes starts one pass over the whole video (lanes on
//! several decoders at the bulk class, see [`bulk`](crate::engine::bulk)) on a task of its
//! own: concurrent requests wait for the same pass, and a client that gives up (or whose
//! deadline passes) does not stop it, so asking again later finds the table. The table is then
//! stored under the daemon's state directory (see [`hashes::table_path`]) and kept in memory
//! for the most recently used videos; after a restart, asking costs one file read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use parking_lot::Mutex;

use crate::engine::bulk;
use crate::engine::decoder::{Luma, RawFrame};
use crate::engine::hashes::{self, Fingerprint, HashTable};
use crate::engine::output::{OutputSpec, PixelFormat};
use crate::engine::pool::{DecoderPool, OpenVideo, VideoId};
use crate::engine::schedule::Class;
use crate::engine::EngineError;
use crate::units::FrameIndex;

type Pending = Shared<BoxFuture<'static, Result<Arc<HashTable>, EngineError>>>;

/// Tables kept in memory (a one-hour video's is about 3.5 MB with md5s).
const TABLES_IN_MEMORY: usize = 64;

pub struct Fingerprints {
    pool: Arc<DecoderPool>,
    /// Where tables are stored; `None`: kept in memory only.
    dir: Option<PathBuf>,
    max_per_video: usize,
    tables: Arc<Mutex<LruCache<VideoId, Arc<HashTable>>>>,
    /// Passes running, by video and whether they compute md5s.
    running: Arc<Mutex<HashMap<(VideoId, bool), Pending>>>,
}

impl Fingerprints {
    pub fn new(pool: Arc<DecoderPool>, dir: Option<PathBuf>, max_per_video: usize) -> Fingerprints {
        let cap = std::num::NonZeroUsize::new(TABLES_IN_MEMORY).unwrap_or(std::num::NonZeroUsize::MIN);
        Fingerprints {
            pool,
            dir,
            max_per_video,
            tables: Arc::new(Mutex::new(LruCache::new(cap))),
            running: Arc::default(),
        }
    }

    /// The table of every frame of `video` (with md5s when `md5`).
    pub async fn table(&self, video: &Arc<OpenVideo>, md5: bool) -> Result<Arc<HashTable>, EngineError> {
        if let Some(t) = self.tables.lock().get(&video.id).filter(|t| t.md5 || !md5) {
            return Ok(t.clone());
        }
        let key = (video.id.clone(), md5);
        let pending = {
            let mut running = self.running.lock();
            match running.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let job = compute(self.pool.clone(), video.clone(), self.dir.clone(), md5, self.max_per_video);
                    let (tables, running_map, id) = (self.tables.clone(), self.running.clone(), video.id.clone());
                    // A task of its own: the pass goes on when the client that started it leaves,
                    // and its table is kept whoever is still waiting.
                    let task = tokio::spawn(async move {
                        let result = job.await;
                        if let Ok(t) = &result {
                            let mut tables = tables.lock();
                            if tables.peek(&id).is_none_or(|old| !old.md5 || t.md5) {
                                tables.put(id.clone(), t.clone());
                            }
                        }
                        running_map.lock().remove(&(id, md5));
                        result
                    });
                    let p = async move { task.await.unwrap_or(Err(EngineError::ShuttingDown)) }.boxed().shared();
                    running.insert(key.clone(), p.clone());
                    p
                }
            }
        };
        pending.await
    }
}

/// Read the stored table, or run the pass and store its result.
async fn compute(
    pool: Arc<DecoderPool>,
    video: Arc<OpenVideo>,
    dir: Option<PathBuf>,
    md5: bool,
    max_per_video: usize,
) -> Result<Arc<HashTable>, EngineError> {
    let count = video.index.frame_count();
    let file = match &dir {
        Some(dir) => {
            let (dir, path) = (dir.clone(), video.id.path.clone());
            tokio::task::spawn_blocking(move || hashes::table_path(&dir, &path)).await.ok().flatten()
        }
        None => None,
    };
    if let Some(file) = file.clone() {
        let stored = tokio::task::spawn_blocking(move || {
            std::fs::read(&file).ok().and_then(|bytes| HashTable::decode(&bytes, count))
        })
        .await
        .ok()
        .flatten();
        if let Some(t) = stored.filter(|t| t.md5 || !md5) {
            tracing::debug!(video = %video.name, "hashes read from the state directory");
            return Ok(Arc::new(t));
        }
    }
    let started = std::time::Instant::now();
    let table = pass(&pool, &video, md5, max_per_video).await?;
    tracing::info!(video = %video.name, frames = count, md5, ms = started.elapsed().as_millis() as u64, "hashed");
    // Stored before anyone is answered, so a table a client has seen survives a restart (a
    // write still in flight when the process is killed was lost).
    if let Some(file) = file {
        let t = table.clone();
        let name = video.name.clone();
        let stored = tokio::task::spawn_blocking(move || hashes::save(&file, &t)).await;
        if let Ok(Err(e)) = stored {
            tracing::warn!(video = %name, error = %e, "could not store the hashes; they stay in memory only");
        }
    }
    Ok(table)
}

/// Fingerprint every frame: lanes taking chunks of GOPs on several decoders, each frame hashed
/// on its decoder thread as it comes out.
async fn pass(
    pool: &Arc<DecoderPool>,
    video: &Arc<OpenVideo>,
    md5: bool,
    max_per_video: usize,
) -> Result<Arc<HashTable>, EngineError> {
    let index = &video.index;
    let frames: Vec<FrameIndex> = (0..index.frame_count() as u32).map(FrameIndex).collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let lanes = bulk::lane_count(cores, max_per_video, frames.len(), index.keyframe_count);
    let chunks = bulk::split_lanes(&frames, bulk::chunk_count(lanes, frames.len()), |i| index.frames[i.get()].seek);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(FrameIndex, Fingerprint)>();
    let sink = || -> Box<dyn FnMut(RawFrame) -> bool + Send> {
        let tx = tx.clone();
        Box::new(move |f: RawFrame| {
            // Native size either way: the luma is the decoded picture's, and the RGB24 frame is
            // converted at the native size.
            let Some(luma) = &f.luma else { return false };
            let fp = hashes::fingerprint(luma, f.spec.width, f.spec.height, md5.then_some(&f.data[..]));
            tx.send((f.index, fp)).is_ok()
        })
    };
    // The luma straight from the decoder (no conversion); RGB24 only for the MD5s. A luma-only
    // frame is GRAY8 at the native size, and is asked for as such (so frames a decode step
    // outputs ahead of the next target are recognised as what it wants).
    let (spec, luma) = if md5 {
        (OutputSpec::default(), Luma::Also)
    } else {
        (OutputSpec { pixel_format: PixelFormat::Gray8, ..OutputSpec::default() }, Luma::Only)
    };
    let run = bulk::run_chunks(pool.clone(), video.clone(), Class::Bulk, (chunks, lanes), (spec, luma), sink).await;
    drop(tx);
    let mut table: Vec<Option<Fingerprint>> = vec![None; frames.len()];
    while let Ok((i, fp)) = rx.try_recv() {
        if let Some(slot) = table.get_mut(i.get()) {
            *slot = Some(fp);
        }
    }
    run?;
    let frames: Option<Vec<Fingerprint>> = table.into_iter().collect();
    let frames = frames.ok_or_else(|| EngineError::DecodeFailed {
        video: video.name.clone(),
        reason: "the hash pass did not produce every frame".into(),
    })?;
    Ok(Arc::new(HashTable { frames, md5 }))
}
