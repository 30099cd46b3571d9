"""A data loader reading a long file without timestamps (a camera's raw `.h264`) from its start
as soon as it appears: one `RequestFrames` of every STEP-th frame to the end, fitted in MAX_SIZE,
on a fresh daemon with no state directory, so the file's decode pass runs meanwhile. Prints when
the first frame came, when a quarter, half and all of them had, and an MD5 of every frame's
pixels in order (run it against two daemons and compare the last line to check they agree),
and how many frames the daemon's decoders decoded (the pass's own are not counted).
Uses the `framesrv` Python package (clients/python).

With `--after-index`, the reference: the same daemon is first asked the video's info (which
waits for the whole decode pass), then the same stream; both times are printed.

    python stream_while_indexing.py [--after-index] FRAMESRV_BINARY MEDIA_DIR VIDEO [STEP [WIDTHxHEIGHT]]
"""
import hashlib
import sys
import time

import framesrv
import serving

args = sys.argv[1:]
after_index = "--after-index" in args
args = [a for a in args if a != "--after-index"]
binary, media, video = args[0], args[1], args[2]
step = int(args[3]) if len(args) > 3 else 5
size = tuple(int(x) for x in args[4].split("x")) if len(args) > 4 else (480, 270)
port = 51236
daemon = serving.start(binary, media, port)
try:
    client = framesrv.Client(f"127.0.0.1:{port}", timeout=600)
    digest = hashlib.md5()
    if after_index:
        t0 = time.time()
        client.info(video)
        print(f"indexed in {time.time() - t0:.2f} s; then the stream:")
    t0 = time.time()
    times = []
    for rgb in client.frames(video, slice(0, None, step), max_size=size):
        times.append(time.time() - t0)
        digest.update(rgb.tobytes())
    n = len(times)
    marks = ", ".join(f"{p}: {times[max(0, int(p[:-1]) * n // 100 - 1)]:.2f} s" for p in ["25%", "50%", "100%"])
    print(f"{n} frames; first {times[0]:.2f} s, {marks}")
    print(f"frames decoded by the decoders: {client.stats().frames_decoded}")
    print(f"md5 of every frame in order: {digest.hexdigest()}")
finally:
    daemon.terminate()
    daemon.wait()
