"""framesrv's Python client: frame-exact video frames by index or time, as numpy arrays.

    import framesrv
    with framesrv.Client("127.0.0.1:50051") as fs:
        rgb = fs.frame("sample.mp4", index=42)      # uint8 array (height, width, 3)
"""

from framesrv.client import (
    Aborted,
    Client,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FramesrvError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "Client",
    "FramesrvError",
    "NotFound",
    "OutOfRange",
    "InvalidArgument",
    "PermissionDenied",
    "DeadlineExceeded",
    "Unavailable",
    "ResourceExhausted",
    "DataLoss",
    "FailedPrecondition",
    "Aborted",
]
__version__ = "0.1.0"
