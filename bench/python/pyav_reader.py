"""The PyAV reader people write today, as a reference for framesrv's benchmarks.

Seek to the keyframe at or before the target's timestamp (computed from the frame rate, as such
readers do), decode forward to the target, convert that one frame to rgb24. Prints JSON with the
latency of each access.

    python pyav_reader.py CLIP THREADS INDEX [INDEX ...]

THREADS is `1` (one codec thread) or `auto` (`thread_type = "AUTO"`: frame and slice threads on
every core, the best configuration of this reader on an idle machine).
"""
import json
import sys
import time

import av


def main():
    path = sys.argv[1]
    threads = sys.argv[2]
    indices = [int(i) for i in sys.argv[3:]]
    container = av.open(path)
    stream = container.streams.video[0]
    if threads == "auto":
        stream.thread_type = "AUTO"
    else:
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
    rate = stream.average_rate
    tb = stream.time_base
    start = stream.start_time or 0
    latencies = []
    for index in indices:
        t0 = time.perf_counter()
        target = start + int(round(index / rate / tb))
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts >= target:
                frame.to_ndarray(format="rgb24")
                break
        latencies.append(time.perf_counter() - t0)
    print(json.dumps({"latencies_s": latencies}))


if __name__ == "__main__":
    main()
