"""Opening under churn: files without timestamps (raw .h264, decoded whole when first opened)
requested by clients with short deadlines while they grow (cut mid-frame), get replaced and
vanish, and streamed from their start by two more; meanwhile two clients check random frames of two stable files (a raw .h264 and an mp4)
against the ffmpeg CLI's decode. Prints the outcome counts (no wrong frame and no unexpected
error allowed), the daemon's peak RSS, and its state 15 s after the load stops (nothing left
being indexed; threads and memory back down).

    python scripts/churn.py [--seconds 120] [--dir target/churn] [--bin target/release/framesrv]

Needs ffmpeg and the .venv with the framesrv package (`bash scripts/dev.sh setup`)."""
import argparse
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time

import framesrv

W, H = 640, 360
NAMES = ["a.h264", "b.h264", "c.h264"]


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_media(out):
    media = os.path.join(out, "media")
    os.makedirs(media, exist_ok=True)
    bases = []
    for i in range(3):
        base = os.path.join(out, f"base{i}.h264")
        if not os.path.exists(base):
            ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=30:duration=40", "-vf", f"hue=h={50 * i}",
                   "-c:v", "libx264", "-preset", "veryfast", "-g", "48", "-bf", "2", "-f", "h264", base)
        bases.append(base)
    if not os.path.exists(os.path.join(media, "stable.mp4")):
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=30:duration=20", "-c:v", "libx264",
               "-preset", "veryfast", "-g", "48", os.path.join(media, "stable.mp4"))
    shutil.copy(bases[0], os.path.join(media, "stable.h264"))
    for name in NAMES:
        shutil.copy(bases[0], os.path.join(media, name))
    return media, bases


def reference(path):
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    size = W * H * 3
    return [hashlib.md5(raw[i:i + size]).hexdigest() for i in range(0, len(raw), size)]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--dir", default="target/churn")
    ap.add_argument("--bin", default=os.environ.get("FRAMESRV_BIN", "target/release/framesrv"))
    args = ap.parse_args()
    media, bases = make_media(args.dir)
    state = os.path.join(args.dir, "state")
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    log = open(os.path.join(args.dir, "daemon.log"), "wb")
    daemon = subprocess.Popen([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--media-root", media,
                               "--state-dir", state], stdout=subprocess.DEVNULL, stderr=log)
    time.sleep(1)
    ref = {name: reference(os.path.join(media, name)) for name in ["stable.h264", "stable.mp4"]}
    stop = time.time() + args.seconds
    counts = {k: 0 for k in ["ok", "deadline", "aborted", "not_found", "partial", "wrong", "unexpected"]}
    lock = threading.Lock()

    def count(k, why=""):
        with lock:
            counts[k] += 1
        if why:
            print(k, why)

    def checker(seed):
        rng = random.Random(seed)
        c = framesrv.Client(f"127.0.0.1:{port}", timeout=30)
        while time.time() < stop:
            name = rng.choice(list(ref))
            i = rng.randrange(len(ref[name]))
            try:
                same = hashlib.md5(c.frame(name, index=i).tobytes()).hexdigest() == ref[name][i]
                count("ok") if same else count("wrong", f"{name} frame {i}")
            except framesrv.DeadlineExceeded:
                count("deadline")
            except framesrv.FramesrvError as e:
                count("unexpected", f"{name} frame {i}: {e}")

    def outcome(name, ask):
        """Run `ask` and count how it went: what churning a file may answer, and nothing else."""
        try:
            ask()
            count("ok")
        except framesrv.DeadlineExceeded:
            count("deadline")
        except framesrv.Aborted:
            count("aborted")
        except framesrv.NotFound:
            count("not_found")
        except (framesrv.InvalidArgument, framesrv.OutOfRange) as e:
            # A churned file caught while it is copied over in place (truncated, then
            # written): not a video yet, or fewer frames than the info before said.
            count("partial" if name in NAMES else "unexpected", "" if name in NAMES else f"{name}: {e}")
        except framesrv.FramesrvError as e:
            count("unexpected", f"{name}: {e}")

    def hasty(seed):
        rng = random.Random(seed)
        while time.time() < stop:
            with framesrv.Client(f"127.0.0.1:{port}", timeout=rng.choice([0.05, 0.3, 1.0, 5.0])) as c:
                name = rng.choice(NAMES + ["stable.h264"])

                def ask():
                    info = c.info(name)
                    if rng.random() < 0.5:
                        c.frame(name, index=rng.randrange(info.frame_count))
                outcome(name, ask)

    def streamer(seed):
        # A data loader streaming a churned file from its start, often while it is indexed (the
        # stream goes as the pass counts the frames).
        rng = random.Random(seed)
        while time.time() < stop:
            with framesrv.Client(f"127.0.0.1:{port}", timeout=rng.choice([1.0, 5.0, 20.0])) as c:
                name = rng.choice(NAMES)

                def ask():
                    for _ in c.frames(name, slice(0, None, rng.choice([1, 7, 30])), max_size=(160, 90)):
                        if time.time() >= stop:
                            break
                outcome(name, ask)

    def churn(seed):
        rng = random.Random(seed)
        while time.time() < stop:
            path = os.path.join(media, rng.choice(NAMES))
            r = rng.random()
            try:
                if r < 0.4 and os.path.exists(path):
                    with open(rng.choice(bases), "rb") as src, open(path, "ab") as dst:
                        dst.write(src.read(rng.randrange(100_000, 2_000_000)))  # grows, cut mid-frame
                elif r < 0.7:
                    shutil.copy(rng.choice(bases), path + ".tmp")
                    os.replace(path + ".tmp", path)  # replaced
                elif r < 0.8 and os.path.exists(path):
                    os.remove(path)
                else:
                    shutil.copy(rng.choice(bases), path)
            except FileNotFoundError:
                pass
            time.sleep(rng.uniform(0.2, 1.5))

    workers = ([threading.Thread(target=checker, args=(k,)) for k in range(2)]
               + [threading.Thread(target=hasty, args=(10 + k,)) for k in range(4)]
               + [threading.Thread(target=streamer, args=(20 + k,)) for k in range(2)]
               + [threading.Thread(target=churn, args=(99,))])
    for w in workers:
        w.start()
    peak = 0
    while any(w.is_alive() for w in workers):
        peak = max(peak, rss_mib(daemon.pid))
        time.sleep(0.5)
    time.sleep(15)
    with framesrv.Client(f"127.0.0.1:{port}", timeout=120) as c:
        stats = c.stats()
    threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
    print(counts)
    print(f"peak RSS {peak} MiB; 15 s after the load: {stats.videos_indexing} being indexed, "
          f"{stats.videos_indexed} indexes built, {threads} threads, RSS {rss_mib(daemon.pid)} MiB")
    daemon.terminate()
    code = daemon.wait(timeout=60)
    ok = counts["wrong"] == 0 and counts["unexpected"] == 0 and stats.videos_indexing == 0 and code == 0
    print("clean" if ok else "NOT CLEAN", f"(exit {code})")
    raise SystemExit(0 if ok else 1)


def free_port():
    """A free loopback port (released again for the daemon to take)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
