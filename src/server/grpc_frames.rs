//! `RequestFrame` and `RequestFrames` answered without copying the pixels.
//!
//! Why: tonic's codec writes every message into a buffer of its own, so each frame's pixels
//! were copied once more on their way out (2.7 MB per 720p frame; about a tenth of a core at
//! the rate a cached 720p stream goes out, on a machine where the client and the decoders
//! share the cores). HTTP/2 can send a frame's `Bytes` as they are (hyper hands data chunks to
//! h2, which writes large ones from the buffer it was given), so for these two methods this
//! layer writes the gRPC messages itself: the message prefix and every field but `data` in one
//! small chunk, then the pixels (field 10, written last: protobuf parsers take fields in any
//! order) as the cache holds them.
//!
//! Two wires, requests uncompressed: gRPC over HTTP/2 (`application/grpc`, `+proto`), and
//! binary gRPC-web (`application/grpc-web`, `+proto`; HTTP/1.1 or 2), what browser clients such
//! as Connect's send: the same messages, the status written as a last message flagged 0x80
//! instead of HTTP trailers, which browsers cannot read. Anything else (gRPC-web-text, a
//! compressed request, gRPC over HTTP/1.1) goes on to tonic, which answers it as before. The
//! requests run through the service's own methods, with the request's metadata (its
//! `grpc-timeout`), so errors, deadlines and limits are the service's; this layer only frames
//! messages and statuses as tonic and tonic-web would. A frame's in-flight payment rides on its
//! bytes until the connection has written them ([`Transport::Uncopied`]), so a slow reader's
//! unary frame is paid for too, where tonic's path pays for a streamed frame's copy only until
//! the next is asked for, and for a unary one's not at all.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{self, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use prost::Message;
use tonic::Status;

use crate::proto::v1 as pb;
use crate::proto::v1::frame_server_server::FrameServer;
use crate::server::service::{FrameService, FrameStream, Transport};

const REQUEST_FRAME: &str = "/framesrv.v1.FrameServer/RequestFrame";
const REQUEST_FRAMES: &str = "/framesrv.v1.FrameServer/RequestFrames";
/// The largest request message taken, as tonic's `max_decoding_message_size` on the service.
pub const MAX_REQUEST: usize = 4 << 20;
/// `Frame.data`'s field number.
const DATA_FIELD: u32 = 10;

/// The middleware: answers the two frame methods when the request comes on a wire it writes
/// (see the module docs), and passes every other request on.
pub async fn answer(State(service): State<Arc<FrameService>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let unary = match path {
        REQUEST_FRAME => true,
        REQUEST_FRAMES => false,
        _ => return next.run(request).await,
    };
    let Some(wire) = Wire::of(&request) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
    let message = match axum::body::to_bytes(body, MAX_REQUEST + 5).await {
        Ok(bytes) => bytes,
        Err(e) => return wire.status(Status::resource_exhausted(format!("reading the request: {e}"))),
    };
    let frames = if unary {
        match request_message::<pb::FrameRequest>(&message) {
            Ok(req) => service
                .request_frame(tonic::Request::from_parts(metadata, parts.extensions, req))
                .await
                .map(|frame| futures::stream::iter([Ok(frame.into_inner())]).boxed()),
            Err(status) => Err(status),
        }
    } else {
        match request_message::<pb::FramesRequest>(&message) {
            Ok(req) => {
                let request = tonic::Request::from_parts(metadata, parts.extensions, req);
                service.frames_sent_by(request, Transport::Uncopied).await
            }
            Err(status) => Err(status),
        }
    };
    match frames {
        Ok(frames) => wire.respond(frames),
        Err(status) => wire.status(status),
    }
}

/// The wires this layer writes: protobuf, the request uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wire {
    /// gRPC over HTTP/2: the status in the HTTP trailers.
    Grpc,
    /// Binary gRPC-web, over HTTP/1.1 or 2: the status in a last message flagged 0x80; the
    /// response's content type is the request's.
    GrpcWeb(HeaderValue),
}

impl Wire {
    fn of(request: &Request) -> Option<Wire> {
        let headers = request.headers();
        let content_type = headers.get(http::header::CONTENT_TYPE)?;
        let identity = headers.get("grpc-encoding").is_none_or(|v| v.as_bytes() == b"identity");
        if request.method() != http::Method::POST || !identity {
            return None;
        }
        match content_type.as_bytes() {
            b"application/grpc" | b"application/grpc+proto" if request.version() == http::Version::HTTP_2 => {
                Some(Wire::Grpc)
            }
            b"application/grpc-web" | b"application/grpc-web+proto" => Some(Wire::GrpcWeb(content_type.clone())),
            _ => None,
        }
    }

    /// A response: headers now, then the messages, then the status.
    fn respond(&self, frames: FrameStream) -> Response {
        let web = matches!(self, Wire::GrpcWeb(_));
        let mut response = Response::new(Body::new(Messages { frames, pixels: None, web, done: false }));
        response.headers_mut().insert(http::header::CONTENT_TYPE, self.content_type());
        *response.status_mut() = StatusCode::OK;
        response
    }

    /// A response of a status alone (an error before any message), in the headers: gRPC's
    /// trailers-only response, which gRPC-web clients read the same way.
    fn status(&self, status: Status) -> Response {
        let mut response: Response = status.into_http();
        response.headers_mut().insert(http::header::CONTENT_TYPE, self.content_type());
        response
    }

    fn content_type(&self) -> HeaderValue {
        match self {
            Wire::Grpc => HeaderValue::from_static("application/grpc"),
            Wire::GrpcWeb(content_type) => content_type.clone(),
        }
    }
}

/// The one message of a request body (the 5-byte gRPC prefix, then the message).
fn request_message<T: Message + Default>(body: &[u8]) -> Result<T, Status> {
    let Some((prefix, message)) = body.split_at_checked(5) else {
        return Err(Status::internal("the request carries no message"));
    };
    if prefix[0] != 0 {
        return Err(Status::internal(
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ));
    }
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if length != message.len() {
        return Err(Status::internal(format!(
            "the request's message is {} bytes where its prefix says {length} (one message per call)",
            message.len()
        )));
    }
    if length > MAX_REQUEST {
        return Err(Status::resource_exhausted(format!(
            "the request's message is {length} bytes, more than the {MAX_REQUEST} taken"
        )));
    }
    T::decode(message).map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))
}

/// One gRPC message for `frame`, in two chunks: the prefix with every field but `data`, and
/// `data` itself, not copied (`None` when it is empty).
pub fn encode(mut frame: pb::Frame) -> (Bytes, Option<Bytes>) {
    let data = std::mem::take(&mut frame.data);
    let rest = frame.encoded_len();
    let data_field = if data.is_empty() {
        0
    } else {
        prost::encoding::key_len(DATA_FIELD) + prost::encoding::encoded_len_varint(data.len() as u64) + data.len()
    };
    let mut head = BytesMut::with_capacity(5 + rest + 16);
    head.put_u8(0);
    head.put_u32((rest + data_field) as u32);
    frame.encode_raw(&mut head);
    if data.is_empty() {
        return (head.freeze(), None);
    }
    prost::encoding::encode_key(DATA_FIELD, prost::encoding::WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint(data.len() as u64, &mut head);
    (head.freeze(), Some(data))
}

/// The response body: each frame as [`encode`] makes it, then the status (`grpc-status` 0, or
/// the stream's error, after which nothing more is sent): HTTP trailers, or for gRPC-web the
/// message [`web_trailers`] makes.
struct Messages {
    frames: FrameStream,
    /// The pixels of the message whose head went out last.
    pixels: Option<Bytes>,
    web: bool,
    done: bool,
}

/// gRPC-web's trailers: a message flagged 0x80 of `name:value` lines, as tonic-web writes them.
fn web_trailers(trailers: &HeaderMap) -> Bytes {
    let mut lines = BytesMut::new();
    for (name, value) in trailers {
        lines.put_slice(name.as_str().as_bytes());
        lines.put_u8(b':');
        lines.put_slice(value.as_bytes());
        lines.put_slice(b"\r\n");
    }
    let mut message = BytesMut::with_capacity(5 + lines.len());
    message.put_u8(0x80);
    message.put_u32(lines.len() as u32);
    message.put_slice(&lines);
    message.freeze()
}

impl http_body::Body for Messages {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(pixels) = self.pixels.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(pixels))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.frames.poll_next_unpin(cx)) {
            Some(Ok(frame)) => {
                let (head, pixels) = encode(frame);
                self.pixels = pixels;
                return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from(tonic::Code::Internal as i32));
        }
        if self.web {
            return Poll::Ready(Some(Ok(http_body::Frame::data(web_trailers(&trailers)))));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pixels.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &'static [u8]) -> pb::Frame {
        pb::Frame {
            index: 18342,
            time_s: 611.4,
            width: 1280,
            height: 720,
            cache_hit: true,
            data: Bytes::from_static(data),
            ..Default::default()
        }
    }

    /// What a client reads: the prefix, then the message the chunks make together.
    fn read(head: &Bytes, pixels: &Option<Bytes>) -> pb::Frame {
        let mut all = head.to_vec();
        if let Some(p) = pixels {
            all.extend_from_slice(p);
        }
        assert_eq!(all[0], 0, "not compressed");
        let length = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(length, all.len() - 5, "the prefix gives the message's length");
        pb::Frame::decode(&all[5..]).unwrap()
    }

    #[test]
    fn a_frame_reads_back_whole_with_its_pixels_sent_as_they_are() {
        let pixels: &'static [u8] = &[7; 300_000];
        let f = frame(pixels);
        let (head, data) = encode(f.clone());
        assert!(head.len() < 64, "the head carries only the small fields");
        let data_chunk = data.clone().expect("pixels as a chunk of their own");
        assert_eq!(data_chunk.as_ptr(), pixels.as_ptr(), "the pixels are not copied");
        assert_eq!(read(&head, &data), f);
    }

    #[test]
    fn a_frame_without_pixels_is_one_chunk() {
        let f = frame(&[]);
        let (head, data) = encode(f.clone());
        assert!(data.is_none());
        assert_eq!(read(&head, &data), f);
    }

    #[test]
    fn grpc_web_trailers_are_a_message_flagged_0x80_of_header_lines() {
        let mut trailers = HeaderMap::new();
        Status::not_found("no video a b.mp4").add_header(&mut trailers).unwrap();
        let message = web_trailers(&trailers);
        assert_eq!(message[0], 0x80);
        let length = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
        assert_eq!(length, message.len() - 5);
        let text = std::str::from_utf8(&message[5..]).unwrap();
        assert!(text.starts_with("grpc-status:5\r\n"), "{text}");
        assert!(text.contains("grpc-message:no%20video%20a%20b.mp4\r\n"), "{text}");
    }

    #[test]
    fn a_request_body_is_one_uncompressed_message_of_the_length_its_prefix_gives() {
        let req = pb::FrameRequest { video: "a.mp4".into(), ..Default::default() };
        let mut body = vec![0];
        body.extend_from_slice(&(req.encoded_len() as u32).to_be_bytes());
        body.extend_from_slice(&req.encode_to_vec());
        assert_eq!(request_message::<pb::FrameRequest>(&body).unwrap(), req);
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(request_message::<pb::FrameRequest>(&compressed).unwrap_err().code(), tonic::Code::Internal);
        let mut two = body.clone();
        two.extend_from_slice(&body);
        assert_eq!(request_message::<pb::FrameRequest>(&two).unwrap_err().code(), tonic::Code::Internal);
        assert_eq!(request_message::<pb::FrameRequest>(&body[..3]).unwrap_err().code(), tonic::Code::Internal);
        let garbage = [0, 0, 0, 0, 2, 0xff, 0xff];
        assert_eq!(request_message::<pb::FrameRequest>(&garbage).unwrap_err().code(), tonic::Code::Internal);
    }
}
