//! What a client gets back: pixel format, size and encoding of a frame.
//!
//! Raw RGB24 at the native size is the reference every other output is derived from. Sizes are
//! "fit inside" boxes that keep the aspect ratio and never upscale, so a client asking for
//! 640x640 from a 1280x720 video gets 640x360. Encoding to PNG or JPEG happens here, on pixels
//! already converted by the decoder thread.

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PixelFormat {
    #[default]
    Rgb24,
    Bgr24,
    Rgba,
    Gray8,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => 3,
            PixelFormat::Rgba => 4,
            PixelFormat::Gray8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Bgr24 => "bgr24",
            PixelFormat::Rgba => "rgba",
            PixelFormat::Gray8 => "gray8",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    #[default]
    Raw,
    Png,
    Jpeg,
}

/// A client's wish for the shape of the returned frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OutputSpec {
    pub encoding: Encoding,
    pub pixel_format: PixelFormat,
    /// 0 means native width.
    pub max_width: u32,
    /// 0 means native height.
    pub max_height: u32,
    /// 1..=100; 0 means the default (90). Only used for JPEG.
    pub jpeg_quality: u8,
    /// Turned as the video's display matrix says (as players and the ffmpeg CLI show it),
    /// rather than as coded ([`crate::engine::ffmpeg::Orientation`]).
    pub upright: bool,
}

/// The pixels a decoder thread produces for a spec: format and exact size. PNG and JPEG
/// are encoded from these, so the decoder never runs an image encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawSpec {
    pub pixel_format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

pub const DEFAULT_JPEG_QUALITY: u8 = 90;

impl OutputSpec {
    /// The pixel format the decoder must produce. PNG and JPEG carry RGB (or gray, or RGBA for
    /// PNG) whatever byte order the client asked for, so BGR24 is produced as RGB24 for them.
    pub fn raw_pixel_format(&self) -> PixelFormat {
        match (self.encoding, self.pixel_format) {
            (Encoding::Raw, f) => f,
            (_, PixelFormat::Gray8) => PixelFormat::Gray8,
            (Encoding::Png, PixelFormat::Rgba) => PixelFormat::Rgba,
            (_, _) => PixelFormat::Rgb24,
        }
    }

    /// The raw pixels this spec needs from a source of `width`x`height`.
    pub fn raw_spec(&self, width: u32, height: u32) -> RawSpec {
        let (width, height) = fit_inside(width, height, self.max_width, self.max_height);
        RawSpec { pixel_format: self.raw_pixel_format(), width, height }
    }

    /// The same spec with encoding RAW: the form frames are cached in while scanning.
    pub fn as_raw(&self) -> OutputSpec {
        OutputSpec { encoding: Encoding::Raw, pixel_format: self.raw_pixel_format(), jpeg_quality: 0, ..*self }
    }
}

/// Fit `width`x`height` inside `max_w`x`max_h` (0 = unbounded), keeping the aspect ratio and
/// never upscaling. Results are at least 1x1.
pub fn fit_inside(width: u32, height: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    let sw = if max_w == 0 { 1.0 } else { max_w as f64 / width as f64 };
    let sh = if max_h == 0 { 1.0 } else { max_h as f64 / height as f64 };
    let scale = sw.min(sh).min(1.0);
    if scale >= 1.0 {
        return (width, height);
    }
    let w = ((width as f64 * scale).round() as u32).clamp(1, width);
    let h = ((height as f64 * scale).round() as u32).clamp(1, height);
    (w, h)
}

#[derive(Debug, thiserror::Error)]
#[error("could not encode the frame as {encoding:?}: {reason}")]
pub struct EncodeError {
    pub encoding: Encoding,
    pub reason: String,
}

/// Encode tightly packed pixels as PNG or JPEG. RAW returns the bytes unchanged, without a copy.
pub fn encode(pixels: &Bytes, raw: RawSpec, encoding: Encoding, jpeg_quality: u8) -> Result<Bytes, EncodeError> {
    match encoding {
        Encoding::Raw => Ok(pixels.clone()),
        Encoding::Png => encode_png(pixels, raw).map_err(|reason| EncodeError { encoding, reason }),
        Encoding::Jpeg => {
            let quality = if jpeg_quality == 0 { DEFAULT_JPEG_QUALITY } else { jpeg_quality.min(100) };
            encode_jpeg(pixels, raw, quality).map_err(|reason| EncodeError { encoding, reason })
        }
    }
}

fn encode_png(pixels: &[u8], raw: RawSpec) -> Result<Bytes, String> {
    let mut out = Vec::with_capacity(pixels.len() / 2);
    {
        let mut enc = png::Encoder::new(&mut out, raw.width, raw.height);
        enc.set_color(match raw.pixel_format {
            PixelFormat::Gray8 => png::ColorType::Grayscale,
            PixelFormat::Rgba => png::ColorType::Rgba,
            PixelFormat::Rgb24 => png::ColorType::Rgb,
            PixelFormat::Bgr24 => return Err("PNG cannot store BGR".into()),
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(pixels).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(Bytes::from(out))
}

fn encode_jpeg(pixels: &[u8], raw: RawSpec, quality: u8) -> Result<Bytes, String> {
    let mut out = Vec::with_capacity(pixels.len() / 8);
    let color = match raw.pixel_format {
        PixelFormat::Gray8 => jpeg_encoder::ColorType::Luma,
        PixelFormat::Rgb24 => jpeg_encoder::ColorType::Rgb,
        PixelFormat::Bgr24 => jpeg_encoder::ColorType::Bgr,
        PixelFormat::Rgba => jpeg_encoder::ColorType::Rgba,
    };
    let (w, h) = (
        u16::try_from(raw.width).map_err(|_| "JPEG is limited to 65535 pixels a side".to_string())?,
        u16::try_from(raw.height).map_err(|_| "JPEG is limited to 65535 pixels a side".to_string())?,
    );
    jpeg_encoder::Encoder::new(&mut out, quality).encode(pixels, w, h, color).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_inside_keeps_aspect_and_never_upscales() {
        assert_eq!(fit_inside(1280, 720, 0, 0), (1280, 720));
        assert_eq!(fit_inside(1280, 720, 640, 640), (640, 360));
        assert_eq!(fit_inside(1280, 720, 0, 180), (320, 180));
        assert_eq!(fit_inside(1280, 720, 4000, 4000), (1280, 720));
        assert_eq!(fit_inside(100, 1, 10, 0), (10, 1));
    }

    #[test]
    fn encoded_outputs_ask_the_decoder_for_rgb() {
        let spec = OutputSpec { encoding: Encoding::Png, pixel_format: PixelFormat::Bgr24, ..Default::default() };
        assert_eq!(spec.raw_pixel_format(), PixelFormat::Rgb24);
        let spec = OutputSpec { encoding: Encoding::Jpeg, pixel_format: PixelFormat::Rgba, ..Default::default() };
        assert_eq!(spec.raw_pixel_format(), PixelFormat::Rgb24);
        let spec = OutputSpec { encoding: Encoding::Raw, pixel_format: PixelFormat::Bgr24, ..Default::default() };
        assert_eq!(spec.raw_pixel_format(), PixelFormat::Bgr24);
    }

    #[test]
    fn png_round_trips_pixels() {
        let raw = RawSpec { pixel_format: PixelFormat::Rgb24, width: 3, height: 2 };
        let pixels = Bytes::from((0u8..18).collect::<Vec<_>>());
        let png = encode(&pixels, raw, Encoding::Png, 0).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png.to_vec()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..18], &pixels[..]);
    }
}
