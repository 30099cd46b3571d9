//! Encoding frames into a container in memory (clips), the write side of the FFmpeg boundary.
//!
//! A [`ClipEncoder`] takes tightly packed RGB24 frames with their timestamps, converts them to
//! the codec's pixel format, encodes and muxes them, and collects the container's bytes in
//! memory (FFmpeg writes through a custom I/O context into a `Vec`), which the caller takes
//! piecewise while encoding goes on: no temporary files, nothing opened by name.
//!
//! The output is written without seeking back (fragmented MP4; Matroska written as a live
//! stream, without cues), so every byte can be sent as soon as it exists.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr;

use ff::ffi;
use ffmpeg_next as ff;

use super::FfmpegError;

/// What a clip is encoded as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipCodec {
    /// H.264 (libx264, yuv420p) in fragmented MP4, which browsers play as it arrives.
    H264Mp4 { crf: u32, preset: String },
    /// FFV1 over 8-bit RGB (bgr0) in Matroska: lossless, decoding it to rgb24 gives the input
    /// bytes.
    Ffv1Mkv,
}

/// Bytes FFmpeg hands the write callback at a time.
const IO_BUFFER: usize = 64 * 1024;

/// An encoder and muxer writing into memory.
pub struct ClipEncoder {
    format: *mut ffi::AVFormatContext,
    codec: *mut ffi::AVCodecContext,
    stream: *mut ffi::AVStream,
    scaler: *mut ffi::SwsContext,
    frame: *mut ffi::AVFrame,
    packet: *mut ffi::AVPacket,
    /// The custom I/O context's target, boxed so its address stays put when the encoder moves
    /// (the callback holds a pointer to the `Vec` itself, not to its buffer).
    #[allow(clippy::box_collection)]
    sink: Box<Vec<u8>>,
    /// Size of the RGB24 frames pushed.
    width: u32,
    height: u32,
    /// Rows of the encoded picture (what the converter writes).
    out_height: u32,
    /// The encoder's pixel format (what the converter writes).
    pix_fmt: ffi::AVPixelFormat,
    time_base: ffi::AVRational,
    finished: bool,
}

// SAFETY: every FFmpeg object here is owned by this value alone and only used through
// `&mut self`; none is tied to the thread that created it.
unsafe impl Send for ClipEncoder {}

/// The I/O context's write callback. FFmpeg 7 made its buffer `const` (5.1 and 6 pass it `mut`);
/// this picks the one the bindings at hand want, so the crate builds against either.
trait WriteCallback {
    fn get() -> Self;
}

type WriteMut = unsafe extern "C" fn(*mut libc::c_void, *mut u8, libc::c_int) -> libc::c_int;
type WriteConst = unsafe extern "C" fn(*mut libc::c_void, *const u8, libc::c_int) -> libc::c_int;

impl WriteCallback for WriteMut {
    fn get() -> Self {
        unsafe extern "C" fn write(opaque: *mut libc::c_void, buf: *mut u8, size: libc::c_int) -> libc::c_int {
            // SAFETY: the same call, the buffer only read.
            unsafe { write_to_vec(opaque, buf, size) }
        }
        write
    }
}

impl WriteCallback for WriteConst {
    fn get() -> Self {
        write_to_vec
    }
}

unsafe extern "C" fn write_to_vec(opaque: *mut libc::c_void, buf: *const u8, size: libc::c_int) -> libc::c_int {
    if opaque.is_null() || buf.is_null() || size < 0 {
        return ffi::AVERROR(libc::EINVAL);
    }
    // SAFETY: `opaque` is the `Box<Vec<u8>>` of the encoder that owns the I/O context, which
    // outlives it; FFmpeg passes `size` readable bytes at `buf`.
    let sink = unsafe { &mut *(opaque as *mut Vec<u8>) };
    sink.extend_from_slice(unsafe { std::slice::from_raw_parts(buf, size as usize) });
    size
}

fn error(what: &str, code: i32) -> FfmpegError {
    FfmpegError::Encode(format!("{what}: {}", ff::Error::from(code)))
}

impl ClipEncoder {
    /// An encoder taking `input` (width, height) RGB24 frames, encoding them at `output`
    /// size, with timestamps counting in `time_base` (num/den seconds).
    pub fn new(
        codec: &ClipCodec,
        input: (u32, u32),
        output: (u32, u32),
        time_base: (i32, i32),
    ) -> Result<ClipEncoder, FfmpegError> {
        super::init();
        let (width, height) = output;
        encodable(input)?;
        encodable(output)?;
        if time_base.0 <= 0 || time_base.1 <= 0 {
            return Err(FfmpegError::Encode(format!("bad time base {}/{}", time_base.0, time_base.1)));
        }
        let (muxer, encoder, pix_fmt) = match codec {
            ClipCodec::H264Mp4 { .. } => ("mp4", "libx264", ffi::AVPixelFormat::AV_PIX_FMT_YUV420P),
            ClipCodec::Ffv1Mkv => ("matroska", "ffv1", ffi::AVPixelFormat::AV_PIX_FMT_BGR0),
        };
        let mut this = ClipEncoder {
            format: ptr::null_mut(),
            codec: ptr::null_mut(),
            stream: ptr::null_mut(),
            scaler: ptr::null_mut(),
            frame: ptr::null_mut(),
            packet: ptr::null_mut(),
            sink: Box::new(Vec::new()),
            width: input.0,
            height: input.1,
            out_height: height,
            pix_fmt,
            time_base: ffi::AVRational { num: time_base.0, den: time_base.1 },
            finished: false,
        };
        let muxer_c = CString::new(muxer).expect("static name");
        let encoder_c = CString::new(encoder).expect("static name");
        // SAFETY: standard FFmpeg set-up; every pointer is checked before use, and anything
        // allocated is owned by `this`, whose Drop frees it (also on the error returns below).
        unsafe {
            let ret = ffi::avformat_alloc_output_context2(&mut this.format, ptr::null(), muxer_c.as_ptr(), ptr::null());
            if ret < 0 || this.format.is_null() {
                return Err(error("no muxer", ret));
            }
            let found = ffi::avcodec_find_encoder_by_name(encoder_c.as_ptr());
            if found.is_null() {
                return Err(FfmpegError::NoEncoder(encoder.to_string()));
            }
            this.codec = ffi::avcodec_alloc_context3(found);
            if this.codec.is_null() {
                return Err(FfmpegError::Encode("out of memory".into()));
            }
            let c = &mut *this.codec;
            c.width = width as i32;
            c.height = height as i32;
            c.pix_fmt = pix_fmt;
            c.time_base = this.time_base;
            c.sample_aspect_ratio = ffi::AVRational { num: 1, den: 1 };
            c.thread_count = 0;
            if (*(*this.format).oformat).flags & ffi::AVFMT_GLOBALHEADER != 0 {
                c.flags |= ffi::AV_CODEC_FLAG_GLOBAL_HEADER as i32;
            }
            let mut options: *mut ffi::AVDictionary = ptr::null_mut();
            match codec {
                ClipCodec::H264Mp4 { crf, preset } => {
                    set(&mut options, "crf", &crf.to_string());
                    set(&mut options, "preset", preset);
                    // Say which YCbCr the converter below made (swscale's default from RGB:
                    // BT.601, limited range). Untagged, players guess, and browsers take HD
                    // video for BT.709: the clip's colours would shift from its frames'.
                    c.colorspace = ffi::AVColorSpace::AVCOL_SPC_SMPTE170M;
                    c.color_range = ffi::AVColorRange::AVCOL_RANGE_MPEG;
                }
                ClipCodec::Ffv1Mkv => {
                    // Version 3 allows slices, so the encoder can use several threads.
                    set(&mut options, "level", "3");
                    set(&mut options, "slicecrc", "1");
                }
            }
            let ret = ffi::avcodec_open2(this.codec, found, &mut options);
            ffi::av_dict_free(&mut options);
            if ret < 0 {
                return Err(error("cannot open the encoder", ret));
            }
            this.stream = ffi::avformat_new_stream(this.format, ptr::null());
            if this.stream.is_null() {
                return Err(FfmpegError::Encode("cannot add a stream".into()));
            }
            (*this.stream).time_base = this.time_base;
            let ret = ffi::avcodec_parameters_from_context((*this.stream).codecpar, this.codec);
            if ret < 0 {
                return Err(error("codec parameters", ret));
            }
            let buffer = ffi::av_malloc(IO_BUFFER) as *mut u8;
            if buffer.is_null() {
                return Err(FfmpegError::Encode("out of memory".into()));
            }
            let opaque = &mut *this.sink as *mut Vec<u8> as *mut libc::c_void;
            let io =
                ffi::avio_alloc_context(buffer, IO_BUFFER as i32, 1, opaque, None, Some(WriteCallback::get()), None);
            if io.is_null() {
                ffi::av_free(buffer as *mut libc::c_void);
                return Err(FfmpegError::Encode("out of memory".into()));
            }
            (*io).seekable = 0;
            (*this.format).pb = io;
            (*this.format).flags |= ffi::AVFMT_FLAG_CUSTOM_IO;
            let mut mux_options: *mut ffi::AVDictionary = ptr::null_mut();
            if let ClipCodec::H264Mp4 { .. } = codec {
                set(&mut mux_options, "movflags", "frag_keyframe+empty_moov+default_base_moof");
            }
            let ret = ffi::avformat_write_header(this.format, &mut mux_options);
            ffi::av_dict_free(&mut mux_options);
            if ret < 0 {
                return Err(error("cannot write the container header", ret));
            }
            this.frame = ffi::av_frame_alloc();
            this.packet = ffi::av_packet_alloc();
            if this.frame.is_null() || this.packet.is_null() {
                return Err(FfmpegError::Encode("out of memory".into()));
            }
            let f = &mut *this.frame;
            f.format = pix_fmt as i32;
            f.width = width as i32;
            f.height = height as i32;
            let ret = ffi::av_frame_get_buffer(this.frame, 0);
            if ret < 0 {
                return Err(error("frame buffer", ret));
            }
        }
        this.scale_from(input)?;
        Ok(this)
    }

    /// Convert pushed frames of `input` size from now on (to the clip's size, in the encoder's
    /// pixel format). A video whose picture size changes mid-stream gives frames of another size
    /// than the first; like the CLI, the clip keeps the first one and scales the others to it.
    fn scale_from(&mut self, input: (u32, u32)) -> Result<(), FfmpegError> {
        if !self.scaler.is_null() && input == (self.width, self.height) {
            return Ok(());
        }
        encodable(input)?;
        // SAFETY: the frame was allocated in `new` (its format and size are the encoder's); the
        // old converter, if any, is ours and replaced here.
        unsafe {
            let out = &*self.frame;
            let scaler = ffi::sws_getContext(
                input.0 as i32,
                input.1 as i32,
                ffi::AVPixelFormat::AV_PIX_FMT_RGB24,
                out.width,
                out.height,
                self.pix_fmt,
                ffi::SWS_BICUBIC | ffi::SWS_ACCURATE_RND | ffi::SWS_BITEXACT,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
            );
            if scaler.is_null() {
                return Err(FfmpegError::Encode("no pixel converter".into()));
            }
            if !self.scaler.is_null() {
                ffi::sws_freeContext(self.scaler);
            }
            self.scaler = scaler;
        }
        (self.width, self.height) = input;
        Ok(())
    }

    /// Encode one frame: `rgb` holds `size.1` rows of `size.0 * 3` bytes (any size: it is
    /// scaled to the clip's); `pts` counts in the time base given at creation and must increase
    /// from frame to frame.
    pub fn push(&mut self, rgb: &[u8], size: (u32, u32), pts: i64) -> Result<(), FfmpegError> {
        if !self.finished {
            self.scale_from(size)?;
        }
        let stride = self.width as usize * 3;
        if self.finished || rgb.len() != stride * self.height as usize {
            return Err(FfmpegError::Encode(format!(
                "expected {} bytes of {}x{} rgb24, got {}",
                stride * self.height as usize,
                self.width,
                self.height,
                rgb.len()
            )));
        }
        // SAFETY: the frame was allocated for this size and format; av_frame_make_writable
        // makes sure the encoder holds no reference to its buffers before we write; the source
        // is one plane of `stride * height` bytes, as checked above.
        unsafe {
            let ret = ffi::av_frame_make_writable(self.frame);
            if ret < 0 {
                return Err(error("frame buffer", ret));
            }
            let src = [rgb.as_ptr(), ptr::null(), ptr::null(), ptr::null()];
            let src_stride = [stride as i32, 0, 0, 0];
            let rows = ffi::sws_scale(
                self.scaler,
                src.as_ptr(),
                src_stride.as_ptr(),
                0,
                self.height as i32,
                (*self.frame).data.as_ptr(),
                (*self.frame).linesize.as_ptr(),
            );
            if rows != self.out_height as i32 {
                return Err(FfmpegError::Encode(format!("converted {rows} of {} rows", self.out_height)));
            }
            (*self.frame).pts = pts;
            let ret = ffi::avcodec_send_frame(self.codec, self.frame);
            if ret < 0 {
                return Err(error("encoding failed", ret));
            }
        }
        self.drain()
    }

    /// Write every packet the encoder has ready.
    fn drain(&mut self) -> Result<(), FfmpegError> {
        loop {
            // SAFETY: codec, packet, stream and format are valid for the encoder's life; the
            // packet is handed to the muxer, which takes its reference (and unrefs it).
            unsafe {
                let ret = ffi::avcodec_receive_packet(self.codec, self.packet);
                if ret == ffi::AVERROR(libc::EAGAIN) || ret == ffi::AVERROR_EOF {
                    return Ok(());
                }
                if ret < 0 {
                    return Err(error("encoding failed", ret));
                }
                ffi::av_packet_rescale_ts(self.packet, self.time_base, (*self.stream).time_base);
                (*self.packet).stream_index = (*self.stream).index;
                let ret = ffi::av_interleaved_write_frame(self.format, self.packet);
                if ret < 0 {
                    return Err(error("writing the container failed", ret));
                }
            }
        }
    }

    /// The container bytes written since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.sink)
    }

    /// Flush the encoder and write the container's trailer; returns the last bytes.
    pub fn finish(&mut self) -> Result<Vec<u8>, FfmpegError> {
        if !self.finished {
            self.finished = true;
            // SAFETY: a null frame starts draining the encoder; the trailer is written once,
            // after the header, and avio_flush pushes the I/O buffer through the callback.
            unsafe {
                let ret = ffi::avcodec_send_frame(self.codec, ptr::null());
                if ret < 0 && ret != ffi::AVERROR_EOF {
                    return Err(error("flushing the encoder", ret));
                }
                self.drain()?;
                let ret = ffi::av_write_trailer(self.format);
                if ret < 0 {
                    return Err(error("writing the container trailer", ret));
                }
                ffi::avio_flush((*self.format).pb);
            }
        }
        Ok(self.take_output())
    }
}

/// Set a dictionary entry (names and values are ours, never a client's raw string).
unsafe fn set(dict: &mut *mut ffi::AVDictionary, key: &str, value: &str) {
    let (Ok(k), Ok(v)) = (CString::new(key), CString::new(value)) else { return };
    // SAFETY: av_dict_set copies both strings.
    unsafe { ffi::av_dict_set(dict, k.as_ptr(), v.as_ptr(), 0) };
}

impl Drop for ClipEncoder {
    fn drop(&mut self) {
        // SAFETY: each pointer is either null or owned by this value; the free functions accept
        // null (or it is checked), and the custom I/O context (with its buffer) is freed by us
        // because AVFMT_FLAG_CUSTOM_IO tells avformat_free_context not to.
        unsafe {
            if !self.scaler.is_null() {
                ffi::sws_freeContext(self.scaler);
            }
            ffi::av_frame_free(&mut self.frame);
            ffi::av_packet_free(&mut self.packet);
            ffi::avcodec_free_context(&mut self.codec);
            if !self.format.is_null() {
                let mut io = (*self.format).pb;
                if !io.is_null() {
                    ffi::av_freep(&mut (*io).buffer as *mut *mut u8 as *mut libc::c_void);
                    ffi::avio_context_free(&mut io);
                    (*self.format).pb = ptr::null_mut();
                }
                ffi::avformat_free_context(self.format);
            }
        }
    }
}

/// A picture size the encoder and its converter take.
fn encodable((w, h): (u32, u32)) -> Result<(), FfmpegError> {
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(FfmpegError::Encode(format!("cannot encode a {w}x{h} picture")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(w: u32, h: u32, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|k| (0..w * h * 3).map(|i| ((i as usize * 7 + k * 13) % 251) as u8).collect()).collect()
    }

    fn encode_all(codec: &ClipCodec, size: (u32, u32), out: (u32, u32)) -> Vec<u8> {
        let mut enc = ClipEncoder::new(codec, size, out, (1, 1000)).unwrap();
        let mut bytes = Vec::new();
        for (k, f) in frames(size.0, size.1, 5).iter().enumerate() {
            enc.push(f, size, k as i64 * 40).unwrap();
            bytes.extend(enc.take_output());
        }
        bytes.extend(enc.finish().unwrap());
        bytes
    }

    #[test]
    fn both_formats_encode_into_memory() {
        super::super::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
        let mkv = encode_all(&ClipCodec::Ffv1Mkv, (64, 48), (64, 48));
        assert_eq!(&mkv[..4], &[0x1A, 0x45, 0xDF, 0xA3], "EBML header");
        let mp4 = encode_all(&ClipCodec::H264Mp4 { crf: 23, preset: "ultrafast".into() }, (65, 49), (64, 48));
        assert!(mp4.windows(4).any(|w| w == b"moof"));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(ClipEncoder::new(&ClipCodec::Ffv1Mkv, (0, 48), (64, 48), (1, 1000)).is_err());
        let mut enc = ClipEncoder::new(&ClipCodec::Ffv1Mkv, (64, 48), (64, 48), (1, 1000)).unwrap();
        assert!(enc.push(&[0; 10], (64, 48), 0).is_err());
        assert!(enc.push(&[0; 12], (2, 2), 0).is_ok(), "a frame of another size is scaled to the clip's");
        assert!(enc.push(&[0; 12], (0, 2), 40).is_err());
    }
}
