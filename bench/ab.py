#!/usr/bin/env python3
"""A/B: alternate 1 GiB transfers host 1 -> host 2 on the namespace LAN between deaddrop builds
(paths to binaries) and/or `socat`, round after round, and print each one's median. Useful on a
noisy machine, where only runs interleaved in one window compare. Also prints the CPU seconds
(user + system) of both processes per transfer, and for deaddrop the time from the sender's start
(which includes hashing the file for builds that hash before offering) besides the time from the
offer. --pin runs senders on core 0 and receivers on core 1; --loopback uses 127.0.0.1 instead of
the namespace LAN.

`floor` and `floor:N` are examples/floor.rs, the least an encrypted verified copy does, with
N threads sealing and opening records on each side (build it with `cargo build --release
--example floor`).

    sudo python3 bench/ab.py socat target/release/deaddrop /tmp/other-build [--rounds 6] [--pin]
    sudo python3 bench/ab.py socat floor floor:2 [--pin]
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


PIN = {1: [], 2: []}


class Loopback:
    """Both ends on this host's loopback, with deaddrop's discovery confined to it."""
    extra = ["--interface", "127.0.0.1", "--port", "47962"]

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def prefix(self, _host):
        return []

    def addr(self, _host):
        return "127.0.0.1"


def socat(lan, src):
    out = os.path.join(WORK, "socat-out.bin")
    recv = subprocess.Popen(lan.prefix(2) + PIN[2] + ["socat", "-b1048576", "-u", "TCP-LISTEN:47960,reuseaddr",
                                             f"OPEN:{out},creat,trunc"])
    time.sleep(0.3)
    t0 = time.perf_counter()
    subprocess.run(lan.prefix(1) + PIN[1] + ["socat", "-b1048576", "-u", f"OPEN:{src}", f"TCP:{lan.addr(2)}:47960"],
                   check=True)
    recv.wait()
    elapsed = time.perf_counter() - t0
    os.remove(out)
    return elapsed, elapsed


def floor(lan, src, jobs):
    out = os.path.join(WORK, "floor-out.bin")
    binary = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "target", "release", "examples", "floor")
    recv = subprocess.Popen(lan.prefix(2) + PIN[2] + [binary, "recv", f"{lan.addr(2)}:47961", out, f"-j{jobs}"],
                            stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    t0 = time.perf_counter()
    subprocess.run(lan.prefix(1) + PIN[1] + [binary, "send", src, f"{lan.addr(2)}:47961", f"-j{jobs}"],
                   check=True)
    recv.wait()
    elapsed = time.perf_counter() - t0
    assert os.path.getsize(out) == os.path.getsize(src)
    os.remove(out)
    return elapsed, elapsed


def deaddrop(lan, binary, src):
    env = dict(os.environ, DEADDROP_ROOM="ab-room")
    dest = os.path.join(WORK, "recv")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    start = time.perf_counter()
    send = subprocess.Popen(lan.prefix(1) + PIN[1] + [binary, "send-file", "--json", *getattr(lan, "extra", []), src], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    token = json.loads(send.stdout.readline())["token"]
    t0 = time.perf_counter()
    subprocess.run(lan.prefix(2) + PIN[2] + [binary, "fetch", "--dir", dest, *getattr(lan, "extra", []), token], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    end = time.perf_counter()
    send.wait()
    return end - t0, end - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("contenders", nargs="+", help="'socat' or paths to deaddrop binaries")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--pin", action="store_true", help="senders on core 0, receivers on core 1")
    ap.add_argument("--loopback", action="store_true", help="127.0.0.1 instead of the namespace LAN")
    args = ap.parse_args()
    if args.pin:
        PIN[1], PIN[2] = ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    os.makedirs(WORK, exist_ok=True)
    src = os.path.join(WORK, "src.bin")
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            f.write(block[i % 251:] + block[:i % 251])
    times = {c: [] for c in args.contenders}
    totals = {c: [] for c in args.contenders}
    cpu = {c: [] for c in args.contenders}
    try:
        with (Loopback() if args.loopback else Lan(2)) as lan:
            for _ in range(args.rounds):
                for c in args.contenders:
                    before = children_cpu()
                    if c == "socat":
                        t, total = socat(lan, src)
                    elif c == "floor" or c.startswith("floor:"):
                        t, total = floor(lan, src, int(c.partition(":")[2] or 1))
                    else:
                        t, total = deaddrop(lan, c, src)
                    times[c].append(t)
                    totals[c].append(total)
                    cpu[c].append(children_cpu() - before)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    for c, t in times.items():
        print(f"{c}: median {statistics.median(t):.2f} s  ({', '.join(f'{x:.2f}' for x in t)}); "
              f"from the sender's start {statistics.median(totals[c]):.2f} s; "
              f"CPU median {statistics.median(cpu[c]):.2f} s")


if __name__ == "__main__":
    main()
