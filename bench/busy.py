#!/usr/bin/env python3
"""A busy room on the namespace LAN (root only): many drops from one device, many receivers.

    sudo python3 bench/busy.py                       # both scenarios at the budget's sizes
    sudo python3 bench/busy.py --one 50              # 50 send-msg at once on host 1, one `run` on host 2
    sudo python3 bench/busy.py --many 40x4x50        # 40 receivers on 4 hosts, 50 --everyone drops
                                                     # from a fifth host
    sudo python3 bench/busy.py --runs 3 --bin target/release/deaddrop

For each scenario it prints deliveries seen / expected, duplicates (a drop shown twice by one
receiver), the time from the first sender's start to the last delivery, and the receivers' CPU
(user + system) and peak RSS. Budgets (PRODUCT.md): 50 drops within 1 s; 40 x 50 deliveries all
exactly once within 5 s, each receiver under 32 MiB. Record the figures in BENCHMARKS.md.
"""
import argparse
import json
import os
import queue
import resource  # noqa: F401  (os.wait4's rusage)
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netlan import Lan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOM = "bench-busy-room"


class Receiver:
    """One `deaddrop run --json` process; its message lines, stamped as they are read."""

    def __init__(self, binary, prefix, dirname, device):
        # A config folder of its own: a device of its own (holders count fetches per device).
        env = dict(os.environ, DEADDROP_ROOM=ROOM, DEADDROP_CONFIG_DIR=device)
        self.proc = subprocess.Popen(prefix + [binary, "run", "--json", "--no-files", "--dir", dirname],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.listening = threading.Event()
        self.seen = []  # (time, text)
        self.lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "listening":
                self.listening.set()
            elif kind == "message":
                with self.lock:
                    self.seen.append((time.perf_counter(), event.get("text")))

    def count(self):
        with self.lock:
            return len(self.seen)

    def stop(self):
        """Ends the receiver; its CPU seconds and peak RSS (MiB)."""
        self.proc.terminate()
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def scenario(binary, lan, receivers_per_host, recv_hosts, drops, everyone, timeout):
    """Starts the receivers, then `drops` senders at once on the last host; returns the figures."""
    send_host = len(lan.names)
    tmp = f"/tmp/ddbusy{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    hosts = [h for h in recv_hosts for _ in range(receivers_per_host)]
    recvs = [Receiver(binary, lan.prefix(h), tmp, os.path.join(tmp, f"device{i}")) for i, h in enumerate(hosts)]
    for r in recvs:
        if not r.listening.wait(15):
            raise RuntimeError("a receiver did not start")
    env = dict(os.environ, DEADDROP_ROOM=ROOM)
    texts = [f"busy drop {i}" for i in range(drops)]
    extra = ["--everyone"] if everyone else []
    t0 = time.perf_counter()
    senders = [subprocess.Popen(lan.prefix(send_host) + [binary, "send-msg", "--ttl", "30s", *extra, t],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
               for t in texts]
    expected = drops * len(recvs) if everyone else drops
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(r.count() for r in recvs) < expected:
        time.sleep(0.02)
    # A little longer, to see duplicates that would come after the last expected delivery.
    time.sleep(0.5)
    figures = [r.stop() for r in recvs]
    for s in senders:
        s.kill()
        s.wait()
    seen = [r.seen for r in recvs]
    deliveries = sum(len(s) for s in seen)
    dups = sum(len(s) - len({t for _, t in s}) for s in seen)
    wanted = set(texts)
    if everyone:
        distinct = sum(len({t for _, t in s} & wanted) for s in seen)
    else:
        distinct = len(set().union(*[{t for _, t in s} for s in seen]) & wanted)
    stamps = [stamp for s in seen for stamp, _ in s]
    last = (max(stamps) - t0) if stamps else float("nan")
    cpu = [c for c, _ in figures]
    rss = [m for _, m in figures]
    return {
        "distinct": distinct,
        "expected": expected,
        "deliveries": deliveries,
        "duplicates": dups,
        "last_s": last,
        "cpu_total_s": sum(cpu),
        "cpu_max_s": max(cpu),
        "rss_max_mib": max(rss),
    }


def show(name, f):
    print(f"{name}: {f['distinct']}/{f['expected']} delivered, {f['duplicates']} duplicates, "
          f"{f['deliveries']} shown; last after {f['last_s']:.3f} s; receivers' CPU "
          f"{f['cpu_total_s']:.2f} s in all (at most {f['cpu_max_s']:.2f} s each), peak RSS "
          f"at most {f['rss_max_mib']:.1f} MiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "deaddrop"))
    ap.add_argument("--one", type=int, metavar="D", help="D drops at once from one host to one receiver")
    ap.add_argument("--many", metavar="RxHxD", help="R receivers over H hosts, D --everyone drops")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    if args.bin.endswith(os.path.join("release", "deaddrop")):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "deaddrop"], cwd=ROOT, check=True)
    if args.one is None and args.many is None:
        args.one, args.many = 50, "40x4x50"
    for run in range(args.runs):
        if args.one is not None:
            with Lan(2) as lan:
                lan.wait_ipv6()
                show(f"{args.one} drops at once from one host, one receiver (run {run + 1})",
                     scenario(args.bin, lan, 1, [1], args.one, False, args.timeout))
        if args.many is not None:
            r, h, d = (int(x) for x in args.many.split("x"))
            if r % h:
                sys.exit("--many: R must be a multiple of H")
            with Lan(h + 1) as lan:
                lan.wait_ipv6()
                show(f"{r} receivers on {h} hosts x {d} --everyone drops (run {run + 1})",
                     scenario(args.bin, lan, r // h, list(range(1, h + 1)), d, True, args.timeout))


if __name__ == "__main__":
    main()
