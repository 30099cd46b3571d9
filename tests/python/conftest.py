"""What the Python tests share: the generated stubs, a test video and ffmpeg's own decode of it,
and one real daemon on loopback serving it for the whole session."""

import os
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
W, H = 320, 240


@pytest.fixture(scope="session")
def stubs():
    """The message and stub modules the client package generated from proto/ when it was
    installed (`pip install ./clients/python`, which the test command runs first)."""
    from framesrv.v1 import framesrv_pb2, framesrv_pb2_grpc

    return framesrv_pb2, framesrv_pb2_grpc


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    subprocess.run([
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=25",
        "-t", "3", "-c:v", "libx264", "-bf", "3", "-g", "25", "-pix_fmt", "yuv420p",
        str(media / "clip.mp4"),
    ], check=True)
    return media


@pytest.fixture(scope="session")
def reference(media):
    raw = subprocess.run([
        "ffmpeg", "-v", "error", "-i", str(media / "clip.mp4"), "-map", "0:v:0",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ], check=True, capture_output=True).stdout
    size = W * H * 3
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def camera_folder(tmp_path, size, seconds):
    """A media folder holding `camera.h264`, `seconds` of `size` testsrc2 at 30 fps as a raw H.264
    stream (what many cameras write): no timestamps, so it is decoded whole when first opened."""
    media = tmp_path / "media"
    media.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-f", "h264", str(media / "camera.h264")], check=True)
    return media


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(media, state_dir, *args, config_text=None, tmp=None, addr=None):
    """A daemon serving `media` on `addr` (a free port by default), ready (health SERVING);
    returns (process, address). `config_text` is written to a config file in `tmp` and passed
    with --config."""
    binary = os.environ.get("FRAMESRV_BIN", str(ROOT / "target/debug/framesrv"))
    addr = addr or f"127.0.0.1:{free_port()}"
    command = [binary, "serve", "--listen", addr, "--media-root", str(media), "--cache-size", "64MiB",
               "--state-dir", str(state_dir), *args]
    if config_text is not None:
        path = Path(tmp) / f"framesrv-{addr.rsplit(':', 1)[1]}.toml"
        path.write_text(config_text)
        command += ["--config", str(path)]
    # The log goes to a file: a pipe nobody reads would fill and block the daemon.
    log_path = Path(str(state_dir) + f"-{addr.rsplit(':', 1)[1]}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    proc.log_path = log_path
    deadline = time.time() + 30
    while True:
        # A fresh channel each time: a channel whose first connect was refused backs off for
        # seconds before it tries again.
        with grpc.insecure_channel(addr) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                   timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, addr
            except grpc.RpcError:
                pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("daemon did not start: " + log_path.read_text(errors="replace"))
        time.sleep(0.05)


@pytest.fixture(scope="session")
def daemon(media, tmp_path_factory):
    """The daemon's address (gRPC and HTTP share the port)."""
    proc, addr = start_daemon(media, tmp_path_factory.mktemp("state"))
    yield addr
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "SIGTERM drains and exits 0"


@pytest.fixture(scope="session")
def channel(daemon):
    channel = grpc.insecure_channel(daemon, options=[("grpc.max_receive_message_length", 64 << 20)])
    yield channel
    channel.close()
