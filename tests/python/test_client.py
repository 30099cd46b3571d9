"""A Python client against a real framesrv daemon: the integration a labelling tool or a data
loader would write with the raw stubs (those the client package generates from proto/ at build
time); frames are compared byte for byte with the ffmpeg CLI's own decode of the same file."""

import io
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import H, W


def test_info_counts_frames_from_the_index(stubs, channel, reference):
    pb, grpc_pb = stubs
    info = grpc_pb.FrameServerStub(channel).GetVideoInfo(pb.GetVideoInfoRequest(video="clip.mp4"))
    assert info.frame_count == len(reference) == 75
    assert (info.width, info.height) == (W, H)
    assert info.codec == "h264"


def test_frames_by_index_and_time_match_ffmpeg_bytes(stubs, channel, reference):
    pb, grpc_pb = stubs
    stub = grpc_pb.FrameServerStub(channel)
    for i in [0, 74, 40, 39, 12, 60]:
        frame = stub.RequestFrame(pb.FrameRequest(video="clip.mp4", index=i))
        assert frame.index == i
        assert frame.data == reference[i], f"frame {i}"
    frame = stub.RequestFrame(pb.FrameRequest(video="clip.mp4", time_s=2.0))
    assert frame.index == 50 and frame.data == reference[50]
    frame = stub.RequestFrame(pb.FrameRequest(video="clip.mp4", index=-1))
    assert frame.index == 74


def test_png_frames_decode_to_the_same_pixels(stubs, channel, reference):
    from PIL import Image

    pb, grpc_pb = stubs
    frame = grpc_pb.FrameServerStub(channel).RequestFrame(
        pb.FrameRequest(video="clip.mp4", index=33, output=pb.OutputSpec(encoding=pb.PNG)))
    image = Image.open(io.BytesIO(frame.data))
    assert image.size == (W, H) and image.mode == "RGB"
    assert image.tobytes() == reference[33]


def test_streamed_batches_come_in_request_order(stubs, channel, reference):
    pb, grpc_pb = stubs
    stub = grpc_pb.FrameServerStub(channel)
    wanted = [70, 3, 3, 45, 0]
    got = list(stub.RequestFrames(pb.FramesRequest(video="clip.mp4", indices=pb.IndexList(indices=wanted))))
    assert [f.index for f in got] == wanted
    assert all(f.data == reference[f.index] for f in got)
    got = list(stub.RequestFrames(pb.FramesRequest(video="clip.mp4", range=pb.IndexRange(start=10, stop=20))))
    assert [f.index for f in got] == list(range(10, 20))


def test_errors_carry_codes_and_readable_messages(stubs, channel):
    pb, grpc_pb = stubs
    stub = grpc_pb.FrameServerStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.RequestFrame(pb.FrameRequest(video="nope.mp4", index=0))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.RequestFrame(pb.FrameRequest(video="clip.mp4", index=75))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "75 frames" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.RequestFrame(pb.FrameRequest(video="../clip.mp4", index=0))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_reflection_lists_the_service_for_grpcurl_and_ghz(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name for s in next(responses).list_services_response.service]
    assert "framesrv.v1.FrameServer" in names
    responses = stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="framesrv.v1.FrameServer")]))
    assert next(responses).file_descriptor_response.file_descriptor_proto, "descriptors are served"


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="framesrv.v1.FrameServer")).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def cell_hashes(luma, width, height):
    """aHash and dHash as the README defines them, from a frame's 8-bit luma plane."""
    import numpy as np

    a = np.frombuffer(luma, np.uint8).reshape(height, width).astype(np.uint64)

    def spans(cells, n):
        out = []
        for c in range(cells):
            start = min(c * n // cells, n - 1)
            out.append((start, min(max((c + 1) * n // cells, start + 1), n)))
        return out

    def means(cols):
        return [[int(a[y0:y1, x0:x1].sum()) // ((y1 - y0) * (x1 - x0)) for x0, x1 in spans(cols, width)]
                for y0, y1 in spans(8, height)]

    cells = [v for row in means(8) for v in row]
    mean = sum(cells) // 64
    ahash = sum(1 << (63 - i) for i, v in enumerate(cells) if v > mean)
    grid = means(9)
    dhash = sum(1 << (63 - (r * 8 + c)) for r in range(8) for c in range(8) if grid[r][c + 1] > grid[r][c])
    return ahash, dhash


def test_hashes_are_what_anyone_computes_from_the_frames(stubs, channel, media, reference):
    import hashlib

    pb, grpc_pb = stubs
    stub = grpc_pb.FrameServerStub(channel)
    hashes = list(stub.GetFrameHashes(pb.FrameHashesRequest(video="clip.mp4", md5=True)))
    assert [h.index for h in hashes] == list(range(75))
    plain = list(stub.GetFrameHashes(pb.FrameHashesRequest(video="clip.mp4")))
    assert [(h.ahash, h.dhash) for h in plain] == [(h.ahash, h.dhash) for h in hashes]
    # The luma plane, as the README says to get it: the first W*H bytes of each yuv420p frame.
    yuv = subprocess.run(["ffmpeg", "-v", "error", "-i", str(media / "clip.mp4"), "-f", "rawvideo",
                          "-pix_fmt", "yuv420p", "-"], check=True, capture_output=True).stdout
    size = W * H * 3 // 2
    for i in [0, 17, 74]:
        frame = stub.RequestFrame(pb.FrameRequest(video="clip.mp4", index=i))
        assert hashes[i].md5 == hashlib.md5(frame.data).digest() == hashlib.md5(reference[i]).digest()
        luma = yuv[i * size:i * size + W * H]
        assert (hashes[i].ahash, hashes[i].dhash) == cell_hashes(luma, W, H), f"frame {i}"


def test_a_clip_streams_into_a_file_ffmpeg_reads(stubs, channel, tmp_path):
    pb, grpc_pb = stubs
    stub = grpc_pb.FrameServerStub(channel)
    out = tmp_path / "c.mp4"
    with open(out, "wb") as f:
        for chunk in stub.ExportClip(pb.ClipRequest(video="clip.mp4", range=pb.IndexRange(start=10, stop=40),
                                                    format=pb.MP4_H264)):
            f.write(chunk.data)
    frames = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                             "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(out)],
                            check=True, capture_output=True, text=True).stdout.strip()
    assert frames == "30"
    board = stub.GetStoryboard(pb.StoryboardRequest(video="clip.mp4", tiles=6))
    assert board.image[:2] == b"\xff\xd8" and len(board.tiles) == 6
