#!/usr/bin/env python3
"""Rooms beyond the LAN, measured on the namespace topology of the NAT tests (root only): two
LANs, each a bridge with two hosts behind its own NAT router (nftables masquerade, a firewall that
drops new inbound connections), and a "public" network between the routers with the relay host.

    a1 10.1.0.1, a2 10.1.0.2 -- ra (NAT) -- 198.18.0.0/24, relay .10 -- rb (NAT) -- b1 10.2.0.1

In one run, interleaved, for each path:
  - lan:     a1 -> a2, same LAN, no invite (TCP), and socat a1 -> a2 (plain TCP) beside it;
  - direct:  a1 -> b1 with the invite (UDP through both NATs after hole punching);
  - relayed: a1 -> b1 with direct UDP between the NATs blocked (through deaddrop relay);
  - iroh floor: a1 -> b1 direct, examples/iroh_floor (one iroh stream, bytes only counted: none
    of deaddrop's handshake, records, hash or file): the engine's ceiling on this path.
it measures the message latency (send-msg start to the running receiver's message event) and
the time to fetch a file (fetch start to exit, finding the holder included) of --size MiB.

    cargo build --release --bin deaddrop --example iroh_floor
    sudo python3 bench/wide.py [--size 512] [--runs 3] [--messages 10] [--binary target/release/deaddrop]
"""
import argparse
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = "/dev/shm/deaddrop-wide-bench"
ROOM = "bench-room"


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def nsexec(ns, *args):
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True)


class Nat:
    def __init__(self):
        if os.geteuid() != 0:
            sys.exit("this benchmark needs root to create network namespaces")
        self.tag = f"dwb{os.getpid()}"
        self.names = []
        pub = self.ns("pub")
        ip("-n", pub, "link", "add", "br0", "type", "bridge")
        ip("-n", pub, "link", "set", "br0", "up")
        relay = self.ns("relay")
        self.plug(relay, "eth0", pub, "prelay", "198.18.0.10/24")
        for side, n in (("a", 1), ("b", 2)):
            router = self.ns(f"r{side}")
            self.plug(router, "wan0", pub, f"p{side}", f"198.18.0.{n}/24")
            switch = self.ns(f"sw{side}")
            ip("-n", switch, "link", "add", "br0", "type", "bridge")
            ip("-n", switch, "link", "set", "br0", "up")
            self.plug(router, "lan0", switch, "prouter", f"10.{n}.0.254/24")
            nsexec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for cmd in ("add table ip nat",
                        "add chain ip nat post { type nat hook postrouting priority 100; }",
                        "add rule ip nat post oifname wan0 masquerade",
                        "add table ip filt",
                        "add chain ip filt fw { type filter hook forward priority 0; }",
                        "add chain ip filt in { type filter hook input priority 0; }",
                        "add rule ip filt in iifname wan0 ct state new drop"):
                nsexec(router, "nft", cmd)
            for h in (1, 2):
                host = self.ns(f"{side}{h}")
                self.plug(host, "eth0", switch, f"p{h}", f"10.{n}.0.{h}/24")
                ip("-n", host, "route", "add", "default", "via", f"10.{n}.0.254")

    def ns(self, short):
        name = f"{self.tag}{short}"
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        self.names.append(name)
        return name

    def plug(self, ns, ifname, switch, port, cidr):
        ip("link", "add", "name", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", switch)
        ip("-n", switch, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", cidr, "dev", ifname)
        ip("-n", ns, "link", "set", ifname, "up")

    def block_direct(self, on):
        for side, other in (("a", 2), ("b", 1)):
            router = f"{self.tag}r{side}"
            if on:
                nsexec(router, "nft", f"add rule ip filt fw ip daddr 198.18.0.{other} drop")
            else:
                nsexec(router, "nft", "flush chain ip filt fw")

    def prefix(self, host):
        return ["ip", "netns", "exec", f"{self.tag}{host}"]

    def close(self):
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def env_for(host):
    return dict(os.environ, DEADDROP_ROOM=ROOM, DEADDROP_CONFIG_DIR=os.path.join(WORK, "config", host))


def lines(proc):
    q = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_event(q, kind, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(kind)
        line = q.get(timeout=left)
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == kind:
            return event


def start_relay(nat, binary):
    """`deaddrop relay` on the relay host, and an invite for it: (process, invite)."""
    relay = subprocess.Popen(nat.prefix("relay") + [binary, "relay", "--bind", "198.18.0.10:3340"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env_for("relay"))
    try:
        url = next(l.split("'")[1] for l in relay.stdout if "--relay" in l)
        invite = subprocess.run([binary, "invite", "--relay", url], capture_output=True, text=True,
                                check=True, env=env_for("inviter")).stdout.strip()
    except BaseException:
        relay.kill()
        raise
    return relay, invite


def message_latency(nat, binary, recv_host, invite, count):
    """Median and max ms from send-msg's start to the message event of a running receiver."""
    extra = ["--invite", invite] if invite else []
    recv = subprocess.Popen(nat.prefix(recv_host) + [binary, "run", "--json", "--no-files", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env_for(recv_host))
    q = lines(recv)
    wait_event(q, "listening")
    time.sleep(6 if invite else 0.5)  # the room's meeting point is up
    samples, vias = [], set()
    try:
        for i in range(count):
            t0 = time.perf_counter()
            send = subprocess.Popen(nat.prefix("a1") + [binary, "send-msg", *extra, f"ping {i}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for("a1"))
            event = wait_event(q, "message")
            samples.append((time.perf_counter() - t0) * 1000)
            vias.add(event.get("via"))
            send.wait(timeout=30)
    finally:
        recv.kill()
        recv.wait()
    return statistics.median(samples), max(samples), sorted(vias)


MILESTONES = [
    # (label, process, substring of a -vv log line); the first such line counts.
    ("endpoints up, meeting point dialled", "both", "meeting point (Room) answered"),
    ("in the room at the meeting point", "both", "in the room at the meeting point (Room)"),
    ("holds the meeting point", "both", "holding the room's meeting point"),
    ("receiver hears of the drop", "recv", re.compile(r"[1-9][0-9]* with drops")),
    ("receiver's session with the sender open", "recv", "session open"),
]


def log_times(text, t0_wall):
    """(seconds after t0_wall, message) for each line of a -vv log (tracing's UTC timestamps)."""
    import datetime
    out = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        stamp, _, rest = line.partition(" ")
        try:
            at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        out.append((at - t0_wall, rest))
    return out


def first_contact(nat, binary, invite, recv_up, block):
    """One first message beyond the LAN: a receiver on b1 and a sender on a1, both new processes
    of devices that never met (fresh config folders). The receiver starts `recv_up` seconds
    before the sender (0: both at once). Returns (seconds from the later start to the
    receiver's message event, {milestone: seconds}, via, how often a meeting dial found nobody)."""
    for host in ("a1", "b1"):
        shutil.rmtree(os.path.join(WORK, "config", host), ignore_errors=True)
    nat.block_direct(block)
    extra = ["--invite", invite, "-vv"]
    logs = {}
    t_recv_wall = time.time()
    t_recv = time.perf_counter()
    recv = subprocess.Popen(nat.prefix("b1") + [binary, "run", "--json", "--no-files", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for("b1"))
    q = lines(recv)
    err = {}
    threading.Thread(target=lambda: err.__setitem__("recv", recv.stderr.read()), daemon=True).start()
    time.sleep(max(0.0, recv_up - (time.perf_counter() - t_recv)))
    t0_wall = time.time()
    t0 = time.perf_counter()
    send = subprocess.Popen(nat.prefix("a1") + [binary, "send-msg", "--ttl", "60s", *extra, "first"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env_for("a1"))
    threading.Thread(target=lambda: err.__setitem__("send", send.stderr.read()), daemon=True).start()
    try:
        event = wait_event(q, "message", timeout=60)
        took = time.perf_counter() - t0
        send.wait(timeout=30)
    finally:
        for p in (send, recv):
            if p.poll() is None:
                p.send_signal(2)
        for p in (send, recv):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        nat.block_direct(False)
    time.sleep(0.5)
    seen = {}
    for who in ("recv", "send"):
        logs[who] = log_times(err.get(who, ""), t0_wall)
        # The last run's logs of each case, to read where the time went.
        with open(f"/tmp/deaddrop-first-{recv_up:g}-{int(block)}-{who}.log", "w") as f:
            f.write("\n".join(f"{at:8.3f} {msg}" for at, msg in logs[who]))
    for label, proc, needle in MILESTONES:
        for who in (("recv", "send") if proc == "both" else (proc,)):
            hit = next((at for at, msg in logs[who]
                        if (needle.search(msg) if isinstance(needle, re.Pattern) else needle in msg)), None)
            if hit is not None:
                seen[f"{label} ({'receiver' if who == 'recv' else 'sender'})"] = hit
    unanswered = sum(1 for who in logs for _, m in logs[who] if "meeting point: NoAnswer" in m)
    return took, seen, event.get("via"), unanswered


def fetch_time(nat, binary, src, recv_host, invite):
    """(whole, transfer, via): seconds from fetch's start to its exit (finding the holder and
    the handshake included), seconds from the first progress event (the holder's Start) to
    the received event (the copy checked whole), and the path the fetch reports."""
    extra = ["--invite", invite] if invite else []
    dest = os.path.join(WORK, "recv")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    send = subprocess.Popen(nat.prefix("a1") + [binary, "send-file", "--json", "--ttl", "10m", *extra, src],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env_for("a1"))
    token = wait_event(lines(send), "offered")["token"]
    if invite:
        time.sleep(6)  # the holder's meeting point is up, as when a receiver comes later
    t0 = time.perf_counter()
    recv = subprocess.Popen(nat.prefix(recv_host) + [binary, "fetch", "--json", "--dir", dest, *extra, token],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(recv_host))
    first = received = None
    via = None
    for line in recv.stdout:
        now = time.perf_counter()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "progress" and first is None:
            first = now
        elif event.get("event") == "received":
            received, via = now, event.get("via")
    err = recv.stderr.read()
    if recv.wait() != 0 or first is None or received is None:
        raise RuntimeError(f"fetch failed: {err}")
    elapsed = time.perf_counter() - t0
    send.wait(timeout=60)
    assert os.path.getsize(os.path.join(dest, os.path.basename(src))) == os.path.getsize(src)
    shutil.rmtree(dest)
    return elapsed, received - first, via


def iroh_floor_time(nat, floor, src, invite):
    """(transfer, via): iroh_floor a1 -> b1, seconds from the first byte to the last, bytes only
    counted: the engine's own ceiling on this path, without deaddrop's handshake, records,
    hash and file."""
    recv = subprocess.Popen(nat.prefix("b1") + [floor, "recv", invite], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    first = recv.stdout.readline().split()
    if len(first) != 2 or first[0] != "id":
        raise RuntimeError(f"iroh_floor recv: {first}")
    time.sleep(1)  # both ends online at the relay, as the room's members are when a fetch starts
    send = subprocess.run(nat.prefix("a1") + [floor, "send", invite, first[1], src], check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    total, via, secs = recv.stdout.readline().split()
    recv.wait(timeout=60)
    assert int(total) == os.path.getsize(src)
    print(f"  iroh floor sender: {send.stderr.strip()}", flush=True)
    return float(secs), via.lower()


def socat_time(nat, src):
    out = os.path.join(WORK, "socat-out.bin")
    recv = subprocess.Popen(nat.prefix("a2") + ["socat", "-b1048576", "-u", "TCP-LISTEN:9999,reuseaddr",
                                                f"OPEN:{out},creat,trunc"], stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    t0 = time.perf_counter()
    subprocess.run(nat.prefix("a1") + ["socat", "-b1048576", "-u", f"OPEN:{src}", "TCP:10.1.0.2:9999"], check=True)
    recv.wait(timeout=600)
    elapsed = time.perf_counter() - t0
    os.remove(out)
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512, help="MiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=10)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "deaddrop"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "target", "release", "examples", "iroh_floor"),
                    help="the iroh floor program (cargo build --release --example iroh_floor)")
    ap.add_argument("--first", type=int, default=0, metavar="N",
                    help="only the first-contact measurement (issue 28.4), N runs per case")
    ap.add_argument("--together-only", action="store_true", help="with --first: only the cases that start both at once")
    args = ap.parse_args()
    if args.first:
        return first_main(args)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    src = os.path.join(WORK, "src.bin")
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(args.size):
            f.write(block[i % 251:] + block[:i % 251])
    nat = Nat()
    relay = None
    try:
        relay, invite = start_relay(nat, args.binary)
        paths = [("lan", "a2", None, False), ("direct", "b1", invite, False), ("relayed", "b1", invite, True)]
        times = {p[0]: [] for p in paths}
        times["socat"] = []
        times["iroh floor"] = []
        wholes = {p[0]: [] for p in paths}
        vias = {p[0]: set() for p in paths}
        vias["iroh floor"] = set()
        for r in range(args.runs):
            times["socat"].append(socat_time(nat, src))
            t, via = iroh_floor_time(nat, args.floor, src, invite)
            times["iroh floor"].append(t)
            vias["iroh floor"].add(via)
            for name, host, inv, block in paths:
                nat.block_direct(block)
                whole, t, via = fetch_time(nat, args.binary, src, host, inv)
                times[name].append(t)
                wholes[name].append(whole)
                vias[name].add(via)
            nat.block_direct(False)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        lat = {}
        # The LAN with an invite given too: the LAN must stay as fast when a room also reaches
        # beyond it.
        for name, host, inv, block in paths + [("lan, invite given", "a2", invite, False)]:
            nat.block_direct(block)
            lat[name] = message_latency(nat, args.binary, host, inv, args.messages)
        nat.block_direct(False)
        lan = statistics.median(times["lan"])
        print(f"\n{args.size} MiB, {args.runs} rounds interleaved, medians. transfer: the holder's start to the "
              "copy checked whole; whole: fetch start to exit (finding the holder included)")
        print("| path | transfer | MB/s | vs LAN TCP (paired rounds) | whole | vias seen |")
        print("|---|---|---|---|---|---|")
        for name in ("socat", "lan", "iroh floor", "direct", "relayed"):
            t = statistics.median(times[name])
            mbs = (args.size << 20) / t / 1e6
            paired = ", ".join(f"{l / x:.2f}" for l, x in zip(times["lan"], times[name]))
            whole = f"{statistics.median(wholes[name]):.2f} s" if name in wholes else "-"
            seen = ", ".join(sorted(v for v in vias.get(name, set()) if v)) or "-"
            print(f"| {name} | {t:.2f} s | {mbs:.0f} | {lan / t:.2f} ({paired}) | {whole} | {seen} |")
        print(f"\nmessage latency, send-msg start to a running receiver's message event, {args.messages} messages")
        print("| path | median | max | vias seen |")
        print("|---|---|---|---|")
        for name, (med, mx, seen) in lat.items():
            print(f"| {name} | {med:.1f} ms | {mx:.1f} ms | {', '.join(v for v in seen if v)} |")
    finally:
        if relay:
            relay.kill()
        nat.close()
        shutil.rmtree(WORK, ignore_errors=True)


def first_main(args):
    """First contact beyond the LAN: how long the first message takes, and where the time goes."""
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    nat = Nat()
    relay = None
    try:
        relay, invite = start_relay(nat, args.binary)
        cases = [("receiver up 3 s", 3.0, False), ("both started together", 0.0, False),
                 ("receiver up 3 s, relay only", 3.0, True), ("both together, relay only", 0.0, True)]
        if args.together_only:
            cases = [c for c in cases if c[1] == 0.0]
        results = {c[0]: [] for c in cases}
        for r in range(args.first):
            for name, up, block in cases:
                took, seen, via, unanswered = first_contact(nat, args.binary, invite, up, block)
                results[name].append((took, seen, via, unanswered))
                if took > 1.5:
                    # Where a slow one went: its logs, kept.
                    for who in ("recv", "send"):
                        shutil.copy(f"/tmp/deaddrop-first-{up:g}-{int(block)}-{who}.log",
                                    f"/tmp/deaddrop-first-slow-{r + 1}-{up:g}-{int(block)}-{who}.log")
                print(f"run {r + 1} {name}: {took * 1000:.0f} ms via {via}; dials that found nobody: "
                      f"{unanswered}; " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(seen.items(), key=lambda kv: kv[1])),
                      flush=True)
        print(f"\nfirst message beyond the LAN, {args.first} runs per case: seconds from the later "
              "process's start (the sender's, or both) to the receiver's message event")
        print("| case | median | max | via | where the time goes (median s after that start) |")
        print("|---|---|---|---|---|")
        for name, _, _ in cases:
            runs = results[name]
            tooks = [t for t, _, _, _ in runs]
            keys = sorted({k for _, seen, _, _ in runs for k in seen},
                          key=lambda k: statistics.median([s[k] for _, s, _, _ in runs if k in s]))
            steps = "; ".join(f"{k} {statistics.median([s[k] for _, s, _, _ in runs if k in s]):.2f}" for k in keys)
            vias = ", ".join(sorted({v for _, _, v, _ in runs if v}))
            print(f"| {name} | {statistics.median(tooks):.2f} s | {max(tooks):.2f} s | {vias} | {steps} |")
    finally:
        if relay:
            relay.kill()
        nat.close()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
