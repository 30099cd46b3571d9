//! Display orientation: what a stream's display matrix asks for (a phone held upright records
//! landscape pictures and a matrix that turns them a quarter), and turning decoded pictures
//! that way.
//!
//! Frames are served as coded unless a request asks for them upright (`OutputSpec.upright`);
//! a decoder's output is what PyAV, decord and torchvision give, and what every frame-exact
//! test compares against. Upright frames are what players and the ffmpeg CLI show: the CLI
//! rotates by default (`-autorotate`), so an upright frame is bit-identical to
//! `ffmpeg -i VIDEO -pix_fmt rgb24`. To stay so, the matrix is read as the CLI reads it and the
//! picture goes through the same libavfilter filters (`transpose`, `hflip`, `vflip`, `rotate`)
//! before the conversion, not through a permutation of converted pixels: the CLI turns the
//! picture in the decoder's pixel format, and where `transpose` cannot take that format, the
//! graph's format negotiation picks a conversion first; running the same graph makes the same
//! choices.
//!
//! Filter descriptions are made here from the display matrix alone (`transpose`, `hflip`,
//! `vflip`, `rotate` with a number) and from sizes and formats, never from a request or from
//! disk (a stored index keeps the matrix): libavfilter has filters that open files (`movie`).

use ff::ffi;
use ffmpeg_next as ff;

use super::{av_pixel_format, DecodedFrame, FfmpegError};
use crate::engine::output::PixelFormat;

/// How a stream is to be shown, as the ffmpeg CLI reads its display matrix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Orientation {
    /// Degrees the picture is turned clockwise for display, in [0, 360): 0, 90, 180 or 270
    /// for nearly every file (the `rotate` tag phones write).
    pub degrees: f64,
    /// The libavfilter chain that turns a decoded picture upright ("" when it already is).
    pub filters: String,
    /// The matrix it was read from: what a stored index keeps, so that no filter description is
    /// ever read back from disk.
    pub display_matrix: Option<[i32; 9]>,
}

impl Orientation {
    /// Read a display matrix (nine 16.16 / 2.30 fixed-point numbers) the way FFmpeg 5.1's CLI
    /// does (`get_rotation` and the autorotate filters of `fftools/ffmpeg_filter.c`).
    pub fn from_display_matrix(matrix: Option<&[i32; 9]>) -> Orientation {
        let Some(m) = matrix else { return Orientation::default() };
        // SAFETY: `m` points at nine readable i32s, all av_display_rotation_get reads.
        let counter_clockwise = unsafe { ffi::av_display_rotation_get(m.as_ptr()) };
        if !counter_clockwise.is_finite() {
            return Orientation::default();
        }
        let mut theta = -counter_clockwise.round();
        theta -= 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
        let near = |a: f64| (theta - a).abs() < 1.0;
        let filters = if near(90.0) {
            if m[3] > 0 { "transpose=cclock_flip" } else { "transpose=clock" }.to_string()
        } else if near(180.0) {
            let mut f = Vec::new();
            if m[0] < 0 {
                f.push("hflip");
            }
            if m[4] < 0 {
                f.push("vflip");
            }
            f.join(",")
        } else if near(270.0) {
            if m[3] < 0 { "transpose=clock_flip" } else { "transpose=cclock" }.to_string()
        } else if theta.abs() > 1.0 {
            format!("rotate={theta:.6}*PI/180")
        } else if m[4] < 0 {
            "vflip".to_string()
        } else {
            String::new()
        };
        Orientation { degrees: theta, filters, display_matrix: Some(*m) }
    }

    pub fn is_upright(&self) -> bool {
        self.filters.is_empty()
    }

    /// The size of a `width`x`height` picture once turned upright.
    pub fn turned_size(&self, size: (u32, u32)) -> (u32, u32) {
        turned_size(&self.filters, size)
    }
}

/// The size of a `width`x`height` picture turned by `filters`: a quarter turn (`transpose`)
/// swaps the sides; flips and the `rotate` filter of other angles keep the frame's size.
fn turned_size(filters: &str, (width, height): (u32, u32)) -> (u32, u32) {
    if filters.starts_with("transpose") {
        (height, width)
    } else {
        (width, height)
    }
}

#[derive(PartialEq, Eq, Clone)]
struct GraphKey {
    src: ffi::AVPixelFormat,
    src_w: u32,
    src_h: u32,
    filters: String,
    dst: PixelFormat,
    dst_w: u32,
    dst_h: u32,
}

/// Turns decoded pictures upright and converts them to tightly packed pixels through a
/// libavfilter graph of the shape the CLI builds for `ffmpeg -i VIDEO [-vf scale=W:H]
/// -pix_fmt FMT`, kept between frames (rebuilt when the input or output changes). The shape
/// matters, not only the filters: libavfilter places the conversion by negotiating formats in
/// the order the filters were created, and where it lands (before the turn or after it) changes
/// pixels wherever the conversion interpolates chroma. Measured against the CLI: 8- and 10-bit
/// 4:2:0, 4:2:2 and odd sizes, each quarter and half turn. Lives on one decoder thread, like
/// [`super::Converter`].
#[derive(Default)]
pub struct Turner {
    key: Option<GraphKey>,
    graph: Option<ff::filter::Graph>,
}

// SAFETY: a filter graph holds no thread-affine state (it runs single-threaded here: its
// `nb_threads` is 1); the Turner is owned by one decoder thread and used through `&mut self`.
unsafe impl Send for Turner {}

impl Turner {
    /// `frame` turned by `orientation` (which must not be upright) and converted to `format`
    /// at `width`x`height` (the turned size, or a smaller one), rows tightly packed, into `out`.
    pub fn convert(
        &mut self,
        frame: &DecodedFrame,
        orientation: &Orientation,
        format: PixelFormat,
        (width, height): (u32, u32),
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, FfmpegError> {
        let failed = |e: ff::Error| FfmpegError::Convert(format!("turning the picture upright: {e}"));
        let key = GraphKey {
            src: frame.frame.format().into(),
            src_w: frame.width(),
            src_h: frame.height(),
            filters: orientation.filters.clone(),
            dst: format,
            dst_w: width,
            dst_h: height,
        };
        if self.key.as_ref() != Some(&key) {
            self.graph = None;
            self.graph = Some(build(&key).map_err(failed)?);
            self.key = Some(key);
        }
        let graph = self.graph.as_mut().ok_or_else(|| FfmpegError::Convert("no filter graph".into()))?;
        let mut source = graph.get("in").ok_or_else(|| FfmpegError::Convert("no filter source".into()))?;
        // SAFETY: the source is this graph's `buffer` filter; KEEP_REF makes it take a new
        // reference to the frame's buffers, leaving the borrowed frame as it was.
        let ret = unsafe {
            ffi::av_buffersrc_add_frame_flags(
                source.as_mut_ptr(),
                frame.frame.as_ptr() as *mut ffi::AVFrame,
                ffi::AV_BUFFERSRC_FLAG_KEEP_REF as i32,
            )
        };
        if ret < 0 {
            return Err(failed(ff::Error::from(ret)));
        }
        let mut turned = ff::frame::Video::empty();
        let mut sink = graph.get("out").ok_or_else(|| FfmpegError::Convert("no filter sink".into()))?;
        sink.sink().frame(&mut turned).map_err(failed)?;
        if turned.width() != width || turned.height() != height || turned.format() != av_pixel_format(format) {
            return Err(FfmpegError::Convert(format!(
                "the turned picture is {}x{} {:?}, not {width}x{height} {format:?}",
                turned.width(),
                turned.height(),
                turned.format()
            )));
        }
        let row = width as usize * format.bytes_per_pixel();
        let stride = turned.stride(0);
        let plane = turned.data(0);
        if height == 0 || stride < row || plane.len() < stride * (height as usize - 1) + row {
            return Err(FfmpegError::Convert("the turned picture's rows are short".into()));
        }
        out.clear();
        out.reserve_exact(row * height as usize);
        for r in plane.chunks(stride).take(height as usize) {
            out.extend_from_slice(&r[..row]);
        }
        Ok(out)
    }
}

/// The CLI's graph (FFmpeg 5.1, `fftools/ffmpeg_filter.c`), its filters created in the CLI's
/// order: the parsed `-vf` chain (`null`, or `scale=W:H`), the input (the buffer source, then
/// the autorotate filters), then the output (the buffersink and the `format` filter); linked
/// buffer -> turn -> chain -> format -> sink. In that order the turn runs in the decoder's
/// pixel format and the conversion comes after it, where the CLI has it.
fn build(key: &GraphKey) -> Result<ff::filter::Graph, ff::Error> {
    let find = |name: &str| ff::filter::find(name).ok_or(ff::Error::FilterNotFound);
    let mut graph = ff::filter::Graph::new();
    // SAFETY: the graph was just allocated and is not configured yet; `scale_sws_opts` is
    // freed by the graph with av_free, so it is allocated with av_strdup.
    unsafe {
        let g = graph.as_mut_ptr();
        (*g).nb_threads = 1;
        (*g).scale_sws_opts = ffi::av_strdup(c"flags=bicubic".as_ptr());
    }
    let mut chain = if (key.dst_w, key.dst_h) == turned_size(&key.filters, (key.src_w, key.src_h)) {
        graph.add(&find("null")?, "chain", "")?
    } else {
        graph.add(&find("scale")?, "chain", &format!("{}:{}", key.dst_w, key.dst_h))?
    };
    let args =
        format!("video_size={}x{}:pix_fmt={}:time_base=1/1:pixel_aspect=1/1", key.src_w, key.src_h, key.src as i32);
    let mut last = graph.add(&find("buffer")?, "in", &args)?;
    for (i, filter) in key.filters.split(',').enumerate() {
        let (name, args) = filter.split_once('=').unwrap_or((filter, ""));
        let mut turn = graph.add(&find(name)?, &format!("turn{i}"), args)?;
        link(&mut last, &mut turn)?;
        last = turn;
    }
    let mut sink = graph.add(&find("buffersink")?, "out", "")?;
    let format = av_pixel_format(key.dst);
    let mut to_format = graph.add(&find("format")?, "format", &format!("pix_fmts={}", format_name(format)?))?;
    link(&mut last, &mut chain)?;
    link(&mut chain, &mut to_format)?;
    link(&mut to_format, &mut sink)?;
    graph.validate()?;
    Ok(graph)
}

fn link(from: &mut ff::filter::Context, to: &mut ff::filter::Context) -> Result<(), ff::Error> {
    // SAFETY: both are filters of the same graph, alive as long as it is; pad 0 exists on
    // every filter linked here (one input, one output; the source has only an output and the
    // sink only an input, and they are used only that way).
    match unsafe { ffi::avfilter_link(from.as_mut_ptr(), 0, to.as_mut_ptr(), 0) } {
        0 => Ok(()),
        e => Err(ff::Error::from(e)),
    }
}

/// FFmpeg's name of a pixel format (what the `format` filter's option takes).
fn format_name(format: ff::format::Pixel) -> Result<&'static str, ff::Error> {
    format.descriptor().map(|d| d.name()).ok_or(ff::Error::InvalidData)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix turning the picture `degrees` clockwise (what av_display_rotation_set makes;
    /// av_display_rotation_get reads it back as the counter-clockwise angle, `-degrees`).
    fn matrix(degrees: f64) -> [i32; 9] {
        let mut m = [0i32; 9];
        // SAFETY: nine writable i32s, all av_display_rotation_set writes.
        unsafe { ffi::av_display_rotation_set(m.as_mut_ptr(), degrees) };
        m
    }

    #[test]
    fn the_display_matrix_is_read_as_the_ffmpeg_cli_reads_it() {
        assert!(Orientation::from_display_matrix(None).is_upright());
        assert!(Orientation::from_display_matrix(Some(&matrix(0.0))).is_upright());
        let quarter = Orientation::from_display_matrix(Some(&matrix(90.0)));
        assert_eq!((quarter.degrees, quarter.filters.as_str()), (90.0, "transpose=clock"));
        assert_eq!(quarter.turned_size((64, 48)), (48, 64));
        let half = Orientation::from_display_matrix(Some(&matrix(180.0)));
        assert_eq!((half.degrees, half.filters.as_str()), (180.0, "hflip,vflip"));
        assert_eq!(half.turned_size((64, 48)), (64, 48));
        let three = Orientation::from_display_matrix(Some(&matrix(270.0)));
        assert_eq!((three.degrees, three.filters.as_str()), (270.0, "transpose=cclock"));
        let odd = Orientation::from_display_matrix(Some(&matrix(30.0)));
        assert_eq!(odd.degrees, 30.0);
        assert!(odd.filters.starts_with("rotate=30.000000"));
        assert_eq!(odd.turned_size((64, 48)), (64, 48));
        // A matrix that scales nothing (all zero) says nothing.
        assert!(Orientation::from_display_matrix(Some(&[0; 9])).is_upright());
    }

    /// Every kind of turn the matrix can ask for builds a graph that gives the size the rest of
    /// the engine expects (a quarter turn swaps the sides, the others keep them), in each
    /// output format and at a smaller size; the exact pixels are checked against the CLI in
    /// tests/server.rs.
    #[test]
    fn every_turn_gives_the_size_expected() {
        super::super::init();
        let mut picture = ff::frame::Video::new(ff::format::Pixel::YUV420P, 64, 48);
        for plane in 0..3 {
            picture.data_mut(plane).fill(100);
        }
        let frame = DecodedFrame { frame: picture };
        let mut turner = Turner::default();
        for degrees in [90.0, 180.0, 270.0, 30.0] {
            for flip in [false, true] {
                let mut m = matrix(degrees);
                if flip {
                    // av_display_matrix_flip(m, 1, 0): mirrored horizontally.
                    m[0] = -m[0];
                    m[3] = -m[3];
                    m[6] = -m[6];
                }
                let o = Orientation::from_display_matrix(Some(&m));
                assert!(!o.is_upright(), "{degrees} {flip}");
                let (w, h) = o.turned_size((64, 48));
                for format in [PixelFormat::Rgb24, PixelFormat::Gray8, PixelFormat::Rgba] {
                    let out = turner.convert(&frame, &o, format, (w, h), Vec::new()).unwrap();
                    assert_eq!(out.len(), (w * h) as usize * format.bytes_per_pixel(), "{} {format:?}", o.filters);
                    let out = turner.convert(&frame, &o, format, (w / 2, h / 2), Vec::new()).unwrap();
                    assert_eq!(out.len(), (w * h / 4) as usize * format.bytes_per_pixel(), "{} smaller", o.filters);
                }
            }
        }
    }
}
