"""A labelling tool opening a folder of long files without timestamps (a camera's raw `.h264`
files): it asks for each file's info with a short deadline (every one answers
DEADLINE_EXCEEDED, and the indexing goes on), then the user clicks the last file. When its
frame 0, and its info, come back. Fresh daemon, no state directory. Uses the `framesrv` Python
package (clients/python).

    python click_in_folder.py FRAMESRV_BINARY MEDIA_DIR [LISTING_DEADLINE_S]

Every `*.h264` in MEDIA_DIR, in name order; the last one is clicked.
"""
import os
import sys
import time

import framesrv
import serving

binary, media = sys.argv[1], sys.argv[2]
listing_deadline = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
files = sorted(f for f in os.listdir(media) if f.endswith(".h264"))
port = 51236
daemon = serving.start(binary, media, port)
try:
    with framesrv.Client(f"127.0.0.1:{port}", timeout=listing_deadline) as lister:
        for name in files:
            try:
                lister.info(name)
            except framesrv.DeadlineExceeded:
                pass
    clicked = files[-1]
    client = framesrv.Client(f"127.0.0.1:{port}", timeout=600)
    t0 = time.time()
    while True:
        try:
            client.frame(clicked, 0)
            break
        except framesrv.DeadlineExceeded:  # the daemon's own limit (60 s by default): ask again
            continue
    print(f"{len(files)} files listed; click on {clicked}: frame 0 after {time.time() - t0:.2f} s", flush=True)
    info = client.info(clicked)
    print(f"its GetVideoInfo ({info.frame_count} frames) after {time.time() - t0:.2f} s")
finally:
    daemon.terminate()
    daemon.wait()
