//! The one place framesrv touches FFmpeg.
//!
//! It is also where the few operating-system calls around decoder threads live (returning freed
//! memory, per-thread CPU priority), so that this stays the crate's only `unsafe` module.
//!
//! Everything FFmpeg-shaped lives here: opening a file (locked down to plain local files and a
//! list of video demuxers), reading the video stream's packets, seeking one stream in its own
//! time base, decoding with the send/receive API, and converting decoded pictures to tightly
//! packed pixels (turned upright first where asked: [`Turner`]). The rest of the crate is safe
//! Rust and sees only [`MediaFile`], [`VideoDecoder`], [`DecodedFrame`], [`Converter`],
//! [`Turner`] and [`Planes`] (a decoded picture's planes copied out for the cache, made only
//! here so that their layout always matches their bytes), whose methods cannot be misused to
//! break memory safety.
//!
//! Why the lock-down: a client names a video, and FFmpeg will happily treat a name as a URL
//! (`http:`, `concat:`, `pipe:`), or a probed file as a playlist (ffconcat, HLS) that points at
//! other files. We pass FFmpeg only `file:` URLs of already-resolved paths, allow only the
//! `file` protocol, and allow only demuxers that read a single self-contained video file.
#![allow(unsafe_code)]

use std::os::raw::c_int;
use std::path::Path;
use std::sync::Once;

use ff::codec::packet::Ref as _;
use ff::ffi;
use ffmpeg_next as ff;

use crate::engine::output::PixelFormat;

mod encode;
mod orient;
use crate::units::{Pts, TimeBase};
pub use encode::{ClipCodec, ClipEncoder};
pub use orient::{Orientation, Turner};

/// Demuxers a request may reach. Each reads one self-contained file; playlist and
/// concatenation demuxers (hls, dash, concat, image2 patterns) are deliberately absent.
const FORMAT_WHITELIST: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,h264,hevc,\
flv,ogg,mpeg,m4v,ivf,obu,asf,nut,mxf,mjpeg,gif,apng,yuv4mpegpipe,dv";

/// The largest picture framesrv decodes, in pixels: 8192x8192 (8K UHD is 7680x4320).
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// Refuse a picture larger than [`MAX_PIXELS`], naming its size.
fn too_large(width: u64, height: u64) -> Result<(), FfmpegError> {
    if width * height > MAX_PIXELS {
        return Err(FfmpegError::Open(format!(
            "its video is {width}x{height}, more than the {} megapixels (8192x8192) framesrv decodes",
            MAX_PIXELS >> 20
        )));
    }
    Ok(())
}

/// What `ff::format::input_with_dictionary` does, with picture sizes bounded before anything
/// decodes: a few hundred bytes can declare a 32960x6400 picture, and FFmpeg's stream probing
/// (`avformat_find_stream_info`) decodes a frame of it, a GB (found by the index_build fuzz
/// target). Sizes the header declares are checked after `avformat_open_input`, and the probing
/// decoders get `max_pixels` for sizes only the bitstream tells.
fn open_input(url: &str, opts: ff::Dictionary) -> Result<ff::format::context::Input, FfmpegError> {
    let url = std::ffi::CString::new(url).map_err(|_| FfmpegError::Open("the path holds a NUL".into()))?;
    let max_pixels = std::ffi::CString::new(MAX_PIXELS.to_string()).expect("digits");
    // SAFETY: the pointers handed to FFmpeg are valid for each call: `url` and `max_pixels` are
    // live CStrings; `opts` is disowned into `raw` and owned back (and so freed) right after
    // the call that may replace it. A context `avformat_open_input` returns is owned by
    // `Input::wrap` at once, which closes it on every return below; its streams and their
    // codec parameters are read while it lives. Each per-stream dictionary is freed after use.
    unsafe {
        let mut ps = std::ptr::null_mut();
        let mut raw = opts.disown();
        let res = ffi::avformat_open_input(&mut ps, url.as_ptr(), std::ptr::null_mut(), &mut raw);
        drop(ff::Dictionary::own(raw));
        if res == -libc::ENOENT {
            return Err(FfmpegError::Missing);
        }
        if res < 0 {
            return Err(FfmpegError::Open(ff::Error::from(res).to_string()));
        }
        let input = ff::format::context::Input::wrap(ps);
        let streams = (*ps).nb_streams as usize;
        for i in 0..streams {
            let par = (**(*ps).streams.add(i)).codecpar;
            let (width, height) = ((*par).width.max(0) as u64, (*par).height.max(0) as u64);
            too_large(width, height)?;
        }
        let mut options: Vec<*mut ffi::AVDictionary> = vec![std::ptr::null_mut(); streams];
        for d in options.iter_mut() {
            ffi::av_dict_set(d, c"max_pixels".as_ptr(), max_pixels.as_ptr(), 0);
        }
        let res = ffi::avformat_find_stream_info(ps, options.as_mut_ptr());
        for d in options.iter_mut() {
            ffi::av_dict_free(d);
        }
        if res < 0 {
            return Err(FfmpegError::Open(ff::Error::from(res).to_string()));
        }
        Ok(input)
    }
}

/// Why `path` did not open, when it is a format framesrv does not read (an image, audio, a
/// playlist): FFmpeg only says "Invalid argument" when the format it probed is not allowed.
/// Probed from the file's first bytes alone, without opening it as media (some demuxers open
/// other files). `None` when the format is one framesrv reads, or cannot be told.
fn not_read(path: &Path) -> Option<FfmpegError> {
    use std::io::Read;
    const PROBE_BYTES: usize = 64 << 10;
    let mut head = vec![0u8; PROBE_BYTES + ffi::AVPROBE_PADDING_SIZE as usize];
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = 0;
    while len < PROBE_BYTES {
        match file.read(&mut head[len..PROBE_BYTES]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let name = std::ffi::CString::new(path.file_name()?.as_encoded_bytes()).ok()?;
    let probe = ffi::AVProbeData {
        filename: name.as_ptr(),
        buf: head.as_mut_ptr(),
        buf_size: len as c_int,
        mime_type: std::ptr::null(),
    };
    let mut score = 0;
    // SAFETY: `probe` points at a live name and a buffer of `len` bytes followed by the zeroed
    // padding FFmpeg requires; the returned format, if any, is static.
    let format = unsafe {
        let format = ffi::av_probe_input_format2(&probe, 1, &mut score);
        // A weak guess (damaged or random bytes can look a little like anything) is no answer.
        if format.is_null() || (*format).name.is_null() || score <= ffi::AVPROBE_SCORE_MAX as c_int / 4 {
            return None;
        }
        std::ffi::CStr::from_ptr((*format).name).to_string_lossy().into_owned()
    };
    let allowed: Vec<&str> = FORMAT_WHITELIST.split(',').collect();
    if format.split(',').any(|f| allowed.contains(&f)) {
        return None;
    }
    Some(FfmpegError::Open(format!(
        "its format ({format}) is not one framesrv reads; it reads {}",
        FORMAT_WHITELIST.replace(',', ", ")
    )))
}

#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error("cannot open as a video: {0}")]
    Open(String),
    /// No file at the path (any more).
    #[error("no such file")]
    Missing,
    #[error("the file has no video stream")]
    NoVideoStream,
    #[error("no decoder for codec {0}")]
    NoDecoder(String),
    #[error("this FFmpeg has no {0} encoder")]
    NoEncoder(String),
    #[error("demuxing failed: {0}")]
    Demux(String),
    #[error("seeking failed: {0}")]
    Seek(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("pixel conversion failed: {0}")]
    Convert(String),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Initialise FFmpeg once per process and keep its logging quiet: the daemon reports errors
/// through its own typed errors and `tracing`, not FFmpeg's stderr chatter.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// Give memory FFmpeg has freed back to the operating system.
///
/// FFmpeg allocates through the C allocator, and glibc keeps what a thread frees in that
/// thread's arena for reuse. A closed decoder's picture pool (tens of MB at 1080p) would stay
/// resident in the arena of the thread that ran it, for as long as the process lives; with
/// decoders opened and closed as videos come and go, that is most of the memory beyond the
/// cache. Called when a decoder has closed.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and is thread-safe; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The calling thread's kernel id (0 where there is none to name), for [`set_thread_nice`].
pub fn current_thread_id() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe {
        libc::gettid()
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Set the nice value of thread `tid` of this process (on Linux nice is per thread, and threads
/// a thread creates afterwards, such as FFmpeg's codec threads, inherit it). Returns false where
/// the system does not allow it (lowering a nice value needs CAP_SYS_NICE or RLIMIT_NICE) or on
/// other systems; the caller then runs without CPU priorities.
pub fn set_thread_nice(tid: i32, nice: i32) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes no pointers; PRIO_PROCESS with a thread id changes that one
    // thread's nice value (a thread that has exited is an error return, nothing worse).
    unsafe {
        tid > 0 && libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, nice);
        false
    }
}

/// What the container and codec say about the chosen video stream. Headers are informative
/// only: counts and durations come from the index, never from here.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub codec: String,
    pub container: String,
    pub pixel_format: String,
    pub width: u32,
    pub height: u32,
    pub time_base: TimeBase,
    /// The stream's average frame rate as the container states it (0/0 when unknown).
    pub header_fps: f64,
    /// How its pictures are to be shown (its display matrix).
    pub orientation: Orientation,
    /// The shape of a pixel, width:height (1:1 when square or not stated): anamorphic video
    /// (DVD, broadcast) is shown `width * num / den` wide. As ffprobe reports it.
    pub sample_aspect_ratio: (i32, i32),
}

impl StreamInfo {
    /// The size of a picture as served: turned upright (`upright`) or as coded.
    pub fn shown_size(&self, upright: bool) -> (u32, u32) {
        if upright {
            self.orientation.turned_size((self.width, self.height))
        } else {
            (self.width, self.height)
        }
    }
}

#[cfg(test)]
impl StreamInfo {
    /// An h264-in-mp4 stream of `size` pixels square at `fps` (time base 1/fps), for tests of
    /// the pure logic over indexes.
    pub fn for_tests(size: u32, fps: i32) -> StreamInfo {
        StreamInfo {
            codec: "h264".into(),
            container: "mp4".into(),
            pixel_format: "yuv420p".into(),
            width: size,
            height: size,
            time_base: crate::units::TimeBase { num: 1, den: fps },
            header_fps: fps as f64,
            orientation: Orientation::default(),
            sample_aspect_ratio: (1, 1),
        }
    }
}

/// One packet's bookkeeping as read from the demuxer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    pub duration: i64,
    pub key: bool,
    /// The demuxer says the decoder must decode this packet but not output its frame (mp4 edit
    /// lists mark the frames before the edit's start this way).
    pub discard: bool,
}

/// A packet of the video stream, ready to be decoded.
pub struct VideoPacket {
    packet: ff::Packet,
    pub meta: PacketMeta,
}

impl VideoPacket {
    /// Where the packet starts in the file, when the demuxer knows.
    pub fn byte_position(&self) -> Option<i64> {
        i64::try_from(self.packet.position()).ok().filter(|&p| p >= 0)
    }
}

/// How a demuxer can be asked to go back to a packet it has read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekWays {
    /// By timestamp: the format has timestamps of its own (and usually an index).
    pub timestamp: bool,
    /// By byte position: the demuxer reads on from the next packet boundary after any byte.
    pub byte: bool,
}

/// An open input file positioned somewhere in its video stream.
pub struct MediaFile {
    input: ff::format::context::Input,
    stream_index: usize,
    info: StreamInfo,
}

// SAFETY: an AVFormatContext is not tied to the thread that created it; FFmpeg only forbids
// concurrent use, which `&mut self` on every method that touches it rules out. A MediaFile is
// created on one thread and moved to a decoder thread that owns it from then on.
unsafe impl Send for MediaFile {}

impl MediaFile {
    /// Open `path` (already resolved inside a media root) for reading its best video stream.
    pub fn open(path: &Path) -> Result<MediaFile, FfmpegError> {
        init();
        let path_str = path
            .to_str()
            .filter(|s| !s.contains('\0'))
            .ok_or_else(|| FfmpegError::Open("path is not valid UTF-8".into()))?;
        // The explicit `file:` scheme means FFmpeg never reads any part of the name as another
        // protocol, whatever characters the file name holds.
        let url = format!("file:{path_str}");
        let mut opts = ff::Dictionary::new();
        opts.set("protocol_whitelist", "file");
        opts.set("format_whitelist", FORMAT_WHITELIST);
        // mov: never follow data references to other files.
        opts.set("enable_drefs", "0");
        let mut input = open_input(&url, opts).map_err(|e| not_read(path).unwrap_or(e))?;
        let stream_index =
            input.streams().best(ff::media::Type::Video).map(|s| s.index()).ok_or(FfmpegError::NoVideoStream)?;
        let nb_streams = input.nb_streams() as usize;
        for i in 0..nb_streams {
            if i != stream_index {
                // SAFETY: `i` < nb_streams, so `streams[i]` is a valid AVStream owned by the
                // context we hold mutably; setting `discard` is how FFmpeg documents skipping
                // a stream's packets.
                unsafe {
                    let st = *(*input.as_mut_ptr()).streams.add(i);
                    (*st).discard = ffi::AVDiscard::AVDISCARD_ALL;
                }
            }
        }
        // SAFETY: `stream_index` is the index of one of the context's streams (found above);
        // av_guess_sample_aspect_ratio only reads the context, the stream and its parameters.
        let sar = unsafe {
            let ctx = input.as_mut_ptr();
            ffi::av_guess_sample_aspect_ratio(ctx, *(*ctx).streams.add(stream_index), std::ptr::null_mut())
        };
        let info = {
            let stream = input.stream(stream_index).ok_or(FfmpegError::NoVideoStream)?;
            let params = stream.parameters();
            let codec_id = params.id();
            let tb = stream.time_base();
            let afr = stream.avg_frame_rate();
            // SAFETY: `parameters()` borrows the stream's AVCodecParameters, valid while the
            // input lives; we only read plain integer fields.
            let (width, height, format) = unsafe {
                let p = params.as_ptr();
                ((*p).width.max(0) as u32, (*p).height.max(0) as u32, (*p).format)
            };
            // SAFETY: `format` came from the codec parameters; av_get_pix_fmt_name returns a
            // static string or null for unknown values.
            let pixel_format = unsafe {
                let name = ffi::av_get_pix_fmt_name(std::mem::transmute::<i32, ffi::AVPixelFormat>(format));
                if name.is_null() {
                    "unknown".to_string()
                } else {
                    std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
                }
            };
            // Also what probing found in the bitstream (see `open_input`).
            too_large(u64::from(width), u64::from(height))?;
            // FFmpeg gives every stream a positive time base; an index needs one to compute times.
            if codec_id == ff::codec::Id::None
                || width == 0
                || height == 0
                || tb.numerator() <= 0
                || tb.denominator() <= 0
            {
                return Err(FfmpegError::NoVideoStream);
            }
            let display_matrix = stream
                .side_data()
                .find(|d| d.kind() == ff::codec::packet::side_data::Type::DisplayMatrix)
                .and_then(|d| {
                    let words: Vec<i32> =
                        d.data().chunks_exact(4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
                    <[i32; 9]>::try_from(words.get(..9)?).ok()
                });
            StreamInfo {
                orientation: Orientation::from_display_matrix(display_matrix.as_ref()),
                sample_aspect_ratio: if sar.num > 0 && sar.den > 0 { (sar.num, sar.den) } else { (1, 1) },
                codec: codec_id.name().to_string(),
                container: input.format().name().to_string(),
                pixel_format,
                width,
                height,
                time_base: TimeBase { num: tb.numerator(), den: tb.denominator() },
                header_fps: if afr.denominator() != 0 { f64::from(afr) } else { 0.0 },
            }
        };
        Ok(MediaFile { input, stream_index, info })
    }

    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Whether the codec may show pictures in another order than it decodes them (B-frames), as
    /// probing found (the stream's `video_delay`, ffprobe's `has_b_frames`).
    pub fn reorders(&self) -> bool {
        let Some(stream) = self.input.stream(self.stream_index) else { return false };
        // SAFETY: the parameters are borrowed from the stream, valid while the input lives; a
        // plain integer field is read.
        unsafe { (*stream.parameters().as_ptr()).video_delay > 0 }
    }

    /// The next packet of the video stream, or `None` at the end of the file. A read error in
    /// the middle of a file (truncation, corruption) also ends the stream: what was read before
    /// it is served, nothing after it is guessed.
    pub fn read_packet(&mut self) -> Result<Option<VideoPacket>, FfmpegError> {
        loop {
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {}
                Err(ff::Error::Eof) => return Ok(None),
                Err(ff::Error::Other { errno }) if errno == libc_eagain() => continue,
                Err(_) => return Ok(None),
            }
            if packet.stream() != self.stream_index {
                continue;
            }
            // SAFETY: the packet was just filled by av_read_frame; reading its flags is plain
            // field access.
            let flags = unsafe { (*packet.as_ptr()).flags };
            let meta = PacketMeta {
                pts: packet.pts(),
                dts: packet.dts(),
                duration: packet.duration(),
                key: flags & ffi::AV_PKT_FLAG_KEY != 0,
                discard: flags & ffi::AV_PKT_FLAG_DISCARD != 0,
            };
            return Ok(Some(VideoPacket { packet, meta }));
        }
    }

    /// How this file's demuxer can seek.
    pub fn seek_ways(&self) -> SeekWays {
        // SAFETY: an open input always has its demuxer; its flags are a plain integer field.
        let flags = unsafe { (*(*self.input.as_ptr()).iformat).flags };
        SeekWays { timestamp: flags & ffi::AVFMT_NOTIMESTAMPS == 0, byte: flags & ffi::AVFMT_NO_BYTE_SEEK == 0 }
    }

    /// Move the demuxer to byte `pos` of the file: it reads on from the next packet boundary it
    /// finds there.
    pub fn seek_byte(&mut self, pos: i64) -> Result<(), FfmpegError> {
        self.seek(pos, ffi::AVSEEK_FLAG_BYTE)
    }

    /// Seek the video stream to the last seek point at or before `ts` (stream time base).
    pub fn seek_timestamp(&mut self, ts: i64) -> Result<(), FfmpegError> {
        self.seek(ts, ffi::AVSEEK_FLAG_BACKWARD)
    }

    fn seek(&mut self, target: i64, flags: c_int) -> Result<(), FfmpegError> {
        // SAFETY: the context is valid and exclusively ours; av_seek_frame with a stream index
        // reads `target` in that stream's time base, or as a byte offset (clamped to the file)
        // with AVSEEK_FLAG_BYTE.
        let ret = unsafe { ffi::av_seek_frame(self.input.as_mut_ptr(), self.stream_index as i32, target, flags) };
        if ret < 0 {
            return Err(FfmpegError::Seek(ff::Error::from(ret).to_string()));
        }
        Ok(())
    }

    /// A fresh decoder for this file's video stream.
    pub fn new_decoder(&self, threads: usize) -> Result<VideoDecoder, FfmpegError> {
        let stream = self.input.stream(self.stream_index).ok_or(FfmpegError::NoVideoStream)?;
        let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| FfmpegError::Decode(e.to_string()))?;
        let codec_name = ctx.id().name().to_string();
        let kind = if threads == 1 { ff::codec::threading::Type::None } else { ff::codec::threading::Type::Frame };
        ctx.set_threading(ff::codec::threading::Config { kind, count: threads, ..Default::default() });
        // SAFETY: the context is ours and not yet opened; `max_pixels` is a plain field the
        // decoders read when a picture's size is set, in-band resolution changes included.
        unsafe {
            (*ctx.as_mut_ptr()).max_pixels = MAX_PIXELS as i64;
        }
        let decoder = ctx.decoder().video().map_err(|_| FfmpegError::NoDecoder(codec_name))?;
        Ok(VideoDecoder { decoder, skipping_nonref: false })
    }
}

fn libc_eagain() -> i32 {
    11
}

/// A decoded picture, still in the decoder's pixel format.
pub struct DecodedFrame {
    frame: ff::frame::Video,
}

impl DecodedFrame {
    pub fn pts(&self) -> Option<Pts> {
        self.frame.pts().map(Pts)
    }

    /// FFmpeg's best guess at the presentation time when the frame has no pts of its own.
    pub fn best_effort_timestamp(&self) -> Option<i64> {
        self.frame.timestamp()
    }

    pub fn is_key(&self) -> bool {
        self.frame.is_key()
    }

    pub fn width(&self) -> u32 {
        self.frame.width()
    }

    pub fn height(&self) -> u32 {
        self.frame.height()
    }

    /// A digest of the picture: its pixel format, size, colour matrix and range, and every
    /// byte of its planes that holds a pixel (row padding left out). Two frames with the same
    /// digest convert to the same output; a frame decoded after a seek is recognised by it
    /// in a video whose frames have no timestamps. 64-bit XXH3: it keeps up with the decoder
    /// (tens of microseconds for a 720p frame), and an accidental match is a 2^-64 event.
    pub fn digest(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let format: ffi::AVPixelFormat = self.frame.format().into();
        let colors = Colors::of(&self.frame);
        let (w, h) = (self.width() as c_int, self.height() as c_int);
        for v in [format as i64, i64::from(w), i64::from(h), colors.space as i64, colors.range as i64] {
            hasher.update(&v.to_le_bytes());
        }
        let mut row_bytes = [0 as c_int; 4];
        // SAFETY: av_image_fill_linesizes writes four ints for a format and width; the
        // descriptor is static (or null for an unknown format).
        let (filled, desc) = unsafe {
            (ffi::av_image_fill_linesizes(row_bytes.as_mut_ptr(), format, w), ffi::av_pix_fmt_desc_get(format))
        };
        if filled < 0 || desc.is_null() {
            return hasher.digest();
        }
        // SAFETY: `desc` is non-null and static.
        let palette = unsafe { (*desc).flags & ffi::AV_PIX_FMT_FLAG_PAL as u64 != 0 };
        // SAFETY: the frame is ours and only read.
        let frame = unsafe { self.frame.as_ptr() };
        let planes = if palette { 1 } else { self.frame.planes().min(4) };
        for (plane, &row) in row_bytes.iter().enumerate().take(planes) {
            let rows = self.frame.plane_height(plane);
            // SAFETY: a decoded frame's data[plane], when set, holds `rows` rows `linesize[plane]`
            // bytes apart (negative for bottom-up rows), each at least as long as the pixels of
            // a row; the length read is checked against the stride first.
            unsafe {
                let (data, stride) = ((*frame).data[plane], (*frame).linesize[plane] as isize);
                let row = row as isize;
                if data.is_null() || row <= 0 || row > stride.abs() {
                    continue;
                }
                for r in 0..rows as isize {
                    hasher.update(std::slice::from_raw_parts(data.offset(r * stride), row as usize));
                }
            }
        }
        if palette {
            // SAFETY: a paletted frame's data[1] holds its 256 four-byte palette entries.
            unsafe {
                let data = (*frame).data[1];
                if !data.is_null() {
                    hasher.update(std::slice::from_raw_parts(data, 1024));
                }
            }
        }
        hasher.digest()
    }

    /// The picture's 8-bit luma plane as the codec produced it (Y′ in its coded range, rows
    /// tightly packed), copied into `out`; false for pixel formats without one (RGB, more than
    /// 8 bits, paletted), which need a conversion instead.
    pub fn luma_plane(&self, out: &mut Vec<u8>) -> bool {
        let eight_bit_luma = plain_planes(self.frame.format());
        let (w, h) = (self.width() as usize, self.height() as usize);
        if !eight_bit_luma || w == 0 || h == 0 {
            return false;
        }
        let (stride, plane) = (self.frame.stride(0), self.frame.data(0));
        if stride < w || plane.len() < stride * (h - 1) + w {
            return false;
        }
        out.clear();
        out.reserve(w * h);
        for row in plane.chunks(stride).take(h) {
            out.extend_from_slice(&row[..w]);
        }
        true
    }
}

/// Planar or semi-planar 8-bit YUV and gray, all of them plain memory (no palette, no hardware
/// surface): the formats whose luma plane is handed out as it is, and whose planes the cache
/// may keep instead of converted pixels.
fn plain_planes(format: ff::format::Pixel) -> bool {
    use ff::format::Pixel as P;
    matches!(
        format,
        P::YUV420P
            | P::YUVJ420P
            | P::YUV422P
            | P::YUVJ422P
            | P::YUV444P
            | P::YUVJ444P
            | P::YUV440P
            | P::YUVJ440P
            | P::YUV411P
            | P::YUV410P
            | P::YUVA420P
            | P::NV12
            | P::NV21
            | P::GRAY8
    )
}

/// Bytes past the end of each copied plane, zeroed: SIMD readers load whole vectors.
const PLANE_SLACK: usize = 64;
/// Copied planes start at the same offset from a 64-byte boundary as the decoder's did.
const PLANE_ALIGN: usize = 64;

impl DecodedFrame {
    /// The bytes [`DecodedFrame::copy_planes`] would use, or `None` for pixel formats whose
    /// planes are not kept (see `plain_planes`).
    pub fn planes_len(&self) -> Option<usize> {
        if !plain_planes(self.frame.format()) || self.width() == 0 || self.height() == 0 {
            return None;
        }
        let n = self.frame.planes();
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0;
        for i in 0..n {
            // A negative stride (bottom-up rows) reads back as a huge usize: not kept.
            if self.frame.stride(i) == 0 || self.frame.stride(i) > i32::MAX as usize {
                return None;
            }
            len += PLANE_ALIGN + self.frame.data(i).len() + PLANE_SLACK;
        }
        Some(len)
    }

    /// The picture's planes copied into `buf` (its allocation reused) and wrapped by `share`:
    /// the decoder's pixel format, size and row strides, each plane at the decoder's alignment,
    /// so that converting them ([`Planes::convert`]) gives the bytes converting this frame does.
    /// `None` where [`DecodedFrame::planes_len`] is, or if `share` moved the bytes.
    pub fn copy_planes(&self, mut buf: Vec<u8>, share: impl FnOnce(Vec<u8>) -> bytes::Bytes) -> Option<Planes> {
        let len = self.planes_len()?;
        buf.clear();
        buf.reserve_exact(len);
        let base = buf.as_ptr() as usize;
        let mut offsets = [0usize; 4];
        let mut strides = [0i32; 4];
        for (i, (offset, stride)) in offsets.iter_mut().zip(strides.iter_mut()).enumerate().take(self.frame.planes()) {
            let plane = self.frame.data(i);
            let want = plane.as_ptr() as usize % PLANE_ALIGN;
            let have = (base + buf.len()) % PLANE_ALIGN;
            buf.resize(buf.len() + (want + PLANE_ALIGN - have) % PLANE_ALIGN, 0);
            *offset = buf.len();
            *stride = self.frame.stride(i) as i32;
            buf.extend_from_slice(plane);
            buf.resize(buf.len() + PLANE_SLACK, 0);
        }
        let planes = self.frame.planes();
        let data = share(buf);
        if data.as_ptr() as usize != base || data.len() > len {
            return None;
        }
        // Every plane and its slack must lie inside `data` (they do by construction; checked
        // because `convert` hands these offsets to C).
        for i in 0..planes {
            let rows = self.frame.plane_height(i) as usize;
            if offsets[i] + strides[i] as usize * rows + PLANE_SLACK > data.len() {
                return None;
            }
        }
        Some(Planes {
            data,
            offsets,
            strides,
            planes,
            format: self.frame.format(),
            width: self.width(),
            height: self.height(),
            colors: Colors::of(&self.frame),
        })
    }
}

/// A decoded picture's planes, copied out of the decoder: what the cache keeps instead of
/// converted pixels when they are smaller (4:2:0 is half of RGB), converted again on each hit.
/// Only [`DecodedFrame::copy_planes`] makes one, so the layout always matches the bytes.
pub struct Planes {
    data: bytes::Bytes,
    offsets: [usize; 4],
    strides: [i32; 4],
    planes: usize,
    format: ff::format::Pixel,
    width: u32,
    height: u32,
    colors: Colors,
}

impl std::fmt::Debug for Planes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Planes({:?} {}x{}, {} bytes)", self.format, self.width, self.height, self.data.len())
    }
}

impl Planes {
    /// The memory they hold.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Convert to `format` at `width`x`height` as [`Converter::convert`] does, on this thread
    /// (with a converter kept per thread: hits of one video reuse its swscale context).
    pub fn convert(&self, format: PixelFormat, width: u32, height: u32, out: Vec<u8>) -> Result<Vec<u8>, FfmpegError> {
        thread_local! {
            static CONVERTER: std::cell::RefCell<Converter> = std::cell::RefCell::new(Converter::default());
        }
        let mut src = [std::ptr::null::<u8>(); 4];
        let mut strides = [0i32; 4];
        for i in 0..self.planes {
            src[i] = self.data[self.offsets[i]..].as_ptr();
            strides[i] = self.strides[i];
        }
        let source = Source {
            format: self.format,
            width: self.width,
            height: self.height,
            colors: self.colors,
            data: src,
            strides,
        };
        CONVERTER.with(|c| c.borrow_mut().scale(&source, format, width, height, out))
    }
}

/// A picture for swscale: pointers to planes of `strides[i]` bytes per row.
struct Source {
    format: ff::format::Pixel,
    width: u32,
    height: u32,
    colors: Colors,
    data: [*const u8; 4],
    strides: [i32; 4],
}

/// What a decoded picture says about its colours: the YCbCr matrix and the range of its values.
/// The CLI's conversion reads both from every frame (FFmpeg 5.1's scale filter, whose
/// `in_color_matrix` and `in_range` default to "auto"), so ours must: a BT.709 video (almost
/// every HD camera and phone video is tagged so) converted with swscale's default BT.601 matrix
/// gives other RGB values than the CLI's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Colors {
    space: ffi::AVColorSpace,
    range: ffi::AVColorRange,
}

impl Colors {
    fn of(frame: &ff::frame::Video) -> Colors {
        Colors { space: frame.color_space().into(), range: frame.color_range().into() }
    }

    /// The swscale coefficient table the scale filter picks for `space` ("auto": the frame's
    /// matrix where swscale knows it, BT.601 otherwise).
    fn matrix(self) -> c_int {
        let space = self.space as c_int;
        if !(1..=10).contains(&space) || space == ffi::AVColorSpace::AVCOL_SPC_YCGCO as c_int {
            ffi::AVColorSpace::AVCOL_SPC_BT470BG as c_int
        } else {
            space
        }
    }

    /// Set `context`'s input matrix and range as the scale filter does for a frame of these
    /// colours: the output matrix follows the input's, the output range stays swscale's.
    fn apply(self, context: &mut ff::software::scaling::Context) {
        let (mut inv_table, mut table) = (std::ptr::null_mut(), std::ptr::null_mut());
        let (mut src_range, mut dst_range, mut brightness, mut contrast, mut saturation) = (0, 0, 0, 0, 0);
        // SAFETY: the context is valid and ours; the out-pointers are locals. The coefficient
        // table swscale returns is static.
        unsafe {
            let ctx = context.as_mut_ptr();
            if ffi::sws_getColorspaceDetails(
                ctx,
                &mut inv_table,
                &mut src_range,
                &mut table,
                &mut dst_range,
                &mut brightness,
                &mut contrast,
                &mut saturation,
            ) < 0
            {
                return;
            }
            let coefficients = ffi::sws_getCoefficients(self.matrix());
            if self.range != ffi::AVColorRange::AVCOL_RANGE_UNSPECIFIED {
                src_range = (self.range == ffi::AVColorRange::AVCOL_RANGE_JPEG) as c_int;
            }
            // Like the scale filter, the answer is not checked: swscale refuses details it
            // has no use for (no YCbCr on either side), and the conversion is then its default.
            ffi::sws_setColorspaceDetails(
                ctx,
                coefficients,
                src_range,
                coefficients,
                dst_range,
                brightness,
                contrast,
                saturation,
            );
        }
    }
}

/// A video decoder driven with the send/receive API.
pub struct VideoDecoder {
    decoder: ff::decoder::Video,
    skipping_nonref: bool,
}

// SAFETY: an AVCodecContext may be used from any thread as long as it is used from one at a
// time; `&mut self` on every method guarantees that, and the decoder lives on one thread.
unsafe impl Send for VideoDecoder {}

impl VideoDecoder {
    /// Frames by which frame threading holds the output back behind the packets sent, on top of
    /// the codec's own reordering: the thread count less one when the codec decodes on frame
    /// threads, none otherwise (one thread, or slice threads only).
    pub fn frame_thread_delay(&self) -> usize {
        let threading = self.decoder.threading();
        match threading.kind {
            ff::codec::threading::Type::Frame => threading.count.saturating_sub(1),
            _ => 0,
        }
    }

    /// How many frames after it was decoded a frame may come out: the pictures the codec holds
    /// back to put them in presentation order (its `has_b_frames`, which it raises when the
    /// stream turns out to need more) plus the frame-thread delay.
    pub fn output_delay(&self) -> usize {
        // SAFETY: a plain integer field of our own codec context is read.
        let reorder = unsafe { (*self.decoder.as_ptr()).has_b_frames };
        usize::try_from(reorder).unwrap_or(0) + self.frame_thread_delay()
    }

    /// Decode one packet (or, with `None`, drain the decoder at the end of the stream) and hand
    /// every frame it outputs to `on_frame`. The decoder's output queue is always emptied, so
    /// the next packet can always be sent. With `skip_nonref`, the decoder may skip frames that
    /// no other frame references: they will not be output. Corrupt packets are skipped the way
    /// `ffmpeg` does, so that this decode and a reference sequential decode agree.
    pub fn decode(
        &mut self,
        packet: Option<&VideoPacket>,
        skip_nonref: bool,
        on_frame: &mut dyn FnMut(DecodedFrame),
    ) -> Result<(), FfmpegError> {
        if skip_nonref != self.skipping_nonref {
            // SAFETY: the codec context is ours; skip_frame is read by the decoder at each
            // packet and may be changed between packets.
            unsafe {
                (*self.decoder.as_mut_ptr()).skip_frame =
                    if skip_nonref { ffi::AVDiscard::AVDISCARD_NONREF } else { ffi::AVDiscard::AVDISCARD_DEFAULT };
            }
            self.skipping_nonref = skip_nonref;
        }
        let sent = match packet {
            Some(p) => self.decoder.send_packet(&p.packet),
            None => self.decoder.send_eof(),
        };
        match sent {
            Ok(()) | Err(ff::Error::Eof) => {}
            Err(ff::Error::Other { errno }) if errno == libc_eagain() => {}
            // Invalid data in one packet: like ffmpeg, go on with the next one.
            Err(_) => {}
        }
        loop {
            let mut frame = ff::frame::Video::empty();
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => on_frame(DecodedFrame { frame }),
                Err(ff::Error::Eof) => return Ok(()),
                Err(ff::Error::Other { errno }) if errno == libc_eagain() => return Ok(()),
                Err(e) => return Err(FfmpegError::Decode(e.to_string())),
            }
        }
    }

    /// Forget everything decoded so far (after a seek, or after draining at the end).
    pub fn flush(&mut self) {
        self.decoder.flush();
    }
}

/// Converts decoded pictures to tightly packed pixels of a chosen format and size. Keeps its
/// swscale context between frames and rebuilds it only when the input or output changes.
/// swscale's context is not `Send`-safe to share, so a Converter lives on one thread.
#[derive(Default)]
pub struct Converter {
    scaler: Option<ScalerKey>,
    context: Option<ff::software::scaling::Context>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct ScalerKey {
    src: ffi::AVPixelFormat,
    src_w: u32,
    src_h: u32,
    colors: Colors,
    dst: PixelFormat,
    dst_w: u32,
    dst_h: u32,
}

// SAFETY: a SwsContext holds no thread-affine state; the Converter is owned by a single decoder
// thread and only used through `&mut self`.
unsafe impl Send for Converter {}

pub(crate) fn av_pixel_format(format: PixelFormat) -> ff::format::Pixel {
    match format {
        PixelFormat::Rgb24 => ff::format::Pixel::RGB24,
        PixelFormat::Bgr24 => ff::format::Pixel::BGR24,
        PixelFormat::Rgba => ff::format::Pixel::RGBA,
        PixelFormat::Gray8 => ff::format::Pixel::GRAY8,
    }
}

/// Slack past the end of converted pixels: some SIMD writers store whole vectors at the end of
/// a row.
const OUTPUT_SLACK: usize = 64;

/// The capacity a buffer for [`Converter::convert`] needs: rows as swscale writes them
/// ([`scaled_stride`]) plus slack.
pub fn output_capacity(format: PixelFormat, width: u32, height: u32) -> usize {
    scaled_stride(format, width) * height as usize + OUTPUT_SLACK
}

/// Bytes per row swscale converts into. swscale's SIMD converters work in steps of 8 pixels,
/// and where a row has no room for a last whole step they leave the pixels past the last one
/// unwritten (FFmpeg 5.1's x86 yuv2rgb into tightly packed rows of 854 pixels left the last 6
/// of each row as whatever the memory held). The CLI converts into padded frames, so rows
/// padded to whole steps (16 pixels, 64 bytes) also give exactly its bytes; they are packed
/// tightly afterwards. Widths of 16 pixels and 64 bytes (640, 1280, 1920) need no padding.
fn scaled_stride(format: PixelFormat, width: u32) -> usize {
    ((width as usize).next_multiple_of(16) * format.bytes_per_pixel()).next_multiple_of(64)
}

impl Converter {
    /// Convert `frame` to `format` at `width`x`height`, rows tightly packed, into `out`
    /// (replacing its contents; its allocation is reused when large enough).
    pub fn convert(
        &mut self,
        frame: &DecodedFrame,
        format: PixelFormat,
        width: u32,
        height: u32,
        out: Vec<u8>,
    ) -> Result<Vec<u8>, FfmpegError> {
        // SAFETY: reading the frame's plane pointers and strides; the frame outlives the call.
        let (all_data, all_strides) = unsafe {
            let src = frame.frame.as_ptr();
            ((*src).data, (*src).linesize)
        };
        let data: [*const u8; 4] = std::array::from_fn(|i| all_data[i] as *const u8);
        let strides: [i32; 4] = std::array::from_fn(|i| all_strides[i]);
        let source = Source {
            format: frame.frame.format(),
            width: frame.width(),
            height: frame.height(),
            colors: Colors::of(&frame.frame),
            data,
            strides,
        };
        self.scale(&source, format, width, height, out)
    }

    /// Convert `src` (a decoded frame's planes, or their copy in [`Planes`]).
    fn scale(
        &mut self,
        src: &Source,
        format: PixelFormat,
        width: u32,
        height: u32,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, FfmpegError> {
        let key = ScalerKey {
            src: src.format.into(),
            src_w: src.width,
            src_h: src.height,
            colors: src.colors,
            dst: format,
            dst_w: width,
            dst_h: height,
        };
        if self.scaler != Some(key) {
            let mut ctx = ff::software::scaling::Context::get(
                src.format,
                key.src_w,
                key.src_h,
                av_pixel_format(format),
                width,
                height,
                ff::software::scaling::Flags::BICUBIC,
            )
            .map_err(|e| FfmpegError::Convert(e.to_string()))?;
            src.colors.apply(&mut ctx);
            self.context = Some(ctx);
            self.scaler = Some(key);
        }
        let Some(ctx) = self.context.as_mut() else {
            return Err(FfmpegError::Convert("no scaler".into()));
        };
        let packed = width as usize * format.bytes_per_pixel();
        let stride = scaled_stride(format, width);
        let len = packed * height as usize;
        out.clear();
        out.reserve_exact(output_capacity(format, width, height));
        if stride != packed {
            // Padded rows: swscale leaves the padding unwritten; zeroed, so that every byte
            // of the buffer is initialised.
            out.resize(stride * height as usize, 0);
        }
        // Otherwise not zeroed: sws_scale writes every pixel of whole-step rows, and zeroing
        // megabytes per frame showed up in profiles.
        let dst_ptrs: [*mut u8; 4] =
            [out.as_mut_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()];
        let dst_strides: [i32; 4] = [stride as i32, 0, 0, 0];
        // SAFETY: the source planes and strides are a decoded AVFrame's, or their copy in
        // `Planes` (same strides, every plane plus slack inside its buffer), of the size and
        // format the context was built for (checked through `key`); the destination is one
        // plane of `stride * height` bytes plus slack (reserved above), rows of `stride` bytes
        // holding at least `width` pixels of the context's output format.
        let ret = unsafe {
            ffi::sws_scale(
                ctx.as_mut_ptr(),
                src.data.as_ptr(),
                src.strides.as_ptr(),
                0,
                key.src_h as i32,
                dst_ptrs.as_ptr(),
                dst_strides.as_ptr(),
            )
        };
        if ret != key.dst_h as i32 {
            return Err(FfmpegError::Convert(format!("sws_scale wrote {ret} of {} rows", key.dst_h)));
        }
        if stride == packed {
            // SAFETY: sws_scale returned the full output height, and rows of whole steps are
            // written whole, so all `len` bytes are initialised; capacity is `len + OUTPUT_SLACK`.
            unsafe { out.set_len(len) };
        } else {
            for row in 1..height as usize {
                out.copy_within(row * stride..row * stride + packed, row * packed);
            }
            out.truncate(len);
        }
        Ok(out)
    }
}
