"""Data-loader workers following the decode pass of a file without timestamps: WORKERS threads,
worker k streaming every WORKERS-th frame from frame k (fitted in 480x270) of VIDEO while a fresh
daemon (no state directory) indexes it, each pausing PAUSE seconds after every frame (a worker
that trains on what it reads). Prints the frames read, how long it took, how many frames the
daemon's decoders decoded (the pass's own are not counted: 0 means every frame came from the
pass) and the daemon's peak RSS. Uses the `framesrv` Python package (clients/python).

    python followers_while_indexing.py FRAMESRV_BINARY MEDIA_DIR VIDEO [WORKERS [PAUSE]]
"""
import sys
import threading
import time

import framesrv
import serving


def main():
    binary, media, video = sys.argv[1:4]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
    port = 51239
    daemon = serving.start(binary, media, port)
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            with open(f"/proc/{daemon.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS"):
                        peak[0] = max(peak[0], int(line.split()[1]) // 1024)
            time.sleep(0.05)

    counts = [0] * workers

    def work(k):
        client = framesrv.Client(f"127.0.0.1:{port}", timeout=600)
        for _ in client.frames(video, slice(k, None, workers), max_size=(480, 270)):
            counts[k] += 1
            time.sleep(pause)

    try:
        threading.Thread(target=watch, daemon=True).start()
        t0 = time.time()
        threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - t0
        decoded = framesrv.Client(f"127.0.0.1:{port}").stats().frames_decoded
        done.set()
        print(f"{sum(counts)} frames in {took:.1f} s; decoders decoded {decoded}; peak RSS {peak[0]} MiB")
    finally:
        daemon.terminate()
        daemon.wait()


if __name__ == "__main__":
    main()
