"""framesrv as a Python data loader uses it: grpcio and numpy arrays. A reference client for
`framesrv-bench compare`, which runs it against a fresh daemon. Prints JSON.

    python python_client.py ADDR STUBS VIDEO stream START STOP
        frames/s of RequestFrames over [START, STOP), each frame made an (H, W, 3) array, and
        the same range again (then cached: what transport and client cost alone)
    python python_client.py ADDR STUBS VIDEO random KEEP_BEHIND INDEX [INDEX ...]
        the latency of each RequestFrame (KEEP_BEHIND -1: the server's default), array included

STUBS is a directory holding the framesrv.v1 modules generated from proto/ by grpcio-tools.
"""
import json
import sys
import time

import grpc
import numpy as np


def main():
    addr, stubs, video, mode = sys.argv[1:5]
    sys.path.insert(0, stubs)
    from framesrv.v1 import framesrv_pb2 as pb, framesrv_pb2_grpc as rpc

    channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 256 << 20)])
    stub = rpc.FrameServerStub(channel)
    if mode == "stream":
        start, stop = int(sys.argv[5]), int(sys.argv[6])
        rates = []
        for _ in range(2):
            t0 = time.perf_counter()
            n = 0
            request = pb.FramesRequest(video=video, range=pb.IndexRange(start=start, stop=stop))
            for f in stub.RequestFrames(request):
                np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3)
                n += 1
            rates.append(n / (time.perf_counter() - t0))
        print(json.dumps({"fps": rates[0], "cached_fps": rates[1]}))
    else:
        keep = int(sys.argv[5])
        latencies = []
        for index in (int(i) for i in sys.argv[6:]):
            request = pb.FrameRequest(video=video, index=index)
            if keep >= 0:
                request.keep_behind = keep
            t0 = time.perf_counter()
            f = stub.RequestFrame(request)
            np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3)
            latencies.append(time.perf_counter() - t0)
            if keep < 0:
                # As the Rust harness does: a person clicking does not click faster than the
                # fill behind the previous answer runs.
                time.sleep(0.15)
        print(json.dumps({"latencies_s": latencies}))


if __name__ == "__main__":
    main()
