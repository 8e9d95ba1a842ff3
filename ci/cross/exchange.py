#!/usr/bin/env python3
"""Exchange drops between two builds of deaddrop on loopback, in both directions.

    exchange.py --a "target/debug/deaddrop" --b "wine target/x86_64-pc-windows-gnu/debug/deaddrop.exe"

Each side is a command line (an emulator and a binary, or a binary alone). For each direction
(a to b, then b to a): the receiver runs `run --json`, the sender offers a message, a 3 MB
file and a small folder tree; everything must arrive identical. Prints the time from the
sender's start to the message on the receiver, per direction. Loopback only: every command is
confined with --interface 127.0.0.1 and a private port.
"""

import argparse
import hashlib
import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

TIMEOUT = 120  # seconds; emulators are slow to start


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process whose stdout JSON lines arrive on a queue."""

    def __init__(self, argv, env):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, env=env, text=True, errors="replace")
        self.lines = queue.Queue()
        self.err = []
        threading.Thread(target=self._read, args=(self.p.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.err.append), daemon=True).start()

    @staticmethod
    def _read(stream, put):
        for line in stream:
            put(line.rstrip("\n"))

    def event(self, kind, timeout=TIMEOUT, other=None):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                also = ""
                if other is not None:
                    other.stop()
                    also = f"\nwhile {shlex.join(other.argv)} said:\n" + "\n".join(other.err)
                raise SystemExit(f"no {kind!r} event from {shlex.join(self.argv)}\nstderr:\n"
                                 + "\n".join(self.err) + also)
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == kind:
                return ev

    def wait(self, timeout=TIMEOUT):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise SystemExit(f"{shlex.join(self.argv)} did not exit\nstderr:\n" + "\n".join(self.err))

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def digest(path):
    """A hash of a file, or of a folder tree (relative names and contents)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files) + [d + "/" for d in dirs]:
            rel = os.path.relpath(os.path.join(root, name.rstrip("/")), path)
            h.update(rel.replace(os.sep, "/").encode() + (b"/" if name.endswith("/") else b""))
            if not name.endswith("/"):
                with open(os.path.join(root, name), "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def wine_path(path):
    """A Unix path as a program under Wine sees it: drive Z: is the Unix root."""
    return "Z:" + path.replace("/", "\\")


def one_way(sender, receiver, label, work, sender_path=str, receiver_path=str):
    port = free_port()
    env = dict(os.environ, DEADDROP_ROOM="cross-platform-room")
    common = ["--interface", "127.0.0.1", "--port", str(port)]
    inbox = os.path.join(work, f"inbox-{label}")
    os.makedirs(inbox)
    recv = Proc(receiver + ["run", "--json", "--name", "receiver", "--dir", receiver_path(inbox)] + common, env)
    try:
        recv.event("listening")
        # A message, and how long it takes to show.
        text = f"hello across platforms ({label})"
        started = time.monotonic()
        s = Proc(sender + ["send-msg", "--json", "--name", "sender", "--ttl", "60s", text] + common, env)
        got = recv.event("message", other=s)
        latency = time.monotonic() - started
        assert got["text"] == text, got
        assert s.wait() == 0, s.err
        # A file and a folder.
        src = os.path.join(work, f"src-{label}")
        os.makedirs(os.path.join(src, "tree", "sub", "deeper"))
        with open(os.path.join(src, "payload.bin"), "wb") as f:
            f.write(os.urandom(3_000_000))
        for rel, size in [("tree/a.txt", 10), ("tree/sub/b.bin", 70_000), ("tree/sub/deeper/c", 0),
                          ("tree/naïve.txt", 5)]:
            with open(os.path.join(src, rel), "wb") as f:
                f.write(os.urandom(size))
        os.makedirs(os.path.join(src, "tree", "empty"))
        for name in ["payload.bin", "tree"]:
            s = Proc(sender + ["send-file", "--json", "--name", "sender", "--ttl", "60s",
                               sender_path(os.path.join(src, name))] + common, env)
            got = recv.event("received", other=s)
            assert s.wait() == 0, s.err
            saved = os.path.join(inbox, name)
            assert digest(saved) == digest(os.path.join(src, name)), f"{name} differs"
        # Names Windows reserves or forbids arrive made safe, the same on every system. (Only
        # from a Unix sender: on Windows such a file cannot exist; `con.txt` is the console.)
        unix_sender = sender_path is str
        for name, safe in [("con.txt", "_con.txt"), ("what?.txt", "what_.txt")] if unix_sender else []:
            with open(os.path.join(src, name), "wb") as f:
                f.write(name.encode())
            s = Proc(sender + ["send-file", "--json", "--name", "sender", "--ttl", "60s",
                               sender_path(os.path.join(src, name))] + common, env)
            got = recv.event("received", other=s)
            assert s.wait() == 0, s.err
            with open(os.path.join(inbox, safe), "rb") as f:
                assert f.read() == name.encode(), f"{name} arrived changed"
        return latency
    finally:
        recv.stop()


def two_receivers(sender, receiver, work, receiver_path=str):
    """Two receivers on one host share the discovery port; an --everyone message reaches both.

    `--everyone` counts devices (a device is its config folder's device key), so each receiver
    gets a config folder of its own: two devices that happen to share a host and a port."""
    port = free_port()
    common = ["--interface", "127.0.0.1", "--port", str(port)]
    recvs = []
    try:
        for n in range(2):
            config = os.path.join(work, f"config-receiver{n}")
            os.makedirs(config)
            env = dict(os.environ, DEADDROP_ROOM="cross-platform-room",
                       DEADDROP_CONFIG_DIR=receiver_path(config))
            r = Proc(receiver + ["run", "--json", "--no-files", "--name", f"receiver{n}"] + common, env)
            r.event("listening")
            recvs.append(r)
        env = dict(os.environ, DEADDROP_ROOM="cross-platform-room")
        s = Proc(sender + ["send-msg", "--json", "--everyone", "--ttl", "30s", "to both"] + common, env)
        for r in recvs:
            assert r.event("message", other=s)["text"] == "to both"
        s.stop()
    finally:
        for r in recvs:
            r.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="one side's command line")
    ap.add_argument("--b", required=True, help="the other side's command line")
    ap.add_argument("--label", default="b", help="a name for side b in the output")
    ap.add_argument("--b-under-wine", action="store_true", help="side b takes Windows paths (Z:\\...)")
    args = ap.parse_args()
    a, b = shlex.split(args.a), shlex.split(args.b)
    b_path = wine_path if args.b_under_wine else str
    with tempfile.TemporaryDirectory() as work:
        there = one_way(a, b, "a-to-b", work, receiver_path=b_path)
        back = one_way(b, a, "b-to-a", work, sender_path=b_path)
        two_receivers(a, b, work, receiver_path=b_path)
    print(f"{args.label}: message, file and folder both ways, two receivers on one host; message shown after "
          f"{there * 1000:.0f} ms (native to {args.label}) and {back * 1000:.0f} ms ({args.label} to native)")


if __name__ == "__main__":
    sys.exit(main())
