//! HTTP beside gRPC, on the same port: frames as URLs, video info as JSON, the viewer page,
//! health and readiness for load balancers, and Prometheus metrics.
//!
//! Every route only translates: it builds the request the gRPC service would get, hands it to
//! the same [`FrameService`] (so the media-root rules, limits and errors are the gRPC ones), and
//! turns the answer into HTTP. Errors become `{"code", "message"}` JSON with the status
//! [`crate::error::http_status`] gives their code.
//!
//! Frames are made for HTTP caches: the ETag is strong and names the file's content key, the
//! frame and the output spec, so `If-None-Match` is answered with 304 before anything is
//! decoded, and a changed file gets new ETags. A URL carrying `?v=<content_key>` (the key
//! `GET /v1/videos/{video}` reports) names bytes that never change and is cached for a year; a
//! plain URL is cached for `http.max_age_s`, after which a changed file is seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::engine::output::{Encoding, OutputSpec};
use crate::error::{code_name, http_status, Error, RequestError};
use crate::proto::v1 as pb;
use crate::server::metrics::Metrics;
use crate::server::service::{report, Deadline, FrameService};
use crate::units::FrameIndex;

/// The viewer page, embedded so that users need no build step.
const VIEWER: &str = include_str!("viewer.html");
/// How long a URL naming its content key (`?v=`) may be cached: a year, as for any
/// content-addressed asset.
const VERSIONED_MAX_AGE: u32 = 31_536_000;

#[derive(Clone)]
pub struct HttpState {
    pub service: Arc<FrameService>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins: readiness fails and new frame requests get 503.
    pub draining: Arc<AtomicBool>,
    /// `Cache-Control: max-age` of frame URLs without `?v=`.
    pub max_age_s: u32,
}

/// The HTTP routes. Video names may contain `/`, so everything under `/v1/videos/` is one
/// wildcard that [`VideoRoute::parse`] splits from the end.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(viewer))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/videos", get(list))
        .route("/v1/videos/", get(list))
        .route("/v1/videos/{*rest}", get(video_route))
        .with_state(state)
}

/// A request's error as HTTP: the status its gRPC code maps to and a JSON body.
pub struct HttpError(Error);

impl<E: Into<Error>> From<E> for HttpError {
    fn from(e: E) -> Self {
        HttpError(e.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        error_response(self.0.code(), &self.0.to_string())
    }
}

/// A JSON error body with the status `code` maps to.
pub fn error_response(code: tonic::Code, message: &str) -> Response {
    let status = StatusCode::from_u16(http_status(code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "code": code_name(code), "message": message });
    let mut response = (status, axum::Json(body)).into_response();
    if code == tonic::Code::Unavailable {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn viewer() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], VIEWER).into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let text = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn list(State(state): State<HttpState>, Query(q): Query<HashMap<String, String>>) -> Result<Response, HttpError> {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let videos = state.service.list(prefix).await?;
    Ok(axum::Json(serde_json::json!({ "videos": videos })).into_response())
}

/// What a path under `/v1/videos/` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoRoute {
    Info(String),
    Frame(String, i64),
    At(String, f64),
    Storyboard(String),
}

impl VideoRoute {
    /// Split `rest` (the path after `/v1/videos/`, percent-decoded) from its end: `…/frames/{n}`,
    /// `…/at/{seconds}` and `…/storyboard` are routes, anything else is a video's name.
    pub fn parse(rest: &str) -> Result<VideoRoute, RequestError> {
        let bad = |m: String| Err(RequestError::BadRange(m));
        if let Some(video) = rest.strip_suffix("/storyboard") {
            return Ok(VideoRoute::Storyboard(video.to_string()));
        }
        let mut parts = rest.rsplitn(3, '/');
        let (last, kind, video) = (parts.next(), parts.next(), parts.next());
        match (kind, video, last) {
            (Some("frames"), Some(video), Some(n)) => match n.parse::<i64>() {
                Ok(i) => Ok(VideoRoute::Frame(video.to_string(), i)),
                Err(_) => bad(format!("frame index {n:?} is not an integer (negative counts from the end)")),
            },
            (Some("at"), Some(video), Some(t)) => match t.parse::<f64>() {
                Ok(s) if s.is_finite() => Ok(VideoRoute::At(video.to_string(), s)),
                _ => bad(format!("time {t:?} is not a finite number of seconds")),
            },
            _ => Ok(VideoRoute::Info(rest.to_string())),
        }
    }
}

async fn video_route(
    State(state): State<HttpState>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    match VideoRoute::parse(&rest)? {
        VideoRoute::Info(video) => {
            let bound = http_deadline(&state.service, &headers);
            let while_indexing = flag(&q, "while_indexing")?;
            let info = state.service.within(bound, &video, state.service.info(&video, while_indexing)).await?;
            Ok(axum::Json(info_json(&info)).into_response())
        }
        VideoRoute::Frame(video, i) => frame(&state, video, pb::frame_request::Target::Index(i), &q, &headers).await,
        VideoRoute::At(video, t) => frame(&state, video, pb::frame_request::Target::TimeS(t), &q, &headers).await,
        VideoRoute::Storyboard(video) => storyboard(&state, video, &q, &headers).await,
    }
}

/// How long a route may take: `limits.request_timeout_s`, or less when the request says
/// `Prefer: wait=N` (RFC 7240: the client wants an answer within N seconds). A page opening a
/// video that is still being indexed asks with a short wait and shows how far the indexing got
/// (the DEADLINE_EXCEEDED message says) instead of waiting out the server's limit.
fn http_deadline(service: &FrameService, headers: &HeaderMap) -> Deadline {
    let server = service.request_timeout();
    match headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).find_map(prefer_wait) {
        Some(wait) if wait < server => Deadline::Client(wait, wait),
        _ => Deadline::Server(server),
    }
}

/// The `wait` preference of one `Prefer` header value (`respond-async, wait=5`), in seconds.
fn prefer_wait(value: &str) -> Option<std::time::Duration> {
    value.split(',').find_map(|p| {
        let (key, seconds) = p.trim().split_once('=')?;
        let seconds: f64 = seconds.trim().trim_matches('"').parse().ok()?;
        (key.trim().eq_ignore_ascii_case("wait") && (0.0..=86400.0).contains(&seconds))
            .then(|| std::time::Duration::from_secs_f64(seconds))
    })
}

/// `VideoInfo` in the proto's JSON mapping, with the proto's field names. 64-bit integers are
/// JSON numbers (frame counts are far below 2^53), which proto3 JSON parsers accept too.
pub fn info_json(i: &pb::VideoInfo) -> serde_json::Value {
    serde_json::json!({
        "video": i.video,
        "frame_count": i.frame_count,
        "width": i.width,
        "height": i.height,
        "duration_s": i.duration_s,
        "avg_fps": i.avg_fps,
        "codec": i.codec,
        "pixel_format": i.pixel_format,
        "container": i.container,
        "keyframe_count": i.keyframe_count,
        "variable_frame_rate": i.variable_frame_rate,
        "start_time_s": i.start_time_s,
        "frame_identity": i.frame_identity,
        "content_key": i.content_key,
        "display_rotation": i.display_rotation,
        "sample_aspect_ratio": i.sample_aspect_ratio,
        "indexing": i.indexing,
    })
}

/// The output a frame URL asks for: `?format=` (jpeg, png, raw) or else the `Accept` header,
/// `?max_width=&max_height=&quality=&pixel_format=&upright=`.
pub fn output_from_query(q: &HashMap<String, String>, accept: Option<&str>) -> Result<pb::OutputSpec, RequestError> {
    const FORMATS: &str = "jpeg, png, raw";
    const PIXELS: &str = "rgb24, bgr24, rgba, gray8";
    let encoding = match q.get("format").map(|f| f.to_ascii_lowercase()) {
        Some(f) => match f.as_str() {
            "jpeg" | "jpg" => pb::Encoding::Jpeg,
            "png" => pb::Encoding::Png,
            "raw" => pb::Encoding::Raw,
            _ => return Err(RequestError::NotOneOf { field: "format", value: f, expected: FORMATS }),
        },
        None => from_accept(accept.unwrap_or("")),
    };
    let pixel_format = match q.get("pixel_format").map(|f| f.to_ascii_lowercase()) {
        None => pb::PixelFormat::Rgb24,
        Some(f) => match f.as_str() {
            "rgb24" => pb::PixelFormat::Rgb24,
            "bgr24" => pb::PixelFormat::Bgr24,
            "rgba" => pb::PixelFormat::Rgba,
            "gray8" | "gray" => pb::PixelFormat::Gray8,
            _ => return Err(RequestError::NotOneOf { field: "pixel_format", value: f, expected: PIXELS }),
        },
    };
    Ok(pb::OutputSpec {
        encoding: encoding as i32,
        pixel_format: pixel_format as i32,
        max_width: number(q, "max_width")?.unwrap_or(0),
        max_height: number(q, "max_height")?.unwrap_or(0),
        jpeg_quality: number(q, "quality")?.unwrap_or(0),
        upright: flag(q, "upright")?,
    })
}

/// The first of JPEG, PNG or raw bytes the `Accept` header names, JPEG when it names none
/// (browsers ask for `image/avif,image/webp,*/*`).
fn from_accept(accept: &str) -> pb::Encoding {
    accept
        .split(',')
        .filter_map(|part| match part.split(';').next().unwrap_or("").trim() {
            "image/jpeg" => Some(pb::Encoding::Jpeg),
            "image/png" => Some(pb::Encoding::Png),
            "application/octet-stream" => Some(pb::Encoding::Raw),
            _ => None,
        })
        .next()
        .unwrap_or(pb::Encoding::Jpeg)
}

fn number(q: &HashMap<String, String>, field: &'static str) -> Result<Option<u32>, RequestError> {
    q.get(field)
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| RequestError::BadRange(format!("{field} = {v:?} is not a non-negative integer")))
        })
        .transpose()
}

fn flag(q: &HashMap<String, String>, field: &'static str) -> Result<bool, RequestError> {
    match q.get(field).map(String::as_str) {
        None | Some("0") | Some("false") => Ok(false),
        Some("") | Some("1") | Some("true") => Ok(true),
        Some(v) => Err(RequestError::NotOneOf { field, value: v.into(), expected: "true, false, 1, 0" }),
    }
}

/// The strong ETag of one frame of one file's content at one output.
pub fn etag(content_key: &str, index: FrameIndex, spec: &OutputSpec) -> String {
    let encoding = match spec.encoding {
        Encoding::Raw => "raw",
        Encoding::Png => "png",
        Encoding::Jpeg => "jpeg",
    };
    format!(
        "\"{}-{}-{encoding}-{}-{}x{}-q{}{}\"",
        &content_key[..content_key.len().min(20)],
        index.0,
        spec.pixel_format.name(),
        spec.max_width,
        spec.max_height,
        spec.jpeg_quality,
        if spec.upright { "-upright" } else { "" }
    )
}

/// Whether an `If-None-Match` header names `tag` (or is `*`).
pub fn none_match(header: Option<&str>, tag: &str) -> bool {
    header
        .is_some_and(|h| h.split(',').map(str::trim).any(|t| t == "*" || t == tag || t.strip_prefix("W/") == Some(tag)))
}

async fn frame(
    state: &HttpState,
    video: String,
    target: pb::frame_request::Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(RequestError::Draining.into());
    }
    let _in_flight = state.service.enter();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let req = pb::FrameRequest {
        video: video.clone(),
        target: Some(target),
        output: Some(output_from_query(q, accept)?),
        clamp: flag(q, "clamp")?,
        keep_behind: number(q, "keep_behind")?,
    };
    let service = &state.service;
    let answer = async {
        let (open, index, spec) = service.resolve_frame(&req).await?;
        let key = open.content_key.hex();
        let max_age = match q.get("v") {
            None => state.max_age_s,
            Some(v) if *v == key => VERSIONED_MAX_AGE,
            Some(v) => return Err(RequestError::StaleVersion { asked: v.clone(), now: key }.into()),
        };
        let tag = etag(&key, index, &spec);
        let cache_control = format!("public, max-age={max_age}, immutable");
        let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
        if none_match(if_none_match, &tag) {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag), (header::CACHE_CONTROL, cache_control)])
                .into_response());
        }
        let frame = service.fetch_frame(&open, index, spec, req.keep_behind).await?;
        Ok::<_, Error>(frame_response(frame, tag, cache_control))
    };
    let target = format!("{:?}", req.target);
    service.within(http_deadline(service, headers), &video, answer).await.map_err(|e| {
        report("GET frame", &video, &target, e.clone());
        HttpError(e)
    })
}

fn frame_response(frame: pb::Frame, tag: String, cache_control: String) -> Response {
    let content_type = match pb::Encoding::try_from(frame.encoding) {
        Ok(pb::Encoding::Jpeg) => "image/jpeg",
        Ok(pb::Encoding::Png) => "image/png",
        _ => "application/octet-stream",
    };
    let pixel_format =
        pb::PixelFormat::try_from(frame.pixel_format).map(|p| p.as_str_name().to_ascii_lowercase()).unwrap_or_default();
    let headers = [
        ("content-type", content_type.to_string()),
        ("etag", tag),
        ("cache-control", cache_control),
        ("x-frame-index", frame.index.to_string()),
        ("x-frame-pts", frame.pts.to_string()),
        ("x-frame-time", format!("{}", frame.time_s)),
        ("x-frame-duration", format!("{}", frame.duration_s)),
        ("x-key-frame", frame.key_frame.to_string()),
        ("x-frame-width", frame.width.to_string()),
        ("x-frame-height", frame.height.to_string()),
        ("x-pixel-format", pixel_format),
    ];
    with_headers(frame.data, headers)
}

/// A response of `body` with `headers` (values that are not valid header text are left out;
/// every value here is ours: numbers, names, quoted tags).
fn with_headers(body: impl Into<Body>, headers: impl IntoIterator<Item = (&'static str, String)>) -> Response {
    let mut response = Response::new(body.into());
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// `GET /v1/videos/{video}/storyboard?tiles=&tile_width=&tile_height=&columns=&exact=&upright=`: the
/// storyboard JPEG, with its layout and each tile's frame in headers.
async fn storyboard(
    state: &HttpState,
    video: String,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(RequestError::Draining.into());
    }
    let _in_flight = state.service.enter();
    let req = pb::StoryboardRequest {
        video: video.clone(),
        tiles: number(q, "tiles")?.unwrap_or(50),
        tile_width: number(q, "tile_width")?.unwrap_or(0),
        tile_height: number(q, "tile_height")?.unwrap_or(0),
        columns: number(q, "columns")?.unwrap_or(0),
        exact: flag(q, "exact")?,
        jpeg_quality: number(q, "quality")?.unwrap_or(0),
        upright: flag(q, "upright")?,
    };
    let board = state
        .service
        .within(http_deadline(&state.service, headers), &video, state.service.storyboard_inner(req))
        .await
        .map_err(|e| {
            report("GET storyboard", &video, "", e.clone());
            HttpError(e)
        })?;
    let indices: Vec<String> = board.tiles.iter().map(|t| t.index.to_string()).collect();
    let first = board.tiles.first();
    let headers = [
        ("content-type", "image/jpeg".to_string()),
        ("cache-control", format!("public, max-age={}", state.max_age_s)),
        ("x-storyboard-columns", board.columns.to_string()),
        ("x-storyboard-rows", board.rows.to_string()),
        ("x-storyboard-tile-width", first.map_or(0, |t| t.width).to_string()),
        ("x-storyboard-tile-height", first.map_or(0, |t| t.height).to_string()),
        ("x-storyboard-frames", indices.join(",")),
    ];
    Ok(with_headers(board.image, headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::output::PixelFormat;

    #[test]
    fn the_wait_preference_is_read_from_prefer() {
        let secs = std::time::Duration::from_secs_f64;
        assert_eq!(prefer_wait("wait=5"), Some(secs(5.0)));
        assert_eq!(prefer_wait("respond-async, wait=2.5"), Some(secs(2.5)));
        assert_eq!(prefer_wait("handling=lenient"), None);
        assert_eq!(prefer_wait("wait=-1"), None);
        assert_eq!(prefer_wait("wait=soon"), None);
        assert_eq!(prefer_wait("wait=1e9"), None, "longer than a day");
    }

    #[test]
    fn paths_split_from_the_end_so_names_may_hold_slashes() {
        use VideoRoute::*;
        let p = |s: &str| VideoRoute::parse(s).unwrap();
        assert_eq!(p("a/b/c.mp4"), Info("a/b/c.mp4".into()));
        assert_eq!(p("a/b/c.mp4/frames/42"), Frame("a/b/c.mp4".into(), 42));
        assert_eq!(p("c.mp4/frames/-1"), Frame("c.mp4".into(), -1));
        assert_eq!(p("d/c.mp4/at/12.5"), At("d/c.mp4".into(), 12.5));
        assert_eq!(p("c.mp4/storyboard"), Storyboard("c.mp4".into()));
        // A name that merely contains the words is a name.
        assert_eq!(p("frames/at.mp4"), Info("frames/at.mp4".into()));
        assert!(VideoRoute::parse("c.mp4/frames/x").is_err());
        assert!(VideoRoute::parse("c.mp4/at/inf").is_err());
        assert!(VideoRoute::parse("c.mp4/at/NaN").is_err());
    }

    #[test]
    fn format_comes_from_the_query_then_accept_and_defaults_to_jpeg() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let enc = |q: &HashMap<String, String>, a: Option<&str>| output_from_query(q, a).unwrap().encoding;
        assert_eq!(enc(&q(&[]), None), pb::Encoding::Jpeg as i32);
        assert_eq!(enc(&q(&[]), Some("image/avif,image/webp,*/*;q=0.8")), pb::Encoding::Jpeg as i32);
        assert_eq!(enc(&q(&[]), Some("image/png")), pb::Encoding::Png as i32);
        assert_eq!(enc(&q(&[]), Some("application/octet-stream")), pb::Encoding::Raw as i32);
        assert_eq!(enc(&q(&[("format", "PNG")]), Some("image/jpeg")), pb::Encoding::Png as i32);
        assert!(output_from_query(&q(&[("format", "gif")]), None).is_err());
        assert!(output_from_query(&q(&[("max_width", "-3")]), None).is_err());
        let spec = output_from_query(&q(&[("max_width", "640"), ("quality", "70"), ("pixel_format", "gray8")]), None);
        let spec = spec.unwrap();
        assert_eq!((spec.max_width, spec.jpeg_quality), (640, 70));
        assert_eq!(spec.pixel_format, pb::PixelFormat::Gray8 as i32);
    }

    #[test]
    fn etags_differ_by_content_frame_and_output_and_match_if_none_match() {
        let spec = OutputSpec::default();
        let a = etag("00aa", FrameIndex(5), &spec);
        assert_ne!(a, etag("00ab", FrameIndex(5), &spec));
        assert_ne!(a, etag("00aa", FrameIndex(6), &spec));
        assert_ne!(a, etag("00aa", FrameIndex(5), &OutputSpec { max_width: 64, ..spec }));
        assert_ne!(a, etag("00aa", FrameIndex(5), &OutputSpec { pixel_format: PixelFormat::Gray8, ..spec }));
        assert_ne!(a, etag("00aa", FrameIndex(5), &OutputSpec { upright: true, ..spec }));
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert!(none_match(Some(&a), &a));
        assert!(none_match(Some(&format!("\"x\", {a}")), &a));
        assert!(none_match(Some("*"), &a));
        assert!(!none_match(Some("\"x\""), &a));
        assert!(!none_match(None, &a));
    }

    #[test]
    fn every_code_has_an_http_status_and_out_of_range_is_416() {
        assert_eq!(http_status(tonic::Code::OutOfRange), 416);
        assert_eq!(http_status(tonic::Code::NotFound), 404);
        assert_eq!(http_status(tonic::Code::PermissionDenied), 403);
        assert_eq!(http_status(tonic::Code::ResourceExhausted), 429);
        assert_eq!(http_status(tonic::Code::Unavailable), 503);
    }
}
