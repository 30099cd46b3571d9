//! Test videos and references shared by the integration tests.
//!
//! Every generated frame carries its source frame number as a 16-bit barcode (black and white
//! columns across the top half), over moving texture that makes encoders use P- and B-frames.
//! A decoded frame's barcode says which source frame it is, independently of any timestamp, so
//! a wrong frame cannot pass. The byte reference is the `ffmpeg` CLI's own sequential decode to
//! rgb24 with no frame dropped or duplicated (`-fps_mode passthrough`).
#![allow(dead_code)]

pub mod daemon;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const W: u32 = 192;
pub const H: u32 = 128;
/// h264 with open GOPs: leading B-frames of each GOP reference the previous GOP.
pub const OPEN_GOP_H264: [&str; 6] = [
    "-c:v",
    "libx264",
    "-x264-params",
    "open-gop=1:keyint=12:min-keyint=12:bframes=3:scenecut=0",
    "-pix_fmt",
    "yuv420p",
];

const BITS: u32 = 16;
const BAR_H: u32 = 56;

/// Grey source frame `n`: barcode on top, texture that moves with `n` below.
pub fn source_frame(n: u32) -> Vec<u8> {
    let mut f = vec![0u8; (W * H) as usize];
    let col_w = W / BITS;
    for y in 0..H {
        for x in 0..W {
            let v = if y < BAR_H {
                let bit = (x / col_w).min(BITS - 1);
                if (n >> (BITS - 1 - bit)) & 1 == 1 {
                    235
                } else {
                    16
                }
            } else {
                let t = n as i64;
                (((x as i64 * 3 + t * 4) % 200 + (y as i64 * 5 + t * 2) % 55) % 256) as u8
            };
            f[(y * W + x) as usize] = v;
        }
    }
    f
}

/// Read the barcode from a decoded RGB24 frame of size W x H.
pub fn barcode(rgb: &[u8]) -> u32 {
    let col_w = W / BITS;
    let mut n = 0;
    for bit in 0..BITS {
        let x0 = bit * col_w + col_w / 4;
        let x1 = bit * col_w + 3 * col_w / 4;
        let (mut sum, mut count) = (0u64, 0u64);
        for y in 8..BAR_H - 8 {
            for x in x0..x1 {
                let i = ((y * W + x) * 3) as usize;
                sum += rgb[i] as u64 + rgb[i + 1] as u64 + rgb[i + 2] as u64;
                count += 3;
            }
        }
        n = (n << 1) | ((sum / count > 128) as u32);
    }
    n
}

/// A scratch directory for one test's videos.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("framesrv-test-").tempdir().expect("temp dir")
}

/// Encode `frames` barcode frames at `fps` with extra ffmpeg output arguments into `out`.
pub fn encode(out: &Path, frames: u32, fps: u32, args: &[&str]) -> PathBuf {
    encode_with_input(out, frames, fps, &[], args)
}

/// Like [`encode`], with extra inputs (e.g. an audio source) placed after the raw video input.
pub fn encode_with_input(out: &Path, frames: u32, fps: u32, extra_inputs: &[&str], args: &[&str]) -> PathBuf {
    let size = format!("{W}x{H}");
    let rate = fps.to_string();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", &size, "-r", &rate, "-i", "-"]);
    cmd.args(extra_inputs);
    cmd.args(args);
    cmd.arg(out);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("ffmpeg must be installed (bash scripts/dev.sh setup)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for n in 0..frames {
            stdin.write_all(&source_frame(n)).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "ffmpeg failed for {}: {}",
        out.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out.to_path_buf()
}

/// Run ffmpeg with arbitrary arguments (cuts, remuxes).
pub fn ffmpeg(args: &[&str]) {
    let output = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output().unwrap();
    assert!(output.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The ffmpeg CLI's sequential decode of the video stream: every frame, rgb24, no frame
/// dropped or duplicated.
pub fn reference_frames(path: &Path) -> Vec<Vec<u8>> {
    reference_frames_as(path, "rgb24", 3)
}

pub fn reference_frames_as(path: &Path, pix_fmt: &str, bpp: usize) -> Vec<Vec<u8>> {
    reference_frames_with(path, &[], pix_fmt, bpp)
}

/// [`reference_frames_as`] with options before the input (`-noautorotate`: as coded, where the
/// CLI would turn the pictures as the display matrix says).
pub fn reference_frames_with(path: &Path, input_options: &[&str], pix_fmt: &str, bpp: usize) -> Vec<Vec<u8>> {
    reference_frames_sized(path, input_options, pix_fmt, W as usize * H as usize * bpp)
}

/// [`reference_frames_with`] for a video of another size: `frame` bytes per frame.
pub fn reference_frames_sized(path: &Path, input_options: &[&str], pix_fmt: &str, frame: usize) -> Vec<Vec<u8>> {
    reference_frames_sized_at(path, input_options, &[], pix_fmt, frame)
}

fn reference_frames_sized_at(
    path: &Path,
    input_options: &[&str],
    output_options: &[&str],
    pix_fmt: &str,
    frame: usize,
) -> Vec<Vec<u8>> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(input_options)
        .arg("-i")
        .arg(path)
        .args(["-map", "0:v:0", "-fps_mode", "passthrough"])
        .args(output_options)
        .args(["-f", "rawvideo", "-pix_fmt", pix_fmt, "-"])
        .output()
        .unwrap();
    assert!(output.stdout.len().is_multiple_of(frame), "reference decode of {} is not whole frames", path.display());
    output.stdout.chunks(frame).map(|c| c.to_vec()).collect()
}

/// The frames `indices` (ascending) of the ffmpeg CLI's sequential decode, rgb24, `frame` bytes
/// each: for long videos, whose every frame would not fit in memory.
pub fn reference_frames_at(path: &Path, indices: &[usize], frame: usize) -> Vec<Vec<u8>> {
    reference_frames_at_as(path, indices, "rgb24", frame)
}

/// [`reference_frames_at`] in `pix_fmt`.
pub fn reference_frames_at_as(path: &Path, indices: &[usize], pix_fmt: &str, frame: usize) -> Vec<Vec<u8>> {
    // A few dozen frames per decode: FFmpeg's expression parser does not take hundreds.
    let mut frames = Vec::new();
    for some in indices.chunks(50) {
        let select: Vec<String> = some.iter().map(|i| format!("eq(n\\,{i})")).collect();
        let filter = format!("select={}", select.join("+"));
        let count = some.len().to_string();
        frames.extend(reference_frames_sized_at(path, &[], &["-vf", &filter, "-frames:v", &count], pix_fmt, frame));
    }
    assert_eq!(frames.len(), indices.len(), "the reference decode of {} lacks frames", path.display());
    frames
}

/// A deterministic pseudo-random sequence (no RNG state shared between tests).
pub fn shuffled(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        })
        .collect()
}

/// A VFR mkv of `frames` barcode frames whose intervals alternate 70 ms and 30 ms: frame i is
/// shown at `i * 0.05 + 0.02 * (i % 2)` s.
pub fn vfr_video(out: &Path, frames: u32) -> PathBuf {
    encode(
        out,
        frames,
        25,
        &[
            "-vf",
            "settb=1/1000,setpts=(N*0.05+0.02*mod(N\\,2))/TB",
            "-fps_mode",
            "passthrough",
            "-enc_time_base",
            "1:1000",
            "-c:v",
            "libx264",
            "-bf",
            "2",
            "-g",
            "10",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

/// The size of the second half of [`size_change_video`].
pub const CHANGED: (u32, u32) = (288, 192);

/// An MPEG-TS whose picture size changes mid-stream, as in a broadcast capture or files
/// concatenated as bytes: `frames` barcode frames at W x H, then `frames` more (barcodes
/// `frames..2 * frames`) at [`CHANGED`], with timestamps that go on.
pub fn size_change_video(out: &Path, frames: u32) -> PathBuf {
    let dir = out.parent().unwrap();
    let h264 = ["-c:v", "libx264", "-bf", "2", "-g", "8", "-pix_fmt", "yuv420p", "-f", "mpegts"];
    let first = encode(&dir.join("first-half.ts"), frames, 25, &h264);
    let scale = format!("select=gte(n\\,{frames}),setpts=N/25/TB,scale={}:{}", CHANGED.0, CHANGED.1);
    // Past the first half's last pts (B-frames delay it by two frames).
    let offset = format!("{}", frames as f64 / 25.0 + 0.5);
    let mut second_args = vec!["-vf", &scale, "-output_ts_offset", &offset];
    second_args.extend(h264);
    let second = encode(&dir.join("second-half.ts"), 2 * frames, 25, &second_args);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.extend(std::fs::read(&second).unwrap());
    std::fs::write(out, bytes).unwrap();
    std::fs::remove_file(first).unwrap();
    std::fs::remove_file(second).unwrap();
    out.to_path_buf()
}

/// `mp4`'s H.264 stream copied out as a raw `.h264` at `out`: a file without timestamps, indexed
/// by decoding it whole (of [`long_video`], a pass of a second or so).
pub fn raw_h264(mp4: &Path, out: &Path) -> PathBuf {
    ffmpeg(&["-i", mp4.to_str().unwrap(), "-c", "copy", "-bsf:v", "h264_mp4toannexb", out.to_str().unwrap()]);
    out.to_path_buf()
}

/// `seconds` of `size` testsrc2 at 30 fps as a raw H.264 stream (what many cameras write: no
/// timestamps, so its frames are counted by a decode pass when it is first opened), a keyframe
/// every `gop` frames.
pub fn raw_camera(out: &Path, size: &str, seconds: u32, gop: u32) -> PathBuf {
    let source = format!("testsrc2=size={size}:rate=30:duration={seconds}");
    let gop = gop.to_string();
    let path = out.to_str().unwrap();
    let encode = ["-c:v", "libx264", "-preset", "ultrafast", "-g", &gop, "-pix_fmt", "yuv420p"];
    ffmpeg(&[&["-f", "lavfi", "-i", &source][..], &encode, &["-f", "h264", path]].concat());
    out.to_path_buf()
}

/// One GOP of 900 960x540 P-frames: a request near its end keeps a decoder busy for a second or
/// so (the small barcode videos decode too fast to hold it).
pub fn long_video(media: &Path) -> PathBuf {
    let long = media.join("long.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=960x540:rate=30:duration=30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "900",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        long.to_str().unwrap(),
    ]);
    long
}
