//! The client commands for work over many frames: `hashes`, `dups`, `storyboard`, `clip`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::client::{for_video, parse_size, status_text};
use super::{connect, ServerArg};
use crate::proto::v1 as pb;

#[derive(Debug, Args)]
pub struct HashesArgs {
    pub video: String,
    /// Frames START:STOP (stop exclusive, negative from the end); default every frame.
    #[arg(long, allow_hyphen_values = true)]
    pub range: Option<String>,
    /// Also the MD5 of each frame's RGB24 bytes.
    #[arg(long)]
    pub md5: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct DupsArgs {
    pub video: String,
    /// Largest aHash Hamming distance that still matches; 0: identical pixels only.
    #[arg(long, default_value_t = 4)]
    pub max_distance: u32,
    /// Shortest repeated run reported as a loop.
    #[arg(long, default_value_t = 25)]
    pub min_loop: u32,
    /// Match against this video instead of against itself.
    #[arg(long)]
    pub other: Option<String>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct StoryboardArgs {
    pub video: String,
    #[arg(long, default_value_t = 50)]
    pub tiles: u32,
    /// Tile width in pixels (the height keeps the aspect ratio).
    #[arg(long, default_value_t = 160)]
    pub tile_width: u32,
    /// Tiles per row (0: 10).
    #[arg(long, default_value_t = 0)]
    pub columns: u32,
    /// The exact frame at each evenly spaced time instead of the nearest keyframe.
    #[arg(long)]
    pub exact: bool,
    /// Tiles turned as the video's display matrix says (phones' rotate tag), as players show it.
    #[arg(long)]
    pub upright: bool,
    /// Where to write the JPEG.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClipFormat {
    /// H.264 in fragmented MP4.
    Mp4,
    /// Lossless FFV1 RGB in Matroska.
    Mkv,
}

#[derive(Debug, Args)]
pub struct ClipArgs {
    pub video: String,
    /// Frames START:STOP (stop exclusive, negative from the end).
    #[arg(long, allow_hyphen_values = true, conflicts_with = "time", required_unless_present = "time")]
    pub range: Option<String>,
    /// Seconds START:STOP from the first frame.
    #[arg(long)]
    pub time: Option<String>,
    /// By default from the file name: .mkv is lossless FFV1, anything else MP4.
    #[arg(long)]
    pub format: Option<ClipFormat>,
    /// Fit inside WxH, like 640x360.
    #[arg(long)]
    pub max_size: Option<String>,
    /// x264 constant rate factor (0: 23).
    #[arg(long, default_value_t = 0)]
    pub crf: u32,
    /// x264 preset (default veryfast).
    #[arg(long, default_value = "")]
    pub preset: String,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub server: ServerArg,
}

/// `A:B` as two numbers.
fn pair<T: std::str::FromStr>(flag: &str, s: &str) -> Result<(T, T), String> {
    let bad = || format!("--{flag} {s:?}: expected START:STOP");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

fn index_range(s: &str) -> Result<pb::IndexRange, String> {
    let (start, stop) = pair::<i64>("range", s)?;
    Ok(pb::IndexRange { start, stop, step: 1 })
}

pub async fn hashes(args: HashesArgs) -> Result<(), String> {
    let selection = match &args.range {
        Some(r) => Some(pb::frame_hashes_request::Selection::Range(index_range(r)?)),
        None => None,
    };
    let req = pb::FrameHashesRequest { video: args.video.clone(), selection, md5: args.md5 };
    let mut stream = connect(&args.server.server)
        .await?
        .get_frame_hashes(for_video(req, &args.video))
        .await
        .map_err(status_text)?
        .into_inner();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "index\ttime_s\tahash\tdhash{}", if args.md5 { "\tmd5" } else { "" });
    while let Some(h) = stream.message().await.map_err(status_text)? {
        let md5: String = h.md5.iter().map(|b| format!("{b:02x}")).collect();
        let tail = if args.md5 { format!("\t{md5}") } else { String::new() };
        let _ = writeln!(out, "{}\t{:.6}\t{:016x}\t{:016x}{tail}", h.index, h.time_s, h.ahash, h.dhash);
    }
    Ok(())
}

pub async fn dups(args: DupsArgs) -> Result<(), String> {
    let req = pb::FindDuplicatesRequest {
        video: args.video.clone(),
        max_distance: args.max_distance,
        min_loop_frames: args.min_loop,
        other_video: args.other.clone().unwrap_or_default(),
    };
    let report = connect(&args.server.server)
        .await?
        .find_duplicates(for_video(req, &args.video))
        .await
        .map_err(status_text)?
        .into_inner();
    let other = if args.other.is_some() { "the other video's " } else { "" };
    println!("{} loops", report.loops.len());
    for l in &report.loops {
        println!(
            "  frames {}..{} repeat at {other}{}..{} ({} frames, mean aHash distance {:.2})",
            l.first_start,
            l.first_start + l.length,
            l.second_start,
            l.second_start + l.length,
            l.length,
            l.mean_distance
        );
    }
    println!("{} groups of repeated frames", report.groups.len());
    for g in &report.groups {
        let list = |v: &[i64]| {
            let shown: Vec<String> = v.iter().take(12).map(|i| i.to_string()).collect();
            let more = if v.len() > 12 { format!(" … ({} in all)", v.len()) } else { String::new() };
            format!("{}{more}", shown.join(" "))
        };
        let kind = if g.exact { "identical" } else { "similar" };
        let others = if g.other_indices.is_empty() {
            String::new()
        } else {
            format!("; other video: {}", list(&g.other_indices))
        };
        println!("  {kind}: {}{others}", list(&g.indices));
    }
    Ok(())
}

pub async fn storyboard(args: StoryboardArgs) -> Result<(), String> {
    let req = pb::StoryboardRequest {
        video: args.video.clone(),
        tiles: args.tiles,
        tile_width: args.tile_width,
        tile_height: 0,
        columns: args.columns,
        exact: args.exact,
        jpeg_quality: 0,
        upright: args.upright,
    };
    let board = connect(&args.server.server)
        .await?
        .get_storyboard(for_video(req, &args.video))
        .await
        .map_err(status_text)?
        .into_inner();
    std::fs::write(&args.output, &board.image).map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    eprintln!(
        "{} tiles, {}x{} in {} columns x {} rows -> {}",
        board.tiles.len(),
        board.width,
        board.height,
        board.columns,
        board.rows,
        args.output.display()
    );
    println!("tile\tindex\ttime_s\tx\ty\twidth\theight");
    for (t, tile) in board.tiles.iter().enumerate() {
        println!("{t}\t{}\t{:.3}\t{}\t{}\t{}\t{}", tile.index, tile.time_s, tile.x, tile.y, tile.width, tile.height);
    }
    Ok(())
}

pub async fn clip(args: ClipArgs) -> Result<(), String> {
    let selection = match (&args.range, &args.time) {
        (Some(r), _) => pb::clip_request::Selection::Range(index_range(r)?),
        (None, Some(t)) => {
            let (start_s, stop_s) = pair::<f64>("time", t)?;
            pb::clip_request::Selection::TimeRange(pb::TimeRange { start_s, stop_s })
        }
        (None, None) => return Err("give --range START:STOP or --time START:STOP".into()),
    };
    let mkv = args.output.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("mkv"));
    let format = match args.format.unwrap_or(if mkv { ClipFormat::Mkv } else { ClipFormat::Mp4 }) {
        ClipFormat::Mp4 => pb::ClipFormat::Mp4H264,
        ClipFormat::Mkv => pb::ClipFormat::MkvFfv1,
    };
    let (max_width, max_height) = match &args.max_size {
        Some(s) => parse_size(s)?,
        None => (0, 0),
    };
    let req = pb::ClipRequest {
        video: args.video.clone(),
        selection: Some(selection),
        format: format as i32,
        output: Some(pb::OutputSpec { max_width, max_height, ..Default::default() }),
        crf: args.crf,
        preset: args.preset,
    };
    let started = std::time::Instant::now();
    let mut stream = connect(&args.server.server)
        .await?
        .export_clip(for_video(req, &args.video))
        .await
        .map_err(status_text)?
        .into_inner();
    let mut file =
        std::fs::File::create(&args.output).map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    let (mut bytes, mut frames) = (0usize, 0i64);
    while let Some(chunk) = stream.message().await.map_err(status_text)? {
        file.write_all(&chunk.data).map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
        bytes += chunk.data.len();
        frames = chunk.frames;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{frames} frames, {bytes} bytes in {secs:.2} s ({:.0} frames/s) -> {}",
        frames as f64 / secs.max(1e-9),
        args.output.display()
    );
    Ok(())
}
