"""A labelling tool opening one long file without timestamps (a camera's raw `.h264`): when
frames at a few places of the file come back, each asked for once the one before it has, and
when `GetVideoInfo` (which needs the whole index) answers. Fresh daemon, no state directory, so
the file's decode pass runs. Uses the `framesrv` Python package (clients/python).

    python first_frames.py FRAMESRV_BINARY MEDIA_DIR VIDEO [FRACTION ...]

FRACTIONs (default 0 0.1 0.5 0.9) place the frames in the file; the frame count is taken from
ffprobe's count of the stream's frames, which decodes it once before the daemon starts.
"""
import subprocess
import sys
import time

import framesrv
import serving

binary, media, video = sys.argv[1], sys.argv[2], sys.argv[3]
fractions = [float(f) for f in sys.argv[4:]] or [0.0, 0.1, 0.5, 0.9]
count = int(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                            "stream=nb_read_frames", "-of", "csv=p=0", f"{media}/{video}"],
                           capture_output=True, check=True, text=True).stdout.strip())
port = 51235
daemon = serving.start(binary, media, port)
try:
    client = framesrv.Client(f"127.0.0.1:{port}", timeout=600)
    t0 = time.time()
    for f in fractions:
        i = min(int(f * count), count - 1)
        client.frame(video, i)
        print(f"frame {i} ({f:.0%} in): {time.time() - t0:.2f} s", flush=True)
    info = client.info(video)
    print(f"GetVideoInfo ({info.frame_count} frames): {time.time() - t0:.2f} s")
finally:
    daemon.terminate()
    daemon.wait()
