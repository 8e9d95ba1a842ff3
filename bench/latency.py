#!/usr/bin/env python3
"""Message latency: from `deaddrop send-msg` process start to the text shown by a running
`deaddrop run`, N times, on the namespace LAN (sender and receiver on different hosts) and on
loopback. Prints median and spread; record the figures in BENCHMARKS.md.

    sudo python3 bench/latency.py [--sends 20] [--bin target/release/deaddrop]
    sudo python3 bench/latency.py --paths     # each discovery path on its own (namespace LAN)
    sudo python3 bench/latency.py --exit      # sender exit after its delivery is counted

With --exit, the sender runs with --json and the figure is the time from its `used_up` line (the
delivery counted) to the sender process having exited.

With --paths, the LAN is filtered so that one path carries discovery at a time: broadcast (mDNS
dropped), mDNS over IPv4 (broadcast and IPv6 dropped), mDNS over IPv6 (hosts without IPv4),
and unicast (broadcast and mDNS dropped; the holder names the receiver with --peer, then the
receiver names the holder).
"""
import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netlan import Lan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reader(proc):
    """Receiver stdout lines on a queue, each stamped with the time it was read."""
    q = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put((time.perf_counter(), line))
        q.put((time.perf_counter(), None))

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_event(q, kind, text=None, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            stamp, line = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"no {kind} event within {timeout}s") from None
        if line is None:
            raise RuntimeError("receiver exited")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == kind and (text is None or event.get("text") == text):
            return stamp


def exited(proc):
    """A queue that gets the time `proc` exited."""
    q = queue.Queue()

    def wait():
        proc.wait()
        q.put(time.perf_counter())

    threading.Thread(target=wait, daemon=True).start()
    return q


def measure(binary, sends, recv_prefix, send_prefix, extra, recv_extra=(), send_extra=(), exit_lag=None):
    """Message latencies in ms; with `exit_lag` (a list), also appends each sender's time from
    its delivery counted to its exit."""
    env = dict(os.environ, DEADDROP_ROOM="bench-room")
    receiver = subprocess.Popen(recv_prefix + [binary, "run", "--json", *extra, *recv_extra],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = reader(receiver)
    try:
        wait_event(lines, "listening")
        samples = []
        for i in range(sends):
            text = f"bench message {i}"
            t0 = time.perf_counter()
            json_out = ["--json"] if exit_lag is not None else []
            sender = subprocess.Popen(send_prefix + [binary, "send-msg", "--ttl", "10s", *json_out, *extra,
                                                     *send_extra, text],
                                      stdout=subprocess.PIPE if json_out else subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=env)
            sender_lines = reader(sender) if json_out else None
            sender_exit = exited(sender)
            try:
                shown = wait_event(lines, "message", text)
            except RuntimeError:
                sender.kill()
                raise RuntimeError(f"send {i} not shown; sender said: {sender.communicate()[1]}")
            samples.append((shown - t0) * 1000)
            if sender_lines is not None:
                counted = wait_event(sender_lines, "used_up")
                exit_lag.append((sender_exit.get(timeout=15) - counted) * 1000)
            sender.wait(timeout=15)
        return samples
    finally:
        receiver.terminate()
        receiver.wait()


def spawn_overhead(prefix, runs=20):
    """How long starting a trivial process through the same prefix takes (included above)."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(prefix + ["true"], check=True)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def report(name, samples, overhead):
    s = sorted(samples)
    q = statistics.quantiles(s, n=10)
    print(f"{name}: n={len(s)} median={statistics.median(s):.1f} ms  p10={q[0]:.1f}  p90={q[-1]:.1f}  "
          f"min={s[0]:.1f}  max={s[-1]:.1f} ms" +
          (f"  (process-spawn overhead included: {overhead:.1f} ms)" if overhead is not None else ""))


BROADCAST = "ether type ip ether daddr ff:ff:ff:ff:ff:ff"
MDNS = "udp dport 5353"


def paths(args):
    """Each discovery path alone on a two-host LAN: (name, LAN set-up, receiver and sender args)."""
    cases = [
        ("broadcast only", lambda lan: lan.drop_on_bridge(MDNS), [], []),
        ("mDNS over IPv4 only", lambda lan: lan.drop_on_bridge(BROADCAST, "ether type ip6"), [], []),
        ("mDNS over IPv6 only", lambda lan: lan.ipv6_only(), [], []),
        ("unicast, holder names receiver", lambda lan: lan.drop_on_bridge(BROADCAST, MDNS),
         [], ["--peer", "10.77.0.2"]),
        ("unicast, receiver names holder", lambda lan: lan.drop_on_bridge(BROADCAST, MDNS),
         ["--peer", "10.77.0.1"], []),
    ]
    for name, setup, recv_extra, send_extra in cases:
        with Lan(2) as lan:
            lan.wait_ipv6()
            setup(lan)
            samples = measure(args.bin, args.sends, lan.prefix(2), lan.prefix(1), [], recv_extra, send_extra)
            report(name, samples, spawn_overhead(lan.prefix(1)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=20)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "deaddrop"))
    ap.add_argument("--paths", action="store_true", help="each discovery path on its own")
    ap.add_argument("--exit", action="store_true", help="sender exit after the delivery is counted")
    args = ap.parse_args()
    if args.bin.endswith(os.path.join("release", "deaddrop")):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if args.paths:
        paths(args)
        return
    if args.exit:
        lan_lags, loop_lags = [], []
        with Lan(2) as lan:
            measure(args.bin, args.sends, lan.prefix(2), lan.prefix(1), [], exit_lag=lan_lags)
        measure(args.bin, args.sends, [], [], ["--interface", "127.0.0.1", "--port", "47901"], exit_lag=loop_lags)
        report("namespace LAN (host 1 -> host 2): sender exit after the delivery is counted", lan_lags, None)
        report("loopback: sender exit after the delivery is counted", loop_lags, None)
        return
    with Lan(2) as lan:
        lan_samples = measure(args.bin, args.sends, lan.prefix(2), lan.prefix(1), [])
        lan_overhead = spawn_overhead(lan.prefix(1))
    port = "47901"
    loop_samples = measure(args.bin, args.sends, [], [], ["--interface", "127.0.0.1", "--port", port])
    report("namespace LAN (host 1 -> host 2)", lan_samples, lan_overhead)
    report("loopback", loop_samples, spawn_overhead([]))


if __name__ == "__main__":
    main()
