//! The one place errors become gRPC statuses and HTTP responses.
//!
//! Every module has its own typed error; the service wraps them in [`Error`], and the single
//! `From<Error> for Status` below gives each variant a deliberate code; [`http_status`] maps
//! each code to the HTTP status the HTTP routes answer with (the JSON body carries the code's
//! name too, so a client can tell OUT_OF_RANGE from INVALID_ARGUMENT without the status). The matches list every
//! variant with no catch-all, so a new error cannot ship without choosing its code. Messages
//! say what was wrong and with which value, and never reveal paths outside the media roots.

use tonic::{Code, Status};

use crate::engine::selection::SelectionError;
use crate::engine::EngineError;
use crate::media_roots::RootsError;

/// Problems with the request itself, found before any file is touched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("no video named: set `video` to a name relative to a media root")]
    MissingVideo,
    #[error("no target: set either `index` or `time_s`")]
    MissingTarget,
    #[error("no selection: set one of `range`, `time_range` or `indices`")]
    MissingSelection,
    #[error("time_s = {0} is not a finite number of seconds")]
    BadTime(f64),
    #[error("{field} = {value} is not a known value")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field} = {value} exceeds the limit of {max}")]
    TooLarge { field: &'static str, value: u64, max: u64 },
    #[error("the request selects {count} frames; at most {max} are allowed in one call")]
    BatchTooLarge { count: u64, max: u64 },
    #[error("{0}")]
    BadRange(String),
    #[error("{field} = {value:?} is not one of {expected}")]
    NotOneOf { field: &'static str, value: String, expected: &'static str },
    #[error("the request took longer than {0:.1}s")]
    Timeout(f64),
    #[error("the client's deadline ({0:.3}s) passed before the answer was ready")]
    ClientDeadline(f64),
    #[error(
        "{reason}: video {video} is still being indexed ({progress}; a file without timestamps is decoded whole the \
         first time it is opened); that goes on without the request: ask again later"
    )]
    StillIndexing { video: String, reason: String, progress: String },
    #[error("the video changed: the URL names content {asked}, the file is now {now}")]
    StaleVersion { asked: String, now: String },
    #[error("the frame server is draining before it stops: retry on another replica or later")]
    Draining,
    #[error(
        "frame {index} is {bytes} bytes ({width}x{height} {format}), more than limits.max_message_size ({limit} \
         bytes) allows in one message: ask for a smaller output.max_width / max_height, PNG or JPEG, or raise the limit"
    )]
    FrameTooLarge { index: i64, bytes: u64, width: u32, height: u32, format: String, limit: u64 },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<SelectionError> for Error {
    fn from(e: SelectionError) -> Self {
        match e {
            SelectionError::BadRange(m) => Error::Request(RequestError::BadRange(m)),
            SelectionError::BadTime(t) => Error::Request(RequestError::BadTime(t)),
            SelectionError::TooMany { count, max } => Error::Request(RequestError::BatchTooLarge { count, max }),
            SelectionError::Engine(e) => Error::Engine(e),
        }
    }
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Request(e) => match e {
                RequestError::MissingVideo
                | RequestError::MissingTarget
                | RequestError::MissingSelection
                | RequestError::BadTime(_)
                | RequestError::UnknownEnum { .. }
                | RequestError::TooLarge { .. }
                | RequestError::BatchTooLarge { .. }
                | RequestError::BadRange(_)
                | RequestError::NotOneOf { .. } => Code::InvalidArgument,
                RequestError::Timeout(_) | RequestError::ClientDeadline(_) | RequestError::StillIndexing { .. } => {
                    Code::DeadlineExceeded
                }
                RequestError::StaleVersion { .. } => Code::FailedPrecondition,
                RequestError::Draining => Code::Unavailable,
                RequestError::FrameTooLarge { .. } => Code::ResourceExhausted,
            },
            Error::Roots(e) => match e {
                RootsError::NotFound { .. } => Code::NotFound,
                RootsError::Forbidden { .. } | RootsError::Unreadable { .. } => Code::PermissionDenied,
                RootsError::Invalid { .. } => Code::InvalidArgument,
            },
            Error::Engine(e) => match e {
                EngineError::NotAVideo { .. }
                | EngineError::NoVideoStream { .. }
                | EngineError::UnsupportedCodec { .. } => Code::InvalidArgument,
                EngineError::NoFrames { .. }
                | EngineError::FrameUnavailable { .. }
                | EngineError::DecodeFailed { .. } => Code::DataLoss,
                EngineError::IndexOutOfRange { .. } | EngineError::TimeOutOfRange { .. } => Code::OutOfRange,
                EngineError::EncodeFailed { .. } | EngineError::Panicked { .. } => Code::Internal,
                EngineError::EncoderMissing { .. } => Code::FailedPrecondition,
                EngineError::Overloaded { .. } => Code::ResourceExhausted,
                EngineError::ShuttingDown | EngineError::Preempted => Code::Unavailable,
                EngineError::Changed { .. } | EngineError::ChangedWhileRead { .. } => Code::Aborted,
                EngineError::Vanished { .. } => Code::NotFound,
            },
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// The HTTP status that answers a gRPC code: Google's HTTP mapping for gRPC codes, except
/// OUT_OF_RANGE, which is 416 (the frame or time is past the video's end) rather than 400.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition => 400,
        Code::OutOfRange => 416,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// The code's name as the gRPC spec writes it (`NOT_FOUND`), for JSON error bodies.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
