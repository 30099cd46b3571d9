"""The client: one gRPC channel to a daemon, frames as numpy arrays, errors as exceptions.

Every call sends the video's name in the `x-framesrv-video` metadata header, so that a load
balancer in front of several replicas can pin each video to one of them (see the README's
scale-out section). Frames come as raw RGB24 and are wrapped as arrays without copying.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import grpc
import numpy as np

from framesrv.v1 import framesrv_pb2 as pb
from framesrv.v1 import framesrv_pb2_grpc as pb_grpc

MaxSize = Union[None, int, Tuple[int, int]]


class FramesrvError(Exception):
    """A call the daemon (or the network) refused; `code` is the `grpc.StatusCode`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class NotFound(FramesrvError):
    pass


class OutOfRange(FramesrvError):
    pass


class InvalidArgument(FramesrvError):
    pass


class PermissionDenied(FramesrvError):
    pass


class DeadlineExceeded(FramesrvError, TimeoutError):
    pass


class Unavailable(FramesrvError):
    pass


class ResourceExhausted(FramesrvError):
    pass


class DataLoss(FramesrvError):
    pass


class FailedPrecondition(FramesrvError):
    pass


class Aborted(FramesrvError):
    """The file changed while the request waited for it to be indexed (it is being written?)."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
}


def _error(e: grpc.RpcError) -> FramesrvError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return _BY_CODE.get(code, FramesrvError)(code, details or "")


def _output(max_size: MaxSize, gray: bool = False, upright: bool = False) -> pb.OutputSpec:
    if max_size is None:
        w = h = 0
    elif isinstance(max_size, int):
        w = h = max_size
    else:
        w, h = max_size
    return pb.OutputSpec(encoding=pb.RAW, pixel_format=pb.GRAY8 if gray else pb.RGB24, max_width=w, max_height=h,
                         upright=upright)


def _array(frame: pb.Frame) -> np.ndarray:
    channels = 1 if frame.pixel_format == pb.GRAY8 else 4 if frame.pixel_format == pb.RGBA else 3
    a = np.frombuffer(frame.data, dtype=np.uint8)
    return a.reshape(frame.height, frame.width, channels) if channels > 1 else a.reshape(frame.height, frame.width)


class Client:
    """A connection to one framesrv daemon (or a load balancer in front of several).

    `timeout` (seconds) bounds each unary call and each whole stream; None waits for ever.
    `token` is sent as `authorization: Bearer <token>` (daemons with `auth.tokens_file`).
    `tls=True` connects with TLS, checking the server against `root_certificates` (PEM bytes)
    or the system's roots; `client_cert` and `client_key` (PEM bytes) for mutual TLS.
    """

    def __init__(self, addr: str = "127.0.0.1:50051", timeout: Optional[float] = 60.0,
                 max_message_bytes: int = 256 << 20, token: Optional[str] = None, tls: bool = False,
                 root_certificates: Optional[bytes] = None, client_cert: Optional[bytes] = None,
                 client_key: Optional[bytes] = None):
        self.addr = addr
        self.timeout = timeout
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 << 20),
        ]
        if tls or root_certificates:
            credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
            self._channel = grpc.secure_channel(addr, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(addr, options=options)
        self._stub = pb_grpc.FrameServerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, video: str = "", timeout: Optional[float] = None):
        # Percent-encoded as in an HTTP frame URL's path (metadata values are ASCII), so that a
        # balancer hashing the header and one hashing the path agree.
        metadata = self._auth + ((("x-framesrv-video", quote(video, safe="/")),) if video else ())
        try:
            return method(request, timeout=timeout or self.timeout, metadata=metadata or None)
        except grpc.RpcError as e:
            raise _error(e) from None

    def _stream(self, method, request, video: str, timeout: Optional[float] = None) -> Iterator:
        try:
            yield from self._call(method, request, video, timeout)
        except grpc.RpcError as e:
            raise _error(e) from None

    # Videos ---------------------------------------------------------------------------------

    def videos(self, prefix: str = "") -> list:
        """Names of the videos under the daemon's media roots starting with `prefix`."""
        return list(self._call(self._stub.ListVideos, pb.ListVideosRequest(prefix=prefix)).videos)

    def info(self, video: str, while_indexing: bool = False) -> pb.VideoInfo:
        """The video's description: frame_count, width, height, duration_s, avg_fps, codec, ...

        A file without timestamps (a camera's raw .h264, a VOB) is decoded whole the first time
        it is opened. With `while_indexing`, the answer comes as soon as its first frames are
        counted and describes those (`indexing` is then true, and frames below `frame_count` can
        be asked for now); ask again for more."""
        request = pb.GetVideoInfoRequest(video=video, while_indexing=while_indexing)
        return self._call(self._stub.GetVideoInfo, request, video)

    def stats(self) -> pb.Stats:
        return self._call(self._stub.GetStats, pb.GetStatsRequest())

    # Frames ---------------------------------------------------------------------------------

    def frame(self, video: str, index: Optional[int] = None, time: Optional[float] = None,
              max_size: MaxSize = None, clamp: bool = False, gray: bool = False,
              upright: bool = False, keep_behind: Optional[int] = None) -> np.ndarray:
        """One frame as a uint8 array (height, width, 3), RGB; (height, width) with `gray`.

        Exactly one of `index` (negative counts from the end) or `time` (seconds from the first
        frame). `max_size` fits the frame inside (width, height), or a square of that side.
        `upright` turns it as the video's display matrix says (phone videos: `info().
        display_rotation`), as players and the ffmpeg CLI show it; by default it is as coded.
        `keep_behind`: how many frames before a cold frame the daemon decodes and caches after
        answering, for a client that steps back (None: the daemon's default, 32); a reader that
        never steps back saves that work with 0.
        """
        return _array(self.frame_message(video, index, time, max_size, clamp, gray, upright, keep_behind))

    def frame_message(self, video: str, index: Optional[int] = None, time: Optional[float] = None,
                      max_size: MaxSize = None, clamp: bool = False, gray: bool = False,
                      upright: bool = False, keep_behind: Optional[int] = None) -> pb.Frame:
        """The frame with its metadata (index, pts, time_s, key_frame, ...) and raw bytes."""
        if (index is None) == (time is None):
            raise ValueError("give exactly one of index= or time=")
        request = pb.FrameRequest(video=video, output=_output(max_size, gray, upright), clamp=clamp)
        if index is not None:
            request.index = int(index)
        else:
            request.time_s = float(time)
        if keep_behind is not None:
            if int(keep_behind) < 0:
                raise ValueError("keep_behind is a number of frames, 0 or more")
            request.keep_behind = int(keep_behind)
        return self._call(self._stub.RequestFrame, request, video)

    def frames(self, video: str, indices: Union[Sequence[int], range, slice, None] = None,
               time_range: Optional[Tuple[float, float]] = None, max_size: MaxSize = None,
               gray: bool = False, with_meta: bool = False, upright: bool = False) -> Iterator:
        """Frames streamed in the order asked: a `range` (sent as a range), a `slice` (as a
        range whose ends may be left out or count from the end: `slice(0, None, 5)` is every
        fifth frame to the end, `slice(-30, None)` the last thirty), any list of indices
        (repeats allowed), or a `time_range` (start_s, stop_s). Yields arrays, or
        (pb.Frame, array) pairs with `with_meta`. A file without timestamps being indexed
        streams frames counted from the start as its decode pass counts them."""
        request = pb.FramesRequest(video=video, output=_output(max_size, gray, upright))
        _select(request, indices, time_range)
        for frame in self._stream(self._stub.RequestFrames, request, video):
            yield (frame, _array(frame)) if with_meta else _array(frame)

    def keyframes(self, video: str, every: int = 1, time_range: Optional[Tuple[float, float]] = None,
                  max_size: MaxSize = None, upright: bool = False) -> Iterator[Tuple[pb.Frame, np.ndarray]]:
        """Every `every`-th keyframe (within `time_range`), decoding keyframes only."""
        request = pb.KeyframesRequest(video=video, every=every, output=_output(max_size, upright=upright))
        if time_range is not None:
            request.time_range.CopyFrom(pb.TimeRange(start_s=time_range[0], stop_s=time_range[1]))
        for frame in self._stream(self._stub.RequestKeyframes, request, video):
            yield frame, _array(frame)

    # Frame jobs -----------------------------------------------------------------------------

    def hashes(self, video: str, indices: Union[Sequence[int], range, slice, None] = None,
               time_range: Optional[Tuple[float, float]] = None, md5: bool = False,
               timeout: Optional[float] = None) -> list:
        """Per-frame pb.FrameHash (index, time_s, ahash, dhash, md5 when asked) of the whole
        video or a selection. The first call on a video runs a hash pass over all of it (give
        a `timeout` that allows for it); later ones read the stored table."""
        request = pb.FrameHashesRequest(video=video, md5=md5)
        if indices is not None or time_range is not None:
            _select(request, indices, time_range)
        return list(self._stream(self._stub.GetFrameHashes, request, video, timeout))

    def duplicates(self, video: str, max_distance: int = 0, min_loop_frames: int = 25,
                   other_video: str = "", timeout: Optional[float] = None) -> pb.DuplicatesReport:
        request = pb.FindDuplicatesRequest(video=video, max_distance=max_distance,
                                           min_loop_frames=min_loop_frames, other_video=other_video)
        return self._call(self._stub.FindDuplicates, request, video, timeout)

    def storyboard(self, video: str, tiles: int = 50, tile_width: int = 0, tile_height: int = 0,
                   columns: int = 0, exact: bool = False, upright: bool = False) -> pb.Storyboard:
        """A grid of thumbnails as one JPEG (`.image`) and where each tile's frame is; tiles
        turned as the video is shown with `upright`."""
        request = pb.StoryboardRequest(video=video, tiles=tiles, tile_width=tile_width,
                                       tile_height=tile_height, columns=columns, exact=exact,
                                       upright=upright)
        return self._call(self._stub.GetStoryboard, request, video)

    def clip(self, video: str, start: int, stop: int, lossless: bool = False,
             max_size: MaxSize = None, crf: int = 0, preset: str = "", upright: bool = False) -> bytes:
        """Frames start..stop encoded as H.264 in MP4 (or FFV1 in Matroska, `lossless`)."""
        output = _output(max_size, upright=upright)
        request = pb.ClipRequest(video=video, range=pb.IndexRange(start=start, stop=stop),
                                 format=pb.MKV_FFV1 if lossless else pb.MP4_H264, output=output,
                                 crf=crf, preset=preset)
        return b"".join(chunk.data for chunk in self._stream(self._stub.ExportClip, request, video))


def _select(request, indices, time_range) -> None:
    if (indices is None) == (time_range is None):
        raise ValueError("give exactly one of indices= or time_range=")
    if isinstance(indices, range):
        request.range.CopyFrom(pb.IndexRange(start=indices.start, stop=indices.stop, step=indices.step))
    elif isinstance(indices, slice):
        # The proto's stop 0 is the end: a slice says that with None, and its stop 0 is empty.
        if indices.stop == 0 or (indices.step is not None and indices.step <= 0):
            raise ValueError(f"{indices}: leave stop out (None) for the end; steps are positive")
        start = indices.start or 0
        stop = 0 if indices.stop is None else indices.stop
        request.range.CopyFrom(pb.IndexRange(start=start, stop=stop, step=indices.step or 1))
    elif indices is not None:
        request.indices.CopyFrom(pb.IndexList(indices=[int(i) for i in indices]))
    else:
        request.time_range.CopyFrom(pb.TimeRange(start_s=time_range[0], stop_s=time_range[1]))
