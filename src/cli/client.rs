//! The client commands: `info`, `ls`, `get`, `stats` against a running daemon. Errors print the
//! gRPC status and message and exit non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{connect, Command, ServerArg};
use crate::proto::v1 as pb;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Png,
    Jpeg,
    Raw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Pixels {
    Rgb24,
    Bgr24,
    Rgba,
    Gray8,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub video: String,
    /// Frame index; negative counts from the end.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "time", required_unless_present = "time")]
    pub index: Option<i64>,
    /// Time in seconds from the first frame.
    #[arg(long)]
    pub time: Option<f64>,
    /// Output encoding; by default taken from the file name (.png, .jpg), else raw.
    #[arg(long)]
    pub format: Option<Format>,
    #[arg(long, value_enum, default_value = "rgb24")]
    pub pixel_format: Pixels,
    /// Fit inside WxH, keeping the aspect ratio (never upscales), like 640x360.
    #[arg(long)]
    pub max_size: Option<String>,
    /// JPEG quality 1..100.
    #[arg(long, default_value_t = 0)]
    pub quality: u32,
    /// Out of range gives the nearest frame instead of an error.
    #[arg(long)]
    pub clamp: bool,
    /// Turned as the video's display matrix says (phones' rotate tag), as players show it.
    #[arg(long)]
    pub upright: bool,
    /// Where to write the frame.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub server: ServerArg,
}

pub(crate) fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("--max-size {s:?}: expected WxH like 640x360"))?;
    let parse = |v: &str| v.trim().parse::<u32>().map_err(|_| format!("--max-size {s:?}: expected WxH like 640x360"));
    Ok((parse(w)?, parse(h)?))
}

/// The gRPC metadata header that names the video a call is for: load balancers hash on it to
/// pin each video to one replica (see `deploy/haproxy/haproxy.cfg`).
pub const VIDEO_HEADER: &str = "x-framesrv-video";

/// A request carrying the token in `FRAMESRV_TOKEN`, if any, as `authorization: Bearer`.
/// (An environment variable rather than a flag: command lines are visible to every user.)
pub fn request<T>(message: T) -> tonic::Request<T> {
    static TOKEN: std::sync::OnceLock<Option<tonic::metadata::AsciiMetadataValue>> = std::sync::OnceLock::new();
    let token = TOKEN.get_or_init(|| {
        let token = std::env::var("FRAMESRV_TOKEN").ok().filter(|t| !t.is_empty())?;
        format!("Bearer {token}").parse().ok()
    });
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token.clone());
    }
    request
}

/// A request for `video`, carrying [`VIDEO_HEADER`] (and the token).
pub fn for_video<T>(message: T, video: &str) -> tonic::Request<T> {
    let mut request = request(message);
    if let Ok(value) = video_key(video).parse() {
        request.metadata_mut().insert(VIDEO_HEADER, value);
    }
    request
}

/// The header's value: the name percent-encoded except letters, digits, `-._~` and `/`, the
/// way it appears in an HTTP frame URL's path (metadata values are ASCII, names need not be).
pub fn video_key(video: &str) -> String {
    let mut out = String::with_capacity(video.len());
    for b in video.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn run_async(command: Command) -> Result<(), String> {
    match command {
        Command::Info { video, while_indexing, server } => {
            let info = connect(&server.server)
                .await?
                .get_video_info(for_video(pb::GetVideoInfoRequest { video: video.clone(), while_indexing }, &video))
                .await
                .map_err(status_text)?
                .into_inner();
            println!("video:               {}", info.video);
            if info.indexing {
                println!("indexing:            still (what follows is of the frames counted so far)");
            }
            println!("frames:              {}", info.frame_count);
            println!("size:                {}x{}", info.width, info.height);
            if info.sample_aspect_ratio != "1:1" {
                println!("pixel shape:         {} (shown {} wide)", info.sample_aspect_ratio, shown_width(&info));
            }
            if info.display_rotation != 0.0 {
                println!(
                    "display rotation:    {} degrees clockwise (--upright turns frames so)",
                    info.display_rotation
                );
            }
            println!("duration:            {:.3} s", info.duration_s);
            println!("average fps:         {:.3}", info.avg_fps);
            println!("variable frame rate: {}", info.variable_frame_rate);
            println!("keyframes:           {}", info.keyframe_count);
            println!("codec:               {} ({})", info.codec, info.pixel_format);
            println!("container:           {}", info.container);
            println!("start time:          {:.3} s", info.start_time_s);
            println!("frames found by:     {}", info.frame_identity);
        }
        Command::Ls { prefix, server } => {
            let list = connect(&server.server)
                .await?
                .list_videos(request(pb::ListVideosRequest { prefix }))
                .await
                .map_err(status_text)?
                .into_inner();
            for v in list.videos {
                println!("{v}");
            }
        }
        Command::Stats { server } => {
            let s = connect(&server.server)
                .await?
                .get_stats(request(pb::GetStatsRequest {}))
                .await
                .map_err(status_text)?
                .into_inner();
            println!(
                "cache:          {} / {} bytes in {} frames",
                s.cache_bytes, s.cache_capacity_bytes, s.cache_entries
            );
            println!("hits / misses:  {} / {}", s.cache_hits, s.cache_misses);
            println!("joined:         {} (misses that waited on a decode already under way)", s.joined);
            println!("evictions:      {}", s.cache_evictions);
            println!("not cached:     {}", s.cache_rejected);
            println!("open decoders:  {}", s.open_decoders);
            println!("seeks:          {}", s.seeks);
            println!("frames decoded: {}", s.frames_decoded);
            println!("abandoned:      {} (requests gone before their decode started)", s.abandoned);
            println!("videos indexed: {} ({} being indexed now)", s.videos_indexed, s.videos_indexing);
            println!("requests:       {}", s.requests);
        }
        Command::Get(args) => {
            let format = args.format.unwrap_or_else(|| {
                match args.output.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
                    Some("png") => Format::Png,
                    Some("jpg") | Some("jpeg") => Format::Jpeg,
                    _ => Format::Raw,
                }
            });
            let (max_width, max_height) = match &args.max_size {
                Some(s) => parse_size(s)?,
                None => (0, 0),
            };
            let target = match (args.index, args.time) {
                (Some(i), _) => pb::frame_request::Target::Index(i),
                (None, Some(t)) => pb::frame_request::Target::TimeS(t),
                (None, None) => return Err("give --index N or --time S".into()),
            };
            let request = pb::FrameRequest {
                video: args.video.clone(),
                target: Some(target),
                output: Some(pb::OutputSpec {
                    encoding: match format {
                        Format::Raw => pb::Encoding::Raw,
                        Format::Png => pb::Encoding::Png,
                        Format::Jpeg => pb::Encoding::Jpeg,
                    } as i32,
                    pixel_format: match args.pixel_format {
                        Pixels::Rgb24 => pb::PixelFormat::Rgb24,
                        Pixels::Bgr24 => pb::PixelFormat::Bgr24,
                        Pixels::Rgba => pb::PixelFormat::Rgba,
                        Pixels::Gray8 => pb::PixelFormat::Gray8,
                    } as i32,
                    max_width,
                    max_height,
                    jpeg_quality: args.quality,
                    upright: args.upright,
                }),
                clamp: args.clamp,
                keep_behind: None,
            };
            let request = for_video(request, &args.video);
            let frame =
                connect(&args.server.server).await?.request_frame(request).await.map_err(status_text)?.into_inner();
            std::fs::write(&args.output, &frame.data)
                .map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
            eprintln!(
                "frame {} at {:.3} s ({}x{}, {} bytes{}) -> {}",
                frame.index,
                frame.time_s,
                frame.width,
                frame.height,
                frame.data.len(),
                if frame.cache_hit { ", from cache" } else { "" },
                args.output.display()
            );
        }
        Command::Token => {
            use rand::RngCore;
            let mut bytes = [0u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("token (give it to the client, as FRAMESRV_TOKEN or `authorization: Bearer`):\n  {token}");
            println!("line for auth.tokens_file (the daemon keeps only this hash):");
            println!("  {}", crate::server::auth::token_line(&token));
        }
        Command::Hashes(args) => super::jobs::hashes(args).await?,
        Command::Dups(args) => super::jobs::dups(args).await?,
        Command::Storyboard(args) => super::jobs::storyboard(args).await?,
        Command::Clip(args) => super::jobs::clip(args).await?,
        Command::Serve(_) => unreachable!("dispatched in cli::main"),
    }
    Ok(())
}

pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("framesrv: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_async(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("framesrv: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The width a player shows a video of non-square pixels at (`sample_aspect_ratio` "num:den").
fn shown_width(info: &pb::VideoInfo) -> u64 {
    let ratio = info
        .sample_aspect_ratio
        .split_once(':')
        .and_then(|(n, d)| Some((n.parse::<u64>().ok()?, d.parse::<u64>().ok()?)));
    match ratio {
        Some((n, d)) if d > 0 => (u64::from(info.width) * n + d / 2) / d,
        _ => u64::from(info.width),
    }
}
