#!/usr/bin/env python3
"""File throughput and memory: deaddrop send-file -> fetch against a plain unencrypted TCP copy
(socat -b 1048576) over the same path, in the same run, interleaved. Paths: the namespace LAN
(host 1 -> host 2) and loopback. Sizes: 1 GiB and 4 GiB (files in /dev/shm so the disk is not
what is measured). Reports MB/s, the ratio to socat, and each side's peak RSS (/usr/bin/time -v).

Each round also runs examples/floor.rs, the least work an encrypted, verified copy can do (one
thread per side: read, AES-256-GCM, send / receive, open, BLAKE3, write; no protocol). On a
CPU-bound path it shows how much of the gap to socat is the cryptography itself and how much is
deaddrop's own design.

--rate caps the namespace LAN's links (a tbf qdisc on each host's interface, e.g. 1gbit) to
measure a link-bound path, as on a real LAN, instead of a CPU-bound one.

--pin runs every sender on core 0 and every receiver on core 1 (taskset; socat's and the floor's
two ends too), which is what two real hosts look like, instead of both ends sharing both cores.

Besides the ratio of medians, each row gives the ratios paired within a round (socat's time over
deaddrop's in the same round; median, min and max), which the machine's noise affects less.

    sudo python3 bench/throughput.py [--sizes 1,4] [--runs 3] [--paths lan,loopback] [--rate 1gbit] [--pin]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netlan import Lan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = "/dev/shm/deaddrop-bench"
TIME = ["/usr/bin/time", "-v"]


def need(tool, package):
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def peak_rss_kib(stderr):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(m.group(1)) if m else None


def make_file(size_gib):
    path = os.path.join(WORK, f"src-{size_gib}g.bin")
    if not os.path.exists(path) or os.path.getsize(path) != size_gib << 30:
        # Random-looking data (not zeros), written once per size.
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)
            for i in range(size_gib << 10):
                f.write(block[i % 251:] + block[:i % 251])
    return path


def listener_copy(src, send_prefix, recv_prefix, recv_cmd, send_cmd, out):
    """A copy whose receiver listens first: timed from the sender's start to the receiver's exit."""
    recv = subprocess.Popen(recv_prefix + TIME + recv_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(0.3)
    t0 = time.perf_counter()
    send = subprocess.run(send_prefix + TIME + send_cmd, stderr=subprocess.PIPE, text=True, check=True)
    _, recv_err = recv.communicate(timeout=600)
    elapsed = time.perf_counter() - t0
    assert recv.returncode == 0, f"receiver failed: {recv_err}"
    assert os.path.getsize(out) == os.path.getsize(src), "copy incomplete"
    os.remove(out)
    return elapsed, peak_rss_kib(send.stderr), peak_rss_kib(recv_err)


def socat_copy(src, send_prefix, recv_prefix, host, port):
    out = os.path.join(WORK, "socat-out.bin")
    return listener_copy(src, send_prefix, recv_prefix,
                         ["socat", "-b1048576", "-u", f"TCP-LISTEN:{port},reuseaddr", f"OPEN:{out},creat,trunc"],
                         ["socat", "-b1048576", "-u", f"OPEN:{src}", f"TCP:{host}:{port}"], out)


def floor_copy(src, send_prefix, recv_prefix, host, port):
    out = os.path.join(WORK, "floor-out.bin")
    floor = os.path.join(ROOT, "target", "release", "examples", "floor")
    return listener_copy(src, send_prefix, recv_prefix, [floor, "recv", f"{host}:{port}", out],
                         [floor, "send", src, f"{host}:{port}"], out)


def deaddrop_copy(binary, src, send_prefix, recv_prefix, extra):
    env = dict(os.environ, DEADDROP_ROOM="bench-room")
    dest = os.path.join(WORK, "recv")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    send = subprocess.Popen(send_prefix + TIME + [binary, "send-file", "--json", "--ttl", "10m", *extra, src],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    token = None
    for line in send.stdout:
        event = json.loads(line)
        if event.get("event") == "offered":
            token = event["token"]
            break
    t0 = time.perf_counter()
    recv = subprocess.run(recv_prefix + TIME + [binary, "fetch", "--dir", dest, *extra, token],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if recv.returncode != 0:
        raise RuntimeError(f"fetch failed: {recv.stderr}")
    _, send_err = send.communicate(timeout=60)
    got = os.path.join(dest, os.path.basename(src))
    assert os.path.getsize(got) == os.path.getsize(src), "deaddrop copy incomplete"
    shutil.rmtree(dest)
    return elapsed, peak_rss_kib(send_err), peak_rss_kib(recv.stderr)


def measure(name, binary, sizes, runs, send_prefix, recv_prefix, host, extra, port):
    rows = []
    for size in sizes:
        src = make_file(size)
        socat, floor, ours = [], [], []
        for _ in range(runs):
            socat.append(socat_copy(src, send_prefix, recv_prefix, host, port))
            floor.append(floor_copy(src, send_prefix, recv_prefix, host, port + 1))
            ours.append(deaddrop_copy(binary, src, send_prefix, recv_prefix, extra))
            print(f"  {name} {size} GiB: socat {socat[-1][0]:.2f} s, floor {floor[-1][0]:.2f} s, "
                  f"deaddrop {ours[-1][0]:.2f} s", file=sys.stderr, flush=True)
        mb = (size << 30) / 1e6
        paired = [s[0] / o[0] for s, o in zip(socat, ours)]
        paired_floor = [s[0] / f[0] for s, f in zip(socat, floor)]
        s_med = statistics.median(t for t, _, _ in socat)
        f_med = statistics.median(t for t, _, _ in floor)
        o_med = statistics.median(t for t, _, _ in ours)
        row = {
            "path": name, "size": f"{size} GiB",
            "socat_MBps": round(mb / s_med), "floor_MBps": round(mb / f_med), "deaddrop_MBps": round(mb / o_med),
            "ratio": round(s_med / o_med, 2), "floor_ratio": round(s_med / f_med, 2),
            "paired_ratio": round(statistics.median(paired), 2),
            "paired_ratio_min": round(min(paired), 2), "paired_ratio_max": round(max(paired), 2),
            "paired_floor_ratio": round(statistics.median(paired_floor), 2),
            "deaddrop_sender_peak_MiB": round(max(r for _, r, _ in ours) / 1024, 1),
            "deaddrop_receiver_peak_MiB": round(max(r for _, _, r in ours) / 1024, 1),
            "socat_peak_MiB": round(max(max(a, b) for _, a, b in socat) / 1024, 1),
            "runs": runs,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--paths", default="lan,loopback")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "deaddrop"))
    ap.add_argument("--rate", help="cap the namespace LAN's links to this tbf rate, e.g. 1gbit")
    ap.add_argument("--pin", action="store_true", help="senders on core 0, receivers on core 1 (taskset)")
    args = ap.parse_args()
    pin_send, pin_recv = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if args.pin else ([], [])
    sizes = [int(s) for s in args.sizes.split(",")]
    need("socat", "socat")
    need("/usr/bin/time", "time")
    need("taskset", "util-linux")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "deaddrop", "--example", "floor"],
                   cwd=ROOT, check=True)
    os.makedirs(WORK, exist_ok=True)
    rows = []
    try:
        if "lan" in args.paths:
            with Lan(2) as lan:
                name = "namespace LAN"
                if args.rate:
                    lan.limit_rate(args.rate)
                    name += f" at {args.rate}"
                if args.pin:
                    name += ", pinned"
                rows += measure(name, args.bin, sizes, args.runs, lan.prefix(1) + pin_send,
                                lan.prefix(2) + pin_recv, lan.addr(2), [], 47950)
        if "loopback" in args.paths:
            rows += measure("loopback, pinned" if args.pin else "loopback", args.bin, sizes, args.runs,
                            pin_send, pin_recv, "127.0.0.1",
                            ["--interface", "127.0.0.1", "--port", "47951"], 47952)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print("\n| path | size | socat MB/s | floor MB/s | floor ratio (paired) | deaddrop MB/s | ratio | "
          "paired ratio median (min–max) | sender peak RSS | receiver peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['size']} | {r['socat_MBps']} | {r['floor_MBps']} | {r['floor_ratio']} "
              f"({r['paired_floor_ratio']}) | {r['deaddrop_MBps']} | {r['ratio']} | "
              f"{r['paired_ratio']} ({r['paired_ratio_min']}–{r['paired_ratio_max']}) | "
              f"{r['deaddrop_sender_peak_MiB']} MiB | {r['deaddrop_receiver_peak_MiB']} MiB |")


if __name__ == "__main__":
    main()
