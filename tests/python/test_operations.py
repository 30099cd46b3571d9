"""What operators rely on, each with a daemon of its own: the index persisted across restarts
(and never trusted when damaged or stale), readiness and 503s while draining, CORS when
configured, JSON logs."""

import json
import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest
import requests

from conftest import H, ROOT, W, start_daemon


def metric(base, name):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(requests.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise KeyError(name)


def stop(proc):
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def test_the_index_is_read_back_after_a_restart_and_rebuilt_when_the_file_or_entry_changes(
        media, reference, tmp_path):
    videos, state = tmp_path / "videos", tmp_path / "state"
    videos.mkdir()
    shutil.copy(media / "clip.mp4", videos / "clip.mp4")

    proc, addr = start_daemon(videos, state, "--log-format", "json")
    base = f"http://{addr}"
    first = requests.get(f"{base}/v1/videos/clip.mp4").json()
    assert metric(base, "framesrv_index_builds_total") == 1
    stop(proc)
    # JSON logs: one object per line, the index build among them.
    lines = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.strip()]
    assert any(line.get("message") == "indexed" and line.get("video") == "clip.mp4" for line in lines)
    entries = list((state / "index").iterdir())
    assert len(entries) == 1

    # Restarted: the index is read, not built, and frames are still exact.
    proc, addr = start_daemon(videos, state)
    base = f"http://{addr}"
    assert requests.get(f"{base}/v1/videos/clip.mp4").json() == first
    assert (metric(base, "framesrv_index_builds_total"), metric(base, "framesrv_index_loads_total")) == (0, 1)
    for i in [74, 3, 50]:
        assert requests.get(f"{base}/v1/videos/clip.mp4/frames/{i}?format=raw").content == reference[i]
    stop(proc)

    # A damaged entry is rebuilt, never trusted.
    data = bytearray(entries[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    proc, addr = start_daemon(videos, state)
    base = f"http://{addr}"
    assert requests.get(f"{base}/v1/videos/clip.mp4").json() == first
    assert (metric(base, "framesrv_index_builds_total"), metric(base, "framesrv_index_loads_total")) == (1, 0)
    stop(proc)

    # The file replaced by another video under the same name: a new key, a new index, new frames.
    subprocess.run([
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-t", "2",
        "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", str(videos / "clip.mp4"),
    ], check=True)
    proc, addr = start_daemon(videos, state)
    base = f"http://{addr}"
    info = requests.get(f"{base}/v1/videos/clip.mp4").json()
    assert info["frame_count"] == 50 and info["content_key"] != first["content_key"]
    assert metric(base, "framesrv_index_builds_total") == 1
    stop(proc)


def test_draining_fails_readiness_and_refuses_new_frames_with_503(media, stubs, tmp_path):
    pb, grpc_pb = stubs
    proc, addr = start_daemon(media, tmp_path / "state", config_text="[limits]\nshutdown_grace_s = 20\n",
                              tmp=tmp_path)
    base = f"http://{addr}"
    assert requests.get(f"{base}/readyz").status_code == 200
    # A stream read slowly keeps the daemon draining after SIGTERM.
    channel = grpc.insecure_channel(addr)
    wanted = list(range(75)) * 8  # 138 MB of raw frames: far more than the transport buffers
    stream = grpc_pb.FrameServerStub(channel).RequestFrames(
        pb.FramesRequest(video="clip.mp4", indices=pb.IndexList(indices=wanted)))
    next(stream)
    proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    while requests.get(f"{base}/readyz").status_code != 503:
        assert time.time() < deadline, "readiness never failed while draining"
        time.sleep(0.05)
    r = requests.get(f"{base}/v1/videos/clip.mp4/frames/1")
    assert r.status_code == 503 and r.json()["code"] == "UNAVAILABLE"
    assert "retry-after" in r.headers
    assert requests.get(f"{base}/healthz").status_code == 200, "alive while draining"
    # The stream in flight still completes.
    assert len(list(stream)) == len(wanted) - 1
    channel.close()
    assert proc.wait(timeout=30) == 0


def test_cors_allows_configured_origins_only(media, tmp_path):
    proc, addr = start_daemon(media, tmp_path / "state", tmp=tmp_path,
                              config_text='[http]\ncors_origins = ["https://labels.example"]\n')
    base = f"http://{addr}"
    url = f"{base}/v1/videos/clip.mp4/frames/2"
    pre = requests.options(url, headers={"Origin": "https://labels.example", "Access-Control-Request-Method": "GET"})
    assert pre.headers.get("access-control-allow-origin") == "https://labels.example"
    r = requests.get(url, headers={"Origin": "https://labels.example"})
    assert r.headers.get("access-control-allow-origin") == "https://labels.example"
    assert "x-frame-index" in r.headers.get("access-control-expose-headers", "").lower() or \
        r.headers.get("access-control-expose-headers") == "*"
    other = requests.get(url, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    stop(proc)


def test_http_can_be_turned_off(media, tmp_path):
    proc, addr = start_daemon(media, tmp_path / "state", tmp=tmp_path, config_text="[http]\nenabled = false\n")
    r = requests.get(f"http://{addr}/v1/videos/clip.mp4")
    assert r.status_code == 404
    stop(proc)


def test_the_daemon_runs_without_transparent_huge_pages(media, tmp_path):
    # With them, frames of megabytes freed and allocated all the time kept partly used huge
    # pages resident: 50-60 MiB more under bench compare's load.
    proc, _ = start_daemon(media, tmp_path / "state")
    status = open(f"/proc/{proc.pid}/status").read()
    stop(proc)
    assert "THP_enabled:\t0" in status


@pytest.mark.parametrize("bad", ['[http]\nenabled = "yes"\n', 'log_format = "xml"\n',
                                 '[http]\ncors_origins = ["bad\\norigin"]\n'])
def test_bad_http_settings_stop_the_daemon_with_a_message(media, tmp_path, bad):
    with pytest.raises(RuntimeError) as e:
        start_daemon(media, tmp_path / "state", tmp=tmp_path, config_text=bad)
    assert "enabled" in str(e.value) or "log_format" in str(e.value) or "cors_origins" in str(e.value)


def test_tokens_through_the_python_package_and_the_viewer_page(media, tmp_path):
    import framesrv

    out = subprocess.run([str(ROOT / "target/debug/framesrv") if not os.environ.get("FRAMESRV_BIN")
                          else os.environ["FRAMESRV_BIN"], "token"], capture_output=True, text=True, check=True).stdout
    token = out.splitlines()[1].strip()
    line = out.splitlines()[3].strip()
    assert line.startswith("sha256:") and token not in line
    (tmp_path / "tokens").write_text(line + "\n")
    proc, addr = start_daemon(media, tmp_path / "state", tmp=tmp_path,
                              config_text=f'[auth]\ntokens_file = "{tmp_path / "tokens"}"\n')
    with framesrv.Client(addr) as anonymous:
        with pytest.raises(framesrv.FramesrvError) as e:
            anonymous.info("clip.mp4")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with framesrv.Client(addr, token=token) as client:
        assert client.frame("clip.mp4", index=3).shape == (H, W, 3)
    base = f"http://{addr}"
    assert requests.get(f"{base}/v1/videos/clip.mp4").status_code == 401
    assert requests.get(f"{base}/v1/videos/clip.mp4", headers={"Authorization": f"Bearer {token}"}).ok
    assert requests.get(f"{base}/").status_code == 200, "the viewer page itself holds no data"
    stop(proc)
