"""The HTTP routes beside gRPC, on the daemon's own port, through a real HTTP client (requests):
frames as URLs (bit-exact against ffmpeg's decode), caching headers and 304s, JSON errors with
matching statuses, health and readiness, Prometheus metrics parsed by prometheus_client's own
parser, gRPC-web, and CORS."""

import io
import struct

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import H, W


@pytest.fixture(scope="module")
def base(daemon):
    return f"http://{daemon}"


def test_list_and_info_are_json_with_the_proto_field_names(base, reference):
    r = requests.get(f"{base}/v1/videos")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "clip.mp4" in r.json()["videos"]
    assert requests.get(f"{base}/v1/videos", params={"prefix": "nothing-"}).json() == {"videos": []}
    info = requests.get(f"{base}/v1/videos/clip.mp4").json()
    assert info["video"] == "clip.mp4"
    assert info["frame_count"] == len(reference)
    assert (info["width"], info["height"]) == (W, H)
    assert info["codec"] == "h264" and info["frame_identity"] == "pts"
    assert info["display_rotation"] == 0 and info["sample_aspect_ratio"] == "1:1"
    assert len(info["content_key"]) == 32


def test_raw_and_png_frames_are_the_decoders_exact_pixels(base, reference):
    from PIL import Image

    for i in [0, 40, 39, 74]:
        r = requests.get(f"{base}/v1/videos/clip.mp4/frames/{i}", params={"format": "raw"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        assert (r.headers["x-frame-width"], r.headers["x-frame-height"]) == (str(W), str(H))
        assert r.headers["x-pixel-format"] == "rgb24"
        assert r.headers["x-frame-index"] == str(i)
        assert r.content == reference[i], f"frame {i}"
    # PNG chosen by the Accept header; negative indices count from the end.
    r = requests.get(f"{base}/v1/videos/clip.mp4/frames/-1", headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png" and r.headers["x-frame-index"] == "74"
    assert Image.open(io.BytesIO(r.content)).convert("RGB").tobytes() == reference[74]
    # By time: 2.0 s at 25 fps is frame 50, with its time and keyframe flag in headers.
    r = requests.get(f"{base}/v1/videos/clip.mp4/at/2.0", params={"format": "png"})
    assert r.headers["x-frame-index"] == "50" and float(r.headers["x-frame-time"]) == 2.0
    assert r.headers["x-key-frame"] == "true"  # GOP 25
    assert Image.open(io.BytesIO(r.content)).tobytes() == reference[50]


def test_jpeg_is_the_default_and_is_the_right_frame(base, reference):
    import numpy as np
    from PIL import Image

    r = requests.get(f"{base}/v1/videos/clip.mp4/frames/33", params={"max_width": W, "quality": 95})
    assert r.headers["content-type"] == "image/jpeg"
    got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
    errors = [np.abs(got - np.frombuffer(ref, np.uint8).reshape(H, W, 3)).mean() for ref in reference]
    assert int(np.argmin(errors)) == 33 and errors[33] < 4, errors[30:37]
    small = requests.get(f"{base}/v1/videos/clip.mp4/frames/33", params={"max_width": 160})
    assert Image.open(io.BytesIO(small.content)).size == (160, 120)


def test_etags_and_cache_control_let_caches_hold_frames(base):
    url = f"{base}/v1/videos/clip.mp4/frames/12"
    first = requests.get(url)
    tag = first.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"')
    assert first.headers["cache-control"].startswith("public, max-age=")
    assert "immutable" in first.headers["cache-control"]
    again = requests.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    # Another frame or another output is another entity.
    assert requests.get(f"{base}/v1/videos/clip.mp4/frames/13").headers["etag"] != tag
    assert requests.get(url, params={"max_width": 100}).headers["etag"] != tag
    assert requests.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    # A URL naming the content key is cached for a year; one naming another key is refused.
    key = requests.get(f"{base}/v1/videos/clip.mp4").json()["content_key"]
    versioned = requests.get(url, params={"v": key})
    assert versioned.status_code == 200 and "max-age=31536000" in versioned.headers["cache-control"]
    stale = requests.get(url, params={"v": "0" * 32})
    assert stale.status_code == 400 and stale.json()["code"] == "FAILED_PRECONDITION"


@pytest.mark.parametrize("path,status,code", [
    ("/v1/videos/missing.mp4", 404, "NOT_FOUND"),
    ("/v1/videos/missing.mp4/frames/0", 404, "NOT_FOUND"),
    ("/v1/videos/..%2F..%2Fetc%2Fpasswd", 403, "PERMISSION_DENIED"),
    ("/v1/videos/%2Fetc%2Fpasswd/frames/0", 403, "PERMISSION_DENIED"),
    ("/v1/videos/clip.mp4/frames/75", 416, "OUT_OF_RANGE"),
    ("/v1/videos/clip.mp4/frames/-76", 416, "OUT_OF_RANGE"),
    ("/v1/videos/clip.mp4/at/3.5", 416, "OUT_OF_RANGE"),
    ("/v1/videos/clip.mp4/frames/x", 400, "INVALID_ARGUMENT"),
    ("/v1/videos/clip.mp4/at/nan", 400, "INVALID_ARGUMENT"),
    ("/v1/videos/clip.mp4/frames/1?format=gif", 400, "INVALID_ARGUMENT"),
    ("/v1/videos/clip.mp4/frames/1?max_width=99999", 400, "INVALID_ARGUMENT"),
    ("/v1/videos/clip.mp4/frames/1?quality=-1", 400, "INVALID_ARGUMENT"),
    ("/v1/videos/clip.mp4/storyboard?tiles=0", 400, "INVALID_ARGUMENT"),
    ("/nothing/here", 404, "NOT_FOUND"),
])
def test_errors_are_json_with_statuses_matching_their_grpc_codes(daemon, path, status, code):
    # Raw paths (no client-side normalisation of %2F or ..).
    import http.client

    conn = http.client.HTTPConnection(daemon, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    assert r.status == status, body
    assert r.getheader("content-type") == "application/json"
    import json

    err = json.loads(body)
    assert err["code"] == code and err["message"], err
    assert "/etc/passwd" not in err["message"] or "not allowed" in err["message"]


def test_clamp_answers_the_last_frame_instead_of_416(base):
    r = requests.get(f"{base}/v1/videos/clip.mp4/at/99", params={"clamp": "true", "format": "raw"})
    assert r.status_code == 200 and r.headers["x-frame-index"] == "74"


def test_storyboard_route_gives_the_grid_and_its_frames(base):
    from PIL import Image

    r = requests.get(f"{base}/v1/videos/clip.mp4/storyboard", params={"tiles": 3, "tile_width": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-storyboard-frames"] == "0,25,50"
    cols, rows = int(r.headers["x-storyboard-columns"]), int(r.headers["x-storyboard-rows"])
    assert Image.open(io.BytesIO(r.content)).size == (cols * 64, rows * int(r.headers["x-storyboard-tile-height"]))


def test_health_and_readiness(base):
    assert requests.get(f"{base}/healthz").status_code == 200
    assert requests.get(f"{base}/readyz").text.strip() == "ready"


def test_metrics_parse_and_count_what_was_asked(base):
    def scrape():
        text = requests.get(f"{base}/metrics").text
        return {s.name + repr(sorted(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}, text

    def frame_requests(m, code):
        key = "framesrv_requests_total" + repr(sorted(
            {"protocol": "http", "method": "/v1/videos/{video}/frames/{index}", "code": code}.items()))
        return m.get(key, 0)

    before, _ = scrape()
    for i in range(3):
        requests.get(f"{base}/v1/videos/clip.mp4/frames/{60 + i}", params={"max_width": 123})
    requests.get(f"{base}/v1/videos/clip.mp4/frames/999")
    after, text = scrape()
    assert frame_requests(after, "200") - frame_requests(before, "200") == 3
    assert frame_requests(after, "416") - frame_requests(before, "416") == 1
    for name in ["framesrv_cache_bytes", "framesrv_cache_entries", "framesrv_cache_hits_total",
                 "framesrv_cache_misses_total", "framesrv_cache_evictions_total", "framesrv_cache_rejected_total", "framesrv_requests_joined_total",
                 "framesrv_decoders_open",
                 "framesrv_decoders_busy", "framesrv_decode_queue_depth", "framesrv_frames_decoded_total",
                 "framesrv_seeks_total", "framesrv_index_builds_total", "framesrv_index_build_seconds_total",
                 "framesrv_videos_indexing",
                 "framesrv_inflight_bytes", "framesrv_process_resident_memory_bytes"]:
        assert name + "[]" in after, name
    assert after["framesrv_process_resident_memory_bytes[]"] > 1 << 20
    assert after["framesrv_frames_decoded_total[]"] > before.get("framesrv_frames_decoded_total[]", 0)
    assert after["framesrv_cache_misses_total[]"] >= 3
    # Latency histograms by priority class.
    assert "framesrv_request_duration_seconds_bucket{" in text and 'class="interactive"' in text


def grpc_web_call(base, method, message: bytes, origin=None):
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    if origin:
        headers["origin"] = origin
    body = b"\x00" + struct.pack(">I", len(message)) + message
    return requests.post(f"{base}/framesrv.v1.FrameServer/{method}", data=body, headers=headers)


def test_grpc_web_reaches_the_typed_api_over_http1(base, stubs):
    pb, _ = stubs
    r = grpc_web_call(base, "GetVideoInfo", pb.GetVideoInfoRequest(video="clip.mp4").SerializeToString())
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/grpc-web")
    flag, length = r.content[0], struct.unpack(">I", r.content[1:5])[0]
    assert flag == 0
    info = pb.VideoInfo.FromString(r.content[5:5 + length])
    assert info.frame_count == 75
    assert b"grpc-status:0" in r.content[5 + length:]
    missing = grpc_web_call(base, "GetVideoInfo", pb.GetVideoInfoRequest(video="nope.mp4").SerializeToString())
    assert "grpc-status" in missing.headers and missing.headers["grpc-status"] == "5"


def grpc_web_messages(content: bytes):
    """The data messages of a gRPC-web response body, and its trailer frame."""
    messages, at = [], 0
    while at < len(content):
        flag, length = content[at], struct.unpack(">I", content[at + 1:at + 5])[0]
        body = content[at + 5:at + 5 + length]
        at += 5 + length
        if flag & 0x80:
            return messages, body
        messages.append(body)
    return messages, b""


def test_grpc_web_frame_methods_give_the_exact_frames(base, stubs, reference):
    """gRPC-web calls of RequestFrame and RequestFrames (HTTP/1.1, binary), answered like plain
    gRPC without copying the pixels (grpc_frames.rs): exact frames, the status in the trailer
    message, and an error as a trailers-only response."""
    pb, _ = stubs
    r = grpc_web_call(base, "RequestFrame", pb.FrameRequest(video="clip.mp4", index=41).SerializeToString())
    messages, trailers = grpc_web_messages(r.content)
    assert b"grpc-status:0" in trailers
    frame = pb.Frame.FromString(messages[0])
    assert frame.index == 41 and frame.data == reference[41]
    request = pb.FramesRequest(video="clip.mp4", range=pb.IndexRange(start=10, stop=14))
    messages, trailers = grpc_web_messages(grpc_web_call(base, "RequestFrames", request.SerializeToString()).content)
    assert b"grpc-status:0" in trailers
    frames = [pb.Frame.FromString(m) for m in messages]
    assert [f.index for f in frames] == [10, 11, 12, 13]
    assert all(f.data == reference[f.index] for f in frames)
    for method, message in [("RequestFrame", pb.FrameRequest(video="nope.mp4", index=1)),
                            ("RequestFrames", pb.FramesRequest(video="clip.mp4", indices=pb.IndexList(indices=[3, 75])))]:
        r = grpc_web_call(base, method, message.SerializeToString())
        assert r.status_code == 200 and r.headers["content-type"] == "application/grpc-web+proto"
        assert r.headers.get("grpc-status") in ("5", "11"), (method, r.headers)
        assert r.headers.get("grpc-message"), "a readable message"


def read_http_response(sock):
    """Status line, headers and the de-chunked body of an HTTP/1.1 response read to its end."""
    raw = b""
    while chunk := sock.recv(1 << 20):
        raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while True:
            size_line, body = body.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, body = out + body[:size], body[size + 2:]
        body = out
    return lines[0], headers, body


def test_a_grpc_web_frame_a_client_has_not_read_stays_paid_for(daemon, media, stubs):
    """A browser tab that asked for a 1080p frame and reads slowly: the frame waiting in the
    connection counts against limits.inflight_bytes until it is written (the budget that keeps
    slow readers from growing memory), and arrives exact."""
    import socket
    import subprocess
    import time

    import grpc

    pb, pb_grpc = stubs
    video = media / "wide.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25",
                    "-frames:v", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)
    expected = subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                              check=True, capture_output=True).stdout[1920 * 1080 * 3:2 * 1920 * 1080 * 3]
    stats = pb_grpc.FrameServerStub(grpc.insecure_channel(daemon)).GetStats
    before = stats(pb.GetStatsRequest()).inflight_bytes
    message = pb.FrameRequest(video="wide.mp4", index=1).SerializeToString()
    body = b"\x00" + struct.pack(">I", len(message)) + message
    host, port = daemon.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect((host, int(port)))
    sock.sendall(b"POST /framesrv.v1.FrameServer/RequestFrame HTTP/1.1\r\nhost: framesrv\r\n"
                 b"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\nconnection: close\r\n"
                 + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 20
    while stats(pb.GetStatsRequest()).inflight_bytes - before < len(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Still held a while later: the frame sits in the connection, not in an encoder for a moment.
    time.sleep(0.5)
    held = stats(pb.GetStatsRequest()).inflight_bytes - before
    assert held >= len(expected), f"{held} bytes paid for while a {len(expected)}-byte frame waits for its reader"
    status, headers, content = read_http_response(sock)
    sock.close()
    assert status.endswith("200 OK") and headers["content-type"] == "application/grpc-web+proto"
    messages, trailers = grpc_web_messages(content)
    assert b"grpc-status:0" in trailers
    frame = pb.Frame.FromString(messages[0])
    assert (frame.index, frame.width, frame.height) == (1, 1920, 1080)
    assert frame.data == expected, "the frame as the ffmpeg CLI decodes it"
    deadline = time.monotonic() + 5
    while stats(pb.GetStatsRequest()).inflight_bytes > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(pb.GetStatsRequest()).inflight_bytes <= before, "the payment is returned once written"


def test_cors_is_off_by_default(base):
    r = requests.get(f"{base}/v1/videos/clip.mp4", headers={"Origin": "https://labels.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = requests.options(f"{base}/v1/videos/clip.mp4/frames/1",
                           headers={"Origin": "https://labels.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in pre.headers


def test_a_phone_video_comes_upright_on_request_as_the_ffmpeg_cli_shows_it(base, daemon, media):
    """The `rotate` tag phones write: frames come as coded unless asked for upright, over HTTP
    (`?upright=1`) and through the Python package (`upright=True`), bit-identical to the CLI,
    which turns them by default."""
    import subprocess

    import numpy as np

    from framesrv import Client

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media / "clip.mp4"), "-c", "copy",
                    "-metadata:s:v", "rotate=90", str(media / "phone.mp4")], check=True)

    def decode(*input_options):
        raw = subprocess.run(["ffmpeg", "-v", "error", *input_options, "-i", str(media / "phone.mp4"),
                              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
        return [raw[i:i + W * H * 3] for i in range(0, len(raw), W * H * 3)]

    upright, coded = decode(), decode("-noautorotate")
    assert upright[7] != coded[7]
    info = requests.get(f"{base}/v1/videos/phone.mp4").json()
    assert info["display_rotation"] in (90, 270) and (info["width"], info["height"]) == (W, H)
    for i in [7, 30]:
        r = requests.get(f"{base}/v1/videos/phone.mp4/frames/{i}", params={"format": "raw", "upright": "1"})
        assert r.status_code == 200, r.text
        assert (r.headers["x-frame-width"], r.headers["x-frame-height"]) == (str(H), str(W))
        assert r.content == upright[i], f"frame {i} upright"
        r = requests.get(f"{base}/v1/videos/phone.mp4/frames/{i}", params={"format": "raw"})
        assert r.content == coded[i], f"frame {i} as coded"
        assert r.headers["etag"] != requests.get(
            f"{base}/v1/videos/phone.mp4/frames/{i}", params={"format": "raw", "upright": "1"}).headers["etag"]
    with Client(daemon) as client:
        assert client.info("phone.mp4").display_rotation == info["display_rotation"]
        frame = client.frame("phone.mp4", index=12, upright=True)
        assert frame.shape == (W, H, 3) and frame.tobytes() == upright[12]
        frames = list(client.frames("phone.mp4", range(3, 6), upright=True))
        assert [f.tobytes() for f in frames] == upright[3:6]
        assert np.array_equal(client.frame("phone.mp4", index=12), np.frombuffer(coded[12], np.uint8).reshape(H, W, 3))
    assert requests.get(f"{base}/v1/videos/phone.mp4/frames/1", params={"upright": "sideways"}).status_code == 400
