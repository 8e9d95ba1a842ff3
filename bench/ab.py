#!/usr/bin/env python3
"""A/B: alternate 1 GiB transfers host 1 -> host 2 on the namespace LAN between deaddrop builds
(paths to binaries) and/or `socat`, round after round, and print each one's median. Useful on a
noisy machine, where only runs interleaved in one window compare. Also prints the CPU seconds
(user + system) of both processes per transfer; a deaddrop sender's include hashing the file
once when it offers it.

    sudo python3 bench/ab.py socat target/release/deaddrop /tmp/other-build [--rounds 6]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netlan import Lan  # noqa: E402

WORK = "/dev/shm/deaddrop-ab"


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def socat(lan, src):
    out = os.path.join(WORK, "socat-out.bin")
    recv = subprocess.Popen(lan.prefix(2) + ["socat", "-b1048576", "-u", "TCP-LISTEN:47960,reuseaddr",
                                             f"OPEN:{out},creat,trunc"])
    time.sleep(0.3)
    t0 = time.perf_counter()
    subprocess.run(lan.prefix(1) + ["socat", "-b1048576", "-u", f"OPEN:{src}", f"TCP:{lan.addr(2)}:47960"],
                   check=True)
    recv.wait()
    elapsed = time.perf_counter() - t0
    os.remove(out)
    return elapsed


def deaddrop(lan, binary, src):
    env = dict(os.environ, DEADDROP_ROOM="ab-room")
    dest = os.path.join(WORK, "recv")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    send = subprocess.Popen(lan.prefix(1) + [binary, "send-file", "--json", src], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    token = json.loads(send.stdout.readline())["token"]
    t0 = time.perf_counter()
    subprocess.run(lan.prefix(2) + [binary, "fetch", "--dir", dest, token], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - t0
    send.wait()
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("contenders", nargs="+", help="'socat' or paths to deaddrop binaries")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    src = os.path.join(WORK, "src.bin")
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            f.write(block[i % 251:] + block[:i % 251])
    times = {c: [] for c in args.contenders}
    cpu = {c: [] for c in args.contenders}
    try:
        with Lan(2) as lan:
            for _ in range(args.rounds):
                for c in args.contenders:
                    before = children_cpu()
                    times[c].append(socat(lan, src) if c == "socat" else deaddrop(lan, c, src))
                    cpu[c].append(children_cpu() - before)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    for c, t in times.items():
        print(f"{c}: median {statistics.median(t):.2f} s  ({', '.join(f'{x:.2f}' for x in t)}); "
              f"CPU median {statistics.median(cpu[c]):.2f} s")


if __name__ == "__main__":
    main()
