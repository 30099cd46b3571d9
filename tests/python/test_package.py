"""The `framesrv` Python package (clients/python, installed by the test command with pip) against
a real daemon: arrays that are ffmpeg's exact pixels, iterators, hashes, and errors as
exceptions carrying the gRPC code."""

import time

import grpc
import numpy as np
import pytest

import framesrv
from conftest import H, W


@pytest.fixture(scope="module")
def client(daemon):
    with framesrv.Client(daemon, timeout=30) as c:
        yield c


def ref(reference, i):
    return np.frombuffer(reference[i], np.uint8).reshape(H, W, 3)


def test_info_and_listing(client):
    assert "clip.mp4" in client.videos()
    info = client.info("clip.mp4")
    assert (info.frame_count, info.width, info.height) == (75, W, H)


def test_frames_are_numpy_arrays_of_the_exact_pixels(client, reference):
    a = client.frame("clip.mp4", index=41)
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    assert np.array_equal(a, ref(reference, 41))
    assert np.array_equal(client.frame("clip.mp4", time=2.0), ref(reference, 50))
    assert np.array_equal(client.frame("clip.mp4", index=-1), ref(reference, 74))
    small = client.frame("clip.mp4", index=3, max_size=(160, 160))
    assert small.shape == (120, 160, 3)
    gray = client.frame("clip.mp4", index=3, gray=True)
    assert gray.shape == (H, W)
    meta = client.frame_message("clip.mp4", index=25)
    assert meta.key_frame and meta.index == 25


def test_keep_behind_zero_keeps_nothing_behind_a_cold_frame(client, reference):
    assert np.array_equal(client.frame("clip.mp4", index=62, keep_behind=0), ref(reference, 62))
    # In a size no other test asks for (frames are cached per output): frame 62 is decoded from
    # keyframe 50, and with keep_behind=0 none of the frames before it is kept or filled in.
    size = (96, 96)
    client.frame("clip.mp4", index=62, max_size=size, keep_behind=0)
    time.sleep(0.5)
    assert not client.frame_message("clip.mp4", index=61, max_size=size).cache_hit
    with pytest.raises(ValueError):
        client.frame("clip.mp4", index=3, keep_behind=-1)


def test_frames_iterate_in_the_order_asked(client, reference):
    got = list(client.frames("clip.mp4", range(10, 20, 3)))
    assert len(got) == 4 and all(np.array_equal(a, ref(reference, i)) for a, i in zip(got, range(10, 20, 3)))
    pairs = list(client.frames("clip.mp4", [70, 2, 2], with_meta=True))
    assert [m.index for m, _ in pairs] == [70, 2, 2]
    assert np.array_equal(pairs[0][1], ref(reference, 70))
    by_time = list(client.frames("clip.mp4", time_range=(1.0, 1.2)))
    assert len(by_time) == 5
    # A slice: ends left out or counted from the end, as in Python.
    tail = list(client.frames("clip.mp4", slice(70, None, 2), with_meta=True))
    assert [m.index for m, _ in tail] == [70, 72, 74] and np.array_equal(tail[2][1], ref(reference, 74))
    assert [m.index for m, _ in client.frames("clip.mp4", slice(-3, None), with_meta=True)] == [72, 73, 74]
    assert [m.index for m, _ in client.frames("clip.mp4", slice(None, 3), with_meta=True)] == [0, 1, 2]
    with pytest.raises(ValueError):
        list(client.frames("clip.mp4", slice(5, 0)))


def test_hashes_and_keyframes(client):
    hashes = client.hashes("clip.mp4", md5=True)
    assert [h.index for h in hashes] == list(range(75))
    assert all(len(h.md5) == 16 for h in hashes)
    keys = [m.index for m, _ in client.keyframes("clip.mp4")]
    assert keys == [0, 25, 50]


def test_errors_are_exceptions_with_the_grpc_code(client):
    with pytest.raises(framesrv.OutOfRange) as e:
        client.frame("clip.mp4", index=75)
    assert e.value.code == grpc.StatusCode.OUT_OF_RANGE and "75" in e.value.message
    with pytest.raises(framesrv.NotFound):
        client.info("missing.mp4")
    with pytest.raises(framesrv.PermissionDenied):
        client.info("../etc/passwd")
    with pytest.raises(framesrv.InvalidArgument):
        client.frame("clip.mp4", time=float("nan"))
    with pytest.raises(framesrv.OutOfRange):
        list(client.frames("clip.mp4", [1, 500]))
    with pytest.raises(ValueError):
        client.frame("clip.mp4")
    assert issubclass(framesrv.DeadlineExceeded, TimeoutError)


def test_an_unreachable_daemon_is_unavailable_not_a_hang():
    with framesrv.Client("127.0.0.1:9", timeout=2) as c:
        with pytest.raises(framesrv.Unavailable):
            c.info("clip.mp4")


def test_a_data_loader_meets_a_long_file_without_timestamps(tmp_path):
    """A raw .h264 (what many cameras write) is decoded whole when first opened. A loader whose
    deadline is shorter gets DeadlineExceeded saying the video is being indexed and how far; the
    indexing goes on without it, and its next call gets the index built once. Meanwhile the
    frames counted so far are described (`while_indexing`) and served."""
    from conftest import camera_folder, start_daemon

    proc, addr = start_daemon(camera_folder(tmp_path, "960x540", 60), tmp_path / "state")
    try:
        with framesrv.Client(addr, timeout=0.2) as hasty:
            with pytest.raises(framesrv.DeadlineExceeded) as e:
                hasty.info("camera.h264")
            assert "camera.h264 is still being indexed (" in e.value.message, e.value.message
        with framesrv.Client(addr, timeout=60) as patient:
            # What the pass has counted so far is described, and served, before it ends.
            so_far = patient.info("camera.h264", while_indexing=True)
            assert so_far.indexing and 0 < so_far.frame_count < 1800, so_far
            last = so_far.frame_count - 1
            assert patient.frame("camera.h264", index=last).shape == (540, 960, 3)
            assert patient.info("camera.h264").frame_count == 1800
            assert patient.frame("camera.h264", index=450).shape == (540, 960, 3)
            stats = patient.stats()
            assert (stats.videos_indexed, stats.videos_indexing) == (1, 0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
