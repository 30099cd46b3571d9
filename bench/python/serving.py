"""A framesrv daemon for the scripts here: started on a loopback port, returned once it accepts
connections (a gRPC channel that tries too early backs off for a second or more)."""
import socket
import subprocess
import time


def start(binary, media, port, state="none"):
    daemon = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--media-root", media,
                               "--state-dir", state], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return daemon
        except OSError:
            time.sleep(0.05)
    daemon.kill()
    raise RuntimeError(f"{binary} did not listen on port {port}")
