//! The index builder over arbitrary bytes, through FFmpeg's demuxers with the daemon's own
//! whitelist (`MediaFile::open`): a demux pass, or a decode pass when packets carry no usable
//! timestamps. It must answer an error or a sound index, never panic or hang.
//!
//! The first byte picks the file's extension (FFmpeg's probe weighs it: a raw `.h264` is only
//! recognised with one); the rest is the file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use framesrv::engine::video::build_index;
use libfuzzer_sys::fuzz_target;

/// Must match the seed corpus's first bytes (`fuzz/seed.sh`).
const EXTENSIONS: &[&str] = &["mp4", "mkv", "avi", "webm", "h264", "ts", "mov", "hevc", "flv", "ivf", "mpg", "nut"];

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("framesrv-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let ext = EXTENSIONS[pick as usize % EXTENSIONS.len()];
    let path = scratch().join(format!("input.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    if let Ok(index) = build_index(&path, "fuzz") {
        assert!(index.frame_count() > 0, "an index without frames was served");
        framesrv_fuzz::check_built(&index);
        framesrv_fuzz::check_queries(&index, bytes.get(..512).unwrap_or(bytes));
    }
});
