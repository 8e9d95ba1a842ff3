#!/usr/bin/env python3
"""Time to offer: from `deaddrop send-file` process start to its `offered` event (the token is
shown and the drop announced), for a 20 GiB sparse file and a 2 GiB file in the page cache
(/dev/shm). Loopback only; nothing is fetched. Record the figures in BENCHMARKS.md.

    python3 bench/offer.py [--runs 5] [--bin target/release/deaddrop] [--bin-b OTHER]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = "/dev/shm/deaddrop-offer-bench"


def time_to_offer(binary, path):
    env = dict(os.environ, DEADDROP_ROOM="bench-room")
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "send-file", "--json", "--ttl", "1m", "--interface", "127.0.0.1",
                          "--port", "47961", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, env=env)
    try:
        for line in p.stdout:
            if json.loads(line).get("event") == "offered":
                return (time.perf_counter() - t0) * 1000
        raise RuntimeError("send-file exited without offering")
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "deaddrop"))
    ap.add_argument("--bin-b", help="a second build, measured in the same rounds")
    args = ap.parse_args()
    if args.bin.endswith(os.path.join("release", "deaddrop")):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    os.makedirs(WORK, exist_ok=True)
    try:
        sparse = os.path.join(WORK, "sparse-20g.img")
        with open(sparse, "wb") as f:
            f.truncate(20 << 30)
        cached = os.path.join(WORK, "cached-2g.bin")
        with open(cached, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(2 << 10):
                f.write(block)
        bins = [args.bin] + ([args.bin_b] if args.bin_b else [])
        for name, path in [("20 GiB sparse file", sparse), ("2 GiB file in the page cache", cached)]:
            samples = {b: [] for b in bins}
            for _ in range(args.runs):
                for b in bins:
                    samples[b].append(time_to_offer(b, path))
            for b in bins:
                s = sorted(samples[b])
                print(f"{name}, {b}: n={len(s)} median={statistics.median(s):.1f} ms  "
                      f"min={s[0]:.1f}  max={s[-1]:.1f} ms")
    finally:
        subprocess.run(["rm", "-rf", WORK], check=True)


if __name__ == "__main__":
    main()
