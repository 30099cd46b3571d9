"""A folder of files without timestamps opened at once by clients with a deadline, each
retrying GetVideoInfo until it answers (what a labelling tool or data loader listing a folder of
camera streams does): when each file opens, how many calls it took, and the daemon's CPU time
and peak RSS. Uses the `framesrv` Python package (clients/python).

    python open_folder.py FRAMESRV_BINARY MEDIA_DIR STATE_DIR|none DEADLINE_S

Every `*.h264` in MEDIA_DIR is opened, one client each; each gives up after 120 s.
"""
import os
import subprocess
import sys
import threading
import time

import framesrv

binary, media, state, deadline = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
port = 51234
daemon = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--media-root", media,
                           "--state-dir", state], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.0)
peak_mib = 0
stop = threading.Event()


def watch_rss():
    global peak_mib
    while not stop.is_set():
        try:
            with open(f"/proc/{daemon.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        peak_mib = max(peak_mib, int(line.split()[1]) // 1024)
        except FileNotFoundError:
            pass
        time.sleep(0.1)


threading.Thread(target=watch_rss, daemon=True).start()
files = sorted(f for f in os.listdir(media) if f.endswith(".h264"))
opened = {}
t0 = time.time()


def open_one(name):
    client = framesrv.Client(f"127.0.0.1:{port}", timeout=deadline)
    calls = 0
    while time.time() - t0 < 120:
        calls += 1
        try:
            info = client.info(name)
            opened[name] = (time.time() - t0, calls, info.frame_count)
            return
        except framesrv.DeadlineExceeded:
            continue


clients = [threading.Thread(target=open_one, args=(f,)) for f in files]
for c in clients:
    c.start()
for c in clients:
    c.join()
stop.set()
cpu_s = sum(int(x) for x in open(f"/proc/{daemon.pid}/stat").read().split()[13:15]) / os.sysconf("SC_CLK_TCK")
daemon.terminate()
daemon.wait()
times = sorted(v[0] for v in opened.values())
first = f"{times[0]:.1f}s" if times else "-"
last = f"{times[-1]:.1f}s" if times else "-"
print(f"deadline {deadline}s, state {state}: opened {len(opened)}/{len(files)}; first {first}, all {last}; "
      f"calls {sum(v[1] for v in opened.values())}; daemon CPU {cpu_s:.0f}s; peak RSS {peak_mib} MiB")
for name in sorted(opened):
    print(f"  {name}: {opened[name][0]:.1f}s, {opened[name][1]} calls, {opened[name][2]} frames")
