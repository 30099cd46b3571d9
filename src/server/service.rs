//! The `framesrv.v1.FrameServer` gRPC service: validates requests, hands them to the
//! [`FrameStore`], and turns answers into messages. No decoding, no FFmpeg, no locks here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::config::LimitsConfig;
use crate::engine::output::{Encoding, OutputSpec, PixelFormat};
use crate::engine::pool::OpenVideo;
use crate::engine::schedule::Class;
use crate::engine::store::{ClipCodec, Counting, ForSelection, Frame, FrameStore, Selection, Target};
use crate::engine::storyboard::Layout;
use crate::error::{Error, RequestError};
use crate::proto::v1 as pb;
use crate::units::FrameIndex;

pub struct FrameService {
    store: Arc<FrameStore>,
    limits: LimitsConfig,
    in_flight: InFlight,
}

/// Requests being served, streams until their last frame is handed over: shutdown waits for
/// these before closing connections.
#[derive(Clone, Default)]
pub struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

/// One request in flight; dropping it ends it.
pub struct InFlightGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    /// Resolves when no request is in flight.
    pub async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl FrameService {
    pub fn new(store: Arc<FrameStore>, limits: LimitsConfig, in_flight: InFlight) -> Self {
        FrameService { store, limits, in_flight }
    }

    /// Open `video` for work of `class` (the class a decode pass indexing it runs at while the
    /// request waits for it).
    async fn open(&self, video: &str, class: Class) -> Result<Arc<OpenVideo>, Error> {
        self.open_through(video, None, class).await
    }

    /// Open `video` for its frames up to `last` counted from the start (`None`: all of it). A
    /// file without timestamps is then served as soon as its decode pass has counted that far.
    async fn open_through(&self, video: &str, last: Option<u64>, class: Class) -> Result<Arc<OpenVideo>, Error> {
        if video.is_empty() {
            return Err(RequestError::MissingVideo.into());
        }
        match last {
            Some(frame) => self.store.open_through(video, frame, class).await,
            None => self.store.open(video, class).await,
        }
    }

    fn output_spec(&self, spec: Option<&pb::OutputSpec>) -> Result<OutputSpec, Error> {
        let Some(spec) = spec else { return Ok(OutputSpec::default()) };
        let encoding = match pb::Encoding::try_from(spec.encoding) {
            Ok(pb::Encoding::Raw) => Encoding::Raw,
            Ok(pb::Encoding::Png) => Encoding::Png,
            Ok(pb::Encoding::Jpeg) => Encoding::Jpeg,
            Err(_) => return Err(RequestError::UnknownEnum { field: "output.encoding", value: spec.encoding }.into()),
        };
        let pixel_format = match pb::PixelFormat::try_from(spec.pixel_format) {
            Ok(pb::PixelFormat::Rgb24) => PixelFormat::Rgb24,
            Ok(pb::PixelFormat::Bgr24) => PixelFormat::Bgr24,
            Ok(pb::PixelFormat::Rgba) => PixelFormat::Rgba,
            Ok(pb::PixelFormat::Gray8) => PixelFormat::Gray8,
            Err(_) => {
                return Err(RequestError::UnknownEnum { field: "output.pixel_format", value: spec.pixel_format }.into())
            }
        };
        let max = self.limits.max_output_dimension;
        for (field, value) in [("output.max_width", spec.max_width), ("output.max_height", spec.max_height)] {
            if value > max {
                return Err(RequestError::TooLarge { field, value: value as u64, max: max as u64 }.into());
            }
        }
        if spec.jpeg_quality > 100 {
            return Err(RequestError::TooLarge {
                field: "output.jpeg_quality",
                value: spec.jpeg_quality as u64,
                max: 100,
            }
            .into());
        }
        Ok(OutputSpec {
            encoding,
            pixel_format,
            max_width: spec.max_width,
            max_height: spec.max_height,
            jpeg_quality: spec.jpeg_quality as u8,
            upright: spec.upright,
        })
    }

    /// The video, frame and output a `RequestFrame` names, checked and resolved without
    /// decoding anything (the HTTP layer answers `If-None-Match` from this alone).
    pub(crate) async fn resolve_frame(
        &self,
        req: &pb::FrameRequest,
    ) -> Result<(Arc<OpenVideo>, FrameIndex, OutputSpec), Error> {
        let target = match req.target {
            Some(pb::frame_request::Target::Index(i)) => Target::Index(i),
            Some(pb::frame_request::Target::TimeS(t)) if t.is_finite() => Target::Time(t),
            Some(pb::frame_request::Target::TimeS(t)) => return Err(RequestError::BadTime(t).into()),
            None => return Err(RequestError::MissingTarget.into()),
        };
        let spec = self.output_spec(req.output.as_ref())?;
        if let Some(keep) = req.keep_behind {
            let max = self.limits.max_keep_behind;
            if keep > max {
                return Err(RequestError::TooLarge { field: "keep_behind", value: keep as u64, max: max as u64 }.into());
            }
        }
        // A time or a frame counted from the end needs all the index.
        let last = match target {
            Target::Index(i) if i >= 0 => Some(i as u64),
            _ => None,
        };
        let video = self.open_through(&req.video, last, Class::Interactive).await?;
        let index = self.store.resolve(&video, target, req.clamp)?;
        Ok((video, index, spec))
    }

    /// One resolved frame, at interactive priority.
    pub(crate) async fn fetch_frame(
        &self,
        video: &Arc<OpenVideo>,
        index: FrameIndex,
        spec: OutputSpec,
        keep_behind: Option<u32>,
    ) -> Result<pb::Frame, Error> {
        let frame = self.store.frame(video, index, spec, Class::Interactive, keep_behind).await?;
        Ok(to_message(frame))
    }

    async fn request_frame_inner(&self, req: pb::FrameRequest) -> Result<pb::Frame, Error> {
        let (video, index, spec) = self.resolve_frame(&req).await?;
        let frame = self.fetch_frame(&video, index, spec, req.keep_behind).await?;
        fits(frame, self.limits.max_message_size.0)
    }

    /// The description of a video, opening (indexing) it on first use; `while_indexing`: of the
    /// frames counted so far, while a file without timestamps is being indexed. The caller
    /// bounds it (the call's deadline, or the HTTP route's timeout).
    pub(crate) async fn info(&self, name: &str, while_indexing: bool) -> Result<pb::VideoInfo, Error> {
        let (video, indexing) = match while_indexing {
            true if !name.is_empty() => self.store.open_so_far(name).await?,
            _ => (self.open(name, Class::Interactive).await?, false),
        };
        let idx = &video.index;
        Ok(pb::VideoInfo {
            video: video.name.clone(),
            frame_count: idx.frame_count() as i64,
            width: idx.stream.width,
            height: idx.stream.height,
            duration_s: idx.duration_s,
            avg_fps: idx.avg_fps,
            codec: idx.stream.codec.clone(),
            pixel_format: idx.stream.pixel_format.clone(),
            container: idx.stream.container.clone(),
            keyframe_count: idx.keyframe_count as i64,
            variable_frame_rate: idx.variable_frame_rate,
            start_time_s: idx.start_time_s,
            frame_identity: match idx.identity {
                crate::engine::index::FrameIdentity::ByPts => "pts",
                crate::engine::index::FrameIdentity::ByCount => "count",
            }
            .into(),
            content_key: video.content_key.hex(),
            display_rotation: idx.stream.orientation.degrees,
            sample_aspect_ratio: format!("{}:{}", idx.stream.sample_aspect_ratio.0, idx.stream.sample_aspect_ratio.1),
            indexing,
        })
    }

    /// The videos under the media roots whose names start with `prefix`.
    pub(crate) async fn list(&self, prefix: String) -> Result<Vec<String>, Error> {
        let roots = self.store.roots().clone();
        tokio::task::spawn_blocking(move || roots.list(&prefix))
            .await
            .map_err(|_| crate::engine::EngineError::ShuttingDown.into())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.limits.request_timeout_s)
    }

    /// Run a unary call on `video`, or a stream's setup, within its deadline. A deadline that
    /// passes while the video is still being indexed says so: the first request for a long file
    /// without timestamps waits for a decode of the whole file, which goes on after the call
    /// gives up.
    pub(crate) async fn within<T>(
        &self,
        bound: Deadline,
        video: &str,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        bound.bound(fut).await.map_err(|e| {
            let progress = match &e {
                Error::Request(RequestError::Timeout(_) | RequestError::ClientDeadline(_)) => {
                    self.store.indexing(video)
                }
                _ => None,
            };
            match progress {
                Some(progress) => {
                    RequestError::StillIndexing { video: video.to_string(), reason: e.to_string(), progress }.into()
                }
                None => e,
            }
        })
    }

    /// Mark a request in flight until the guard drops (shutdown waits for it).
    pub(crate) fn enter(&self) -> InFlightGuard {
        self.in_flight.enter()
    }

    /// The frame indices a batch selects, checked against the video and the limits before the
    /// first frame is sent: the request becomes an engine [`Selection`], which resolves itself.
    fn selection(&self, video: &OpenVideo, selection: Option<Selection>) -> Result<Vec<FrameIndex>, Error> {
        let selection = selection.ok_or(RequestError::MissingSelection)?;
        Ok(self.store.select(video, &selection, self.limits.max_batch_frames)?)
    }

    /// The video and the frames a GetFrameHashes request selects, checked before the stream
    /// starts (the hash pass itself runs inside the stream, so a long one is bounded by the
    /// client's deadline, not by the request timeout).
    async fn hashes_setup(&self, req: &pb::FrameHashesRequest) -> Result<(Arc<OpenVideo>, Vec<FrameIndex>), Error> {
        let video = self.open(&req.video, Class::Bulk).await?;
        let selection = match req.selection.clone() {
            None => Selection::Range { start: 0, stop: 0, step: 1 },
            Some(pb::frame_hashes_request::Selection::Range(r)) => range(r),
            Some(pb::frame_hashes_request::Selection::TimeRange(t)) => time_range(t),
            Some(pb::frame_hashes_request::Selection::Indices(l)) => Selection::Indices(l.indices),
        };
        let indices = self.store.select(&video, &selection, usize::MAX)?;
        Ok((video, indices))
    }

    async fn duplicates_inner(&self, req: pb::FindDuplicatesRequest) -> Result<pb::DuplicatesReport, Error> {
        const MAX_DISTANCE: u32 = 32;
        if req.max_distance > MAX_DISTANCE {
            let (value, max) = (u64::from(req.max_distance), u64::from(MAX_DISTANCE));
            return Err(RequestError::TooLarge { field: "max_distance", value, max }.into());
        }
        let min_loop = if req.min_loop_frames == 0 { 25 } else { req.min_loop_frames };
        let video = self.open(&req.video, Class::Bulk).await?;
        let other = match req.other_video.as_str() {
            "" => None,
            name => Some(self.open(name, Class::Bulk).await?),
        };
        let report = self.store.duplicates(&video, other.as_ref(), req.max_distance, min_loop).await?;
        let ints = |v: Vec<u32>| v.into_iter().map(i64::from).collect();
        Ok(pb::DuplicatesReport {
            groups: report
                .groups
                .into_iter()
                .map(|g| pb::DuplicateGroup {
                    indices: ints(g.indices),
                    other_indices: ints(g.other_indices),
                    exact: g.exact,
                })
                .collect(),
            loops: report
                .loops
                .into_iter()
                .map(|l| pb::Loop {
                    first_start: l.first_start.into(),
                    second_start: l.second_start.into(),
                    length: l.length.into(),
                    mean_distance: l.mean_distance,
                })
                .collect(),
        })
    }

    pub(crate) async fn storyboard_inner(&self, req: pb::StoryboardRequest) -> Result<pb::Storyboard, Error> {
        /// JPEG's largest side.
        const MAX_SIDE: u32 = 65_535;
        let max_tiles = self.limits.max_storyboard_tiles;
        let too_large = |field, value: u32, max: u32| -> Result<(), Error> {
            if value > max {
                return Err(RequestError::TooLarge { field, value: value.into(), max: max.into() }.into());
            }
            Ok(())
        };
        if req.tiles == 0 {
            return Err(RequestError::BadRange(format!("tiles = 0: ask for 1 to {max_tiles} tiles")).into());
        }
        too_large("tiles", req.tiles, max_tiles)?;
        too_large("tile_width", req.tile_width, self.limits.max_output_dimension)?;
        too_large("tile_height", req.tile_height, self.limits.max_output_dimension)?;
        too_large("jpeg_quality", req.jpeg_quality, 100)?;
        let tiles = req.tiles;
        let tile_width = if req.tile_width == 0 && req.tile_height == 0 { 160 } else { req.tile_width };
        let video = self.open(&req.video, Class::Stream).await?;
        let (w, h) = video.index.stream.shown_size(req.upright);
        let layout = Layout::new(w, h, tiles, tile_width, req.tile_height, req.columns);
        too_large("the storyboard's width (columns x tile width)", layout.width(), MAX_SIDE)?;
        too_large("the storyboard's height (rows x tile height)", layout.height(), MAX_SIDE)?;
        let quality = if req.jpeg_quality == 0 { 80 } else { req.jpeg_quality as u8 };
        let board = self.store.storyboard(&video, layout, req.exact, quality, req.upright).await?;
        Ok(pb::Storyboard {
            image: board.jpeg,
            width: layout.width(),
            height: layout.height(),
            columns: layout.columns,
            rows: layout.rows,
            tiles: board
                .tiles
                .iter()
                .enumerate()
                .map(|(t, &(index, time_s))| {
                    let (x, y) = layout.origin(t as u32);
                    pb::StoryboardTile {
                        index: index.0.into(),
                        time_s,
                        x,
                        y,
                        width: layout.tile_width,
                        height: layout.tile_height,
                    }
                })
                .collect(),
        })
    }

    /// What an ExportClip request asks for, checked.
    async fn clip_setup(
        &self,
        req: &pb::ClipRequest,
    ) -> Result<(Arc<OpenVideo>, Vec<FrameIndex>, OutputSpec, ClipCodec), Error> {
        const PRESETS: &str = "ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow";
        let codec = match pb::ClipFormat::try_from(req.format) {
            Ok(pb::ClipFormat::Mp4H264) => {
                if req.crf > 51 {
                    return Err(RequestError::TooLarge { field: "crf", value: req.crf.into(), max: 51 }.into());
                }
                let preset = if req.preset.is_empty() { "veryfast" } else { req.preset.as_str() };
                if !PRESETS.split(", ").any(|p| p == preset) {
                    return Err(
                        RequestError::NotOneOf { field: "preset", value: preset.into(), expected: PRESETS }.into()
                    );
                }
                ClipCodec::H264Mp4 { crf: if req.crf == 0 { 23 } else { req.crf }, preset: preset.into() }
            }
            Ok(pb::ClipFormat::MkvFfv1) => ClipCodec::Ffv1Mkv,
            Err(_) => return Err(RequestError::UnknownEnum { field: "format", value: req.format }.into()),
        };
        let spec = self.output_spec(req.output.as_ref())?;
        let selection = match &req.selection {
            None => return Err(RequestError::MissingSelection.into()),
            Some(pb::clip_request::Selection::Range(r)) => {
                if r.step > 1 || r.step < 0 {
                    return Err(RequestError::BadRange(format!(
                        "range.step = {} : a clip is consecutive frames (step 0 or 1)",
                        r.step
                    ))
                    .into());
                }
                range(*r)
            }
            Some(pb::clip_request::Selection::TimeRange(t)) => time_range(*t),
        };
        let video = self.open(&req.video, Class::Bulk).await?;
        let frames = self.store.select(&video, &selection, self.limits.max_clip_frames)?;
        if frames.is_empty() {
            return Err(RequestError::BadRange("the selection holds no frame".into()).into());
        }
        Ok((video, frames, spec, codec))
    }
}

impl FrameService {
    /// `RequestFrames` for a transport that sends frames as `transport` says (see
    /// [`Transport`]): tonic's trait method, and the plain-gRPC path of [`super::grpc_frames`].
    pub async fn frames_sent_by(
        &self,
        request: Request<pb::FramesRequest>,
        transport: Transport,
    ) -> Result<FrameStream, Status> {
        let in_flight = self.in_flight.enter();
        let bound = stream_deadline(&request);
        let req = request.into_inner();
        let name = req.video.clone();
        let setup = async {
            let spec = self.output_spec(req.output.as_ref())?;
            let selection = req.selection.map(|s| match s {
                pb::frames_request::Selection::Range(r) => range(r),
                pb::frames_request::Selection::TimeRange(t) => time_range(t),
                pb::frames_request::Selection::Indices(l) => Selection::Indices(l.indices),
            });
            let Some(selection) = selection else {
                self.open(&req.video, Class::Stream).await?;
                return Err(RequestError::MissingSelection.into());
            };
            if req.video.is_empty() {
                return Err(RequestError::MissingVideo.into());
            }
            let max = self.limits.max_batch_frames;
            let opened = self.store.open_for(&req.video, &selection, max, spec).await?;
            let indices = match &opened {
                ForSelection::Whole(video) => self.store.select(video, &selection, max)?,
                ForSelection::Counting(_) => Vec::new(),
            };
            Ok::<_, Error>((opened, indices, spec))
        };
        let (opened, indices, spec) =
            self.within(bound, &name, setup).await.map_err(|e| report("RequestFrames", &name, "", e))?;
        match opened {
            ForSelection::Whole(video) => {
                tracing::debug!(video = %name, frames = indices.len(), "RequestFrames");
                Ok(self.frame_stream("RequestFrames", name, in_flight, video, indices, spec, transport))
            }
            ForSelection::Counting(counting) => {
                tracing::debug!(video = %name, counted = counting.counted().index.frame_count(), "RequestFrames while the video is indexed");
                Ok(self.frames_as_counted(name, in_flight, counting, spec, transport))
            }
        }
    }

    /// The frames `indices` of `video` as a response stream of call `call`; the in-flight guard
    /// lives as long as the stream, so shutdown waits for its last frame.
    #[allow(clippy::too_many_arguments)]
    fn frame_stream(
        &self,
        call: &'static str,
        name: String,
        in_flight: InFlightGuard,
        video: Arc<OpenVideo>,
        indices: Vec<FrameIndex>,
        spec: OutputSpec,
        transport: Transport,
    ) -> FrameStream {
        let limit = self.limits.max_message_size.0;
        let frames = match transport {
            Transport::Copying => self.store.frames_to_send(video, indices, spec).boxed(),
            Transport::Uncopied => self.store.frames(video, indices, spec).boxed(),
        };
        Box::pin(frames.map(move |r| {
            let _ = &in_flight;
            r.map_err(Error::from).and_then(|f| fits(to_message(f), limit)).map_err(|e| report(call, &name, "", e))
        }))
    }

    /// [`FrameService::frame_stream`] for a selection of a file being indexed, delivered as its
    /// decode pass counts the frames ([`FrameStore::frames_as_counted`]).
    fn frames_as_counted(
        &self,
        name: String,
        in_flight: InFlightGuard,
        counting: Counting,
        spec: OutputSpec,
        transport: Transport,
    ) -> FrameStream {
        let limit = self.limits.max_message_size.0;
        let store = self.store.clone();
        let frames = FrameStore::frames_as_counted(counting, move |video, indices| match transport {
            Transport::Copying => store.frames_to_send(video, indices, spec).left_stream(),
            Transport::Uncopied => store.frames(video, indices, spec).right_stream(),
        });
        Box::pin(frames.map(move |r| {
            let _ = &in_flight;
            r.and_then(|f| fits(to_message(f), limit)).map_err(|e| report("RequestFrames", &name, "", e))
        }))
    }
}

/// The frame, if its message fits in `limit` bytes: checked before tonic encodes it, so the
/// client learns the frame's size and what to do instead of a transport error.
fn fits(frame: pb::Frame, limit: u64) -> Result<pb::Frame, Error> {
    /// The fields beside `data`, with room to spare.
    const OVERHEAD: u64 = 256;
    let bytes = frame.data.len() as u64;
    if bytes + OVERHEAD <= limit {
        return Ok(frame);
    }
    let format = match (pb::Encoding::try_from(frame.encoding), pb::PixelFormat::try_from(frame.pixel_format)) {
        (Ok(pb::Encoding::Raw), Ok(p)) => format!("{} raw", p.as_str_name().to_ascii_lowercase()),
        (Ok(e), _) => e.as_str_name().to_ascii_lowercase(),
        _ => String::new(),
    };
    let (index, width, height) = (frame.index, frame.width, frame.height);
    Err(RequestError::FrameTooLarge { index, bytes, width, height, format, limit }.into())
}

fn range(r: pb::IndexRange) -> Selection {
    Selection::Range { start: r.start, stop: r.stop, step: r.step }
}

fn time_range(t: pb::TimeRange) -> Selection {
    Selection::TimeRange { start_s: t.start_s, stop_s: t.stop_s }
}

fn to_message(frame: Frame) -> pb::Frame {
    let m = frame.meta;
    pb::Frame {
        index: m.index.0 as i64,
        pts: m.pts,
        time_s: m.time_s,
        duration_s: m.duration_s,
        width: m.width,
        height: m.height,
        encoding: match m.encoding {
            Encoding::Raw => pb::Encoding::Raw,
            Encoding::Png => pb::Encoding::Png,
            Encoding::Jpeg => pb::Encoding::Jpeg,
        } as i32,
        pixel_format: match m.pixel_format {
            PixelFormat::Rgb24 => pb::PixelFormat::Rgb24,
            PixelFormat::Bgr24 => pb::PixelFormat::Bgr24,
            PixelFormat::Rgba => pb::PixelFormat::Rgba,
            PixelFormat::Gray8 => pb::PixelFormat::Gray8,
        } as i32,
        key_frame: m.key_frame,
        data: frame.data,
        cache_hit: frame.cache_hit,
    }
}

/// Log an error the way an operator wants it: which call, which video, what happened.
pub(crate) fn report(call: &str, video: &str, target: &str, e: Error) -> Status {
    tracing::warn!(call, video, target, code = ?e.code(), error = %e, "request failed");
    e.into()
}

/// The bound of one unary call: the server's `limits.request_timeout_s`, or the client's own
/// deadline (its `grpc-timeout`) when that comes first. The client's is taken early (a tenth of
/// it, 5 ms to 250 ms), so the client reads this service's DEADLINE_EXCEEDED rather than its own
/// timer's error: the client's timer started before the request reached us (tonic's fires with
/// CANCELLED), and the answer still has to travel back, later still on a loaded machine.
pub(crate) fn deadline<T>(server: Duration, request: &Request<T>) -> Deadline {
    let client = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
    match client {
        Some(c) if c <= server => {
            let margin = (c / 10).clamp(Duration::from_millis(5), Duration::from_millis(250));
            Deadline::Client(c, c.saturating_sub(margin))
        }
        _ => Deadline::Server(server),
    }
}

/// Which deadline bounds a call, and when it fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Deadline {
    Server(Duration),
    /// The client's deadline, and when to answer (a little before it).
    Client(Duration, Duration),
    /// None: a stream without a deadline of its own waits as long as it takes.
    Unbounded,
}

/// The bound of a stream's setup (opening the video, checking the selection): the client's own
/// deadline if it set one, taken early as for unary calls, so that a client whose deadline passes
/// while the video is still being indexed is told so. Streams are not bounded by the server.
pub(crate) fn stream_deadline<T>(request: &Request<T>) -> Deadline {
    match deadline(Duration::MAX, request) {
        Deadline::Server(_) => Deadline::Unbounded,
        client => client,
    }
}

impl Deadline {
    pub(crate) async fn bound<T>(self, fut: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match self {
            Deadline::Server(limit) => with_timeout(limit, fut).await,
            Deadline::Client(deadline, fire) => match tokio::time::timeout(fire, fut).await {
                Ok(r) => r,
                Err(_) => Err(RequestError::ClientDeadline(deadline.as_secs_f64()).into()),
            },
            Deadline::Unbounded => fut.await,
        }
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(RequestError::Timeout(limit.as_secs_f64()).into()),
    }
}

pub type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::Frame, Status>> + Send + 'static>>;

/// How the transport sends a streamed frame, which decides what the frame stays paid for (see
/// [`FrameStore::frames_to_send`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// tonic's codec copies the frame into a buffer of its own and drops the frame: the copy
    /// is paid for until the next frame is asked for.
    Copying,
    /// The frame's own bytes go to HTTP/2 ([`super::grpc_frames`]): its payment travels with
    /// them until HTTP/2 has written them.
    Uncopied,
}
type HashStream = Pin<Box<dyn Stream<Item = Result<pb::FrameHash, Status>> + Send + 'static>>;
type ClipStream = Pin<Box<dyn Stream<Item = Result<pb::ClipChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::frame_server_server::FrameServer for FrameService {
    async fn get_video_info(
        &self,
        request: Request<pb::GetVideoInfoRequest>,
    ) -> Result<Response<pb::VideoInfo>, Status> {
        let bound = deadline(self.request_timeout(), &request);
        let req = request.into_inner();
        let span = tracing::debug_span!("GetVideoInfo", video = %req.video);
        let info = self
            .within(bound, &req.video, self.info(&req.video, req.while_indexing))
            .instrument(span)
            .await
            .map_err(|e| report("GetVideoInfo", &req.video, "", e))?;
        Ok(Response::new(info))
    }

    async fn list_videos(
        &self,
        request: Request<pb::ListVideosRequest>,
    ) -> Result<Response<pb::ListVideosResponse>, Status> {
        let videos = self.list(request.into_inner().prefix).await?;
        Ok(Response::new(pb::ListVideosResponse { videos }))
    }

    async fn request_frame(&self, request: Request<pb::FrameRequest>) -> Result<Response<pb::Frame>, Status> {
        let _in_flight = self.in_flight.enter();
        let bound = deadline(self.request_timeout(), &request);
        let req = request.into_inner();
        let video = req.video.clone();
        let target = format!("{:?}", req.target);
        let span = tracing::debug_span!("RequestFrame", video = %video, target = %target);
        let frame = self
            .within(bound, &video, self.request_frame_inner(req))
            .instrument(span.clone())
            .await
            .map_err(|e| report("RequestFrame", &video, &target, e))?;
        span.in_scope(|| {
            tracing::debug!(index = frame.index, cache_hit = frame.cache_hit, bytes = frame.data.len(), "served")
        });
        Ok(Response::new(frame))
    }

    type RequestFramesStream = FrameStream;

    async fn request_frames(&self, request: Request<pb::FramesRequest>) -> Result<Response<FrameStream>, Status> {
        self.frames_sent_by(request, Transport::Copying).await.map(Response::new)
    }

    type GetFrameHashesStream = HashStream;

    async fn get_frame_hashes(&self, request: Request<pb::FrameHashesRequest>) -> Result<Response<HashStream>, Status> {
        let _in_flight = self.in_flight.enter();
        let bound = stream_deadline(&request);
        let req = request.into_inner();
        let name = req.video.clone();
        let (video, mut indices) = self
            .within(bound, &name, self.hashes_setup(&req))
            .await
            .map_err(|e| report("GetFrameHashes", &name, "", e))?;
        let (store, md5) = (self.store.clone(), req.md5);
        let stream = futures::stream::once(async move { store.hashes(&video, md5).await.map(|t| (video, t)) })
            .flat_map(move |result| {
                // Called once: the stream has one item.
                let indices = std::mem::take(&mut indices);
                let _ = &_in_flight;
                match result {
                    Ok((video, table)) => futures::stream::iter(indices.into_iter().map(move |i| {
                        let f = &table.frames[i.get()];
                        Ok(pb::FrameHash {
                            index: i64::from(i.0),
                            time_s: video.index.frames[i.get()].time_s,
                            ahash: f.ahash,
                            dhash: f.dhash,
                            md5: if md5 { f.md5.map(|m| m.to_vec()).unwrap_or_default() } else { Vec::new() },
                        })
                    }))
                    .left_stream(),
                    Err(e) => futures::stream::once(futures::future::ready(Err(report(
                        "GetFrameHashes",
                        &name,
                        "",
                        e.into(),
                    ))))
                    .right_stream(),
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn find_duplicates(
        &self,
        request: Request<pb::FindDuplicatesRequest>,
    ) -> Result<Response<pb::DuplicatesReport>, Status> {
        let _in_flight = self.in_flight.enter();
        let bound = deadline(self.request_timeout(), &request);
        let req = request.into_inner();
        let name = req.video.clone();
        let report = self
            .within(bound, &name, self.duplicates_inner(req))
            .await
            .map_err(|e| report("FindDuplicates", &name, "", e))?;
        Ok(Response::new(report))
    }

    type RequestKeyframesStream = FrameStream;

    async fn request_keyframes(&self, request: Request<pb::KeyframesRequest>) -> Result<Response<FrameStream>, Status> {
        let in_flight = self.in_flight.enter();
        let bound = stream_deadline(&request);
        let req = request.into_inner();
        let name = req.video.clone();
        let setup = async {
            let spec = self.output_spec(req.output.as_ref())?;
            let video = self.open(&req.video, Class::Stream).await?;
            let within = req.time_range.map(|t| (t.start_s, t.stop_s));
            let indices = self.selection(&video, Some(Selection::Keyframes { every: req.every, within }))?;
            Ok::<_, Error>((video, indices, spec))
        };
        let (video, indices, spec) =
            self.within(bound, &name, setup).await.map_err(|e| report("RequestKeyframes", &name, "", e))?;
        Ok(Response::new(self.frame_stream(
            "RequestKeyframes",
            name,
            in_flight,
            video,
            indices,
            spec,
            Transport::Copying,
        )))
    }

    async fn get_storyboard(
        &self,
        request: Request<pb::StoryboardRequest>,
    ) -> Result<Response<pb::Storyboard>, Status> {
        let _in_flight = self.in_flight.enter();
        let bound = deadline(self.request_timeout(), &request);
        let req = request.into_inner();
        let name = req.video.clone();
        let board = self
            .within(bound, &name, self.storyboard_inner(req))
            .await
            .map_err(|e| report("GetStoryboard", &name, "", e))?;
        Ok(Response::new(board))
    }

    type ExportClipStream = ClipStream;

    async fn export_clip(&self, request: Request<pb::ClipRequest>) -> Result<Response<ClipStream>, Status> {
        let in_flight = self.in_flight.enter();
        let bound = stream_deadline(&request);
        let req = request.into_inner();
        let name = req.video.clone();
        let (video, frames, spec, codec) =
            self.within(bound, &name, self.clip_setup(&req)).await.map_err(|e| report("ExportClip", &name, "", e))?;
        let mut content_type = Some(crate::engine::clip::content_type(&codec).to_string());
        tracing::debug!(video = %name, frames = frames.len(), ?codec, "ExportClip");
        let stream = self.store.clip(video, frames, spec, codec).map(move |r| {
            let _ = &in_flight;
            r.map(|c| pb::ClipChunk {
                data: c.data,
                content_type: content_type.take().unwrap_or_default(),
                frames: c.frames as i64,
            })
            .map_err(|e| report("ExportClip", &name, "", e.into()))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_stats(&self, _request: Request<pb::GetStatsRequest>) -> Result<Response<pb::Stats>, Status> {
        let s = self.store.stats();
        Ok(Response::new(pb::Stats {
            cache_bytes: s.cache.bytes,
            cache_capacity_bytes: s.cache.capacity,
            cache_entries: s.cache.entries,
            cache_hits: s.cache.hits,
            cache_misses: s.cache.misses,
            cache_evictions: s.cache.evictions,
            cache_rejected: s.cache.rejected,
            open_decoders: s.open_decoders,
            seeks: s.seeks,
            frames_decoded: s.frames_decoded,
            abandoned: s.abandoned,
            preempted: s.preempted,
            joined: s.joined,
            stream_segments: s.stream_segments,
            inflight_bytes: s.inflight_bytes,
            videos_indexed: s.videos_indexed,
            requests: s.requests,
            videos_indexing: s.videos_indexing,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_the_earlier_deadline_wins() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789m"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        let mut r = Request::new(());
        let server = Duration::from_secs(60);
        assert_eq!(deadline(server, &r), Deadline::Server(server));
        r.metadata_mut().insert("grpc-timeout", "100m".parse().unwrap());
        assert_eq!(deadline(server, &r), Deadline::Client(Duration::from_millis(100), Duration::from_millis(90)));
        r.metadata_mut().insert("grpc-timeout", "20m".parse().unwrap());
        assert_eq!(deadline(server, &r), Deadline::Client(Duration::from_millis(20), Duration::from_millis(15)));
        r.metadata_mut().insert("grpc-timeout", "30S".parse().unwrap());
        assert_eq!(deadline(server, &r), Deadline::Client(Duration::from_secs(30), Duration::from_millis(29_750)));
        r.metadata_mut().insert("grpc-timeout", "2M".parse().unwrap());
        assert_eq!(deadline(server, &r), Deadline::Server(server));
    }
}
