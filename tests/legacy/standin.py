#!/usr/bin/env python3
"""A stand-in for the original p2p_dead_drop.py, written from the protocol facts in issue 5 (not
from the original's code), used by the --legacy interop tests. It only ever talks to the
broadcast address and ports it is given (the tests use loopback).

Facts it implements:
- room id: sha256("room:" + passphrase).hexdigest()[:12]
- UDP JSON datagrams: HELLO {t, room, ip, port} every 5 s; OFFER {t, id, kind, name, port,
  expires_at, room} once per drop
- TCP fetch: one line {"op": "fetch", "token": T}; one reply line {"ok": true, "kind", "name"} or
  {"ok": false, "err": "notfound"|"badjson"|"badop"}; then an 8-byte big-endian length and the
  payload; the drop is removed on its first fetch; later than expires_at + 2 s finds nothing
- payload: 16-byte salt + Fernet token, key = urlsafe_b64encode(scrypt(pass, salt, 2^14, 8, 1, 32))
- the original's run auto-fetches only kind "msg"
"""
import argparse
import base64
import hashlib
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt


def room_id(passphrase):
    return hashlib.sha256(("room:" + passphrase).encode()).hexdigest()[:12]


def derive_key(passphrase, salt):
    raw = Scrypt(salt=salt, length=32, n=2 ** 14, r=8, p=1).derive(passphrase.encode())
    return base64.urlsafe_b64encode(raw)


def seal(passphrase, plaintext):
    salt = os.urandom(16)
    return salt + Fernet(derive_key(passphrase, salt)).encrypt(plaintext)


def unseal(passphrase, payload):
    salt, token = payload[:16], payload[16:]
    return Fernet(derive_key(passphrase, salt)).decrypt(token)


def say(obj):
    print(json.dumps(obj), flush=True)


def udp_sender(bind):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind((bind, 0))
    return s


def udp_listener(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(min(65536, n - len(buf)))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def read_line(conn):
    buf = b""
    while not buf.endswith(b"\n"):
        c = conn.recv(1)
        if not c:
            break
        buf += c
    return buf


def serve(args):
    if args.msg is not None:
        kind, name, plain = "msg", "message", args.msg.encode()
    else:
        kind, name = "file", os.path.basename(args.file)
        with open(args.file, "rb") as f:
            plain = f.read()
    token = secrets.token_urlsafe(12)
    payload = seal(args.room, plain)
    expires_at = time.time() + args.ttl
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.tcp_port))
    srv.listen(8)
    port = srv.getsockname()[1]
    room = room_id(args.room)
    udp = udp_sender(args.bind)
    target = (args.bcast, args.udp_port)
    say({"token": token, "port": port})
    udp.sendto(json.dumps({"t": "OFFER", "id": token, "kind": kind, "name": name, "port": port,
                           "expires_at": expires_at, "room": room}).encode(), target)
    done = threading.Event()

    def hello():
        while not done.is_set():
            udp.sendto(json.dumps({"t": "HELLO", "room": room, "ip": args.bind, "port": port}).encode(), target)
            done.wait(5)

    threading.Thread(target=hello, daemon=True).start()
    drops = {token: (kind, name, payload)}
    srv.settimeout(0.2)
    while time.time() < expires_at + 2:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(10)
            line = read_line(conn)
            try:
                req = json.loads(line)
            except ValueError:
                conn.sendall(json.dumps({"ok": False, "err": "badjson"}).encode() + b"\n")
                continue
            if req.get("op") != "fetch":
                conn.sendall(json.dumps({"ok": False, "err": "badop"}).encode() + b"\n")
                continue
            drop = drops.pop(req.get("token"), None) if time.time() <= expires_at + 2 else None
            if drop is None:
                conn.sendall(json.dumps({"ok": False, "err": "notfound"}).encode() + b"\n")
                continue
            k, n, p = drop
            conn.sendall(json.dumps({"ok": True, "kind": k, "name": n}).encode() + b"\n")
            conn.sendall(struct.pack(">Q", len(p)) + p)
        done.set()
        return 0
    done.set()
    return 3


def fetch_one(passphrase, host, port, token, out=None):
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(json.dumps({"op": "fetch", "token": token}).encode() + b"\n")
        reply = json.loads(read_line(conn))
        if not reply.get("ok"):
            return reply
        (length,) = struct.unpack(">Q", recv_exact(conn, 8))
        plain = unseal(passphrase, recv_exact(conn, length))
    if reply["kind"] == "msg":
        return {"kind": "msg", "text": plain.decode()}
    path = out or reply["name"]
    with open(path, "wb") as f:
        f.write(plain)
    return {"kind": "file", "name": reply["name"], "path": path}


def receive(args):
    room = room_id(args.room)
    sock = udp_listener(args.udp_port)
    sock.settimeout(0.5)
    deadline = time.time() + args.timeout
    got = 0
    seen = set()
    while time.time() < deadline and got < args.count:
        try:
            data, (host, _) = sock.recvfrom(65536)
        except socket.timeout:
            continue
        try:
            d = json.loads(data)
        except ValueError:
            continue
        if d.get("t") != "OFFER" or d.get("room") != room or d.get("id") in seen:
            continue
        seen.add(d["id"])
        if d["kind"] == "msg":
            say(fetch_one(args.room, host, d["port"], d["id"]))
        else:
            say({"offer": d, "host": host})
        got += 1
    return 0 if got >= args.count else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--room", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--msg")
    g.add_argument("--file")
    s.add_argument("--bcast", default="127.255.255.255")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--udp-port", type=int, default=48555)
    s.add_argument("--tcp-port", type=int, default=0)
    s.add_argument("--ttl", type=float, default=30)
    r = sub.add_parser("receive")
    r.add_argument("--room", required=True)
    r.add_argument("--udp-port", type=int, default=48555)
    r.add_argument("--count", type=int, default=1)
    r.add_argument("--timeout", type=float, default=20)
    f = sub.add_parser("fetch")
    f.add_argument("--room", required=True)
    f.add_argument("--host", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--token", required=True)
    f.add_argument("--out")
    for name in ("fernet-encrypt", "fernet-decrypt"):
        c = sub.add_parser(name)
        c.add_argument("--key", required=True)
        c.add_argument("--data", required=True)
    k = sub.add_parser("scrypt-key")
    k.add_argument("--room", required=True)
    k.add_argument("--salt-hex", required=True)
    p = sub.add_parser("seal")
    p.add_argument("--room", required=True)
    p.add_argument("--text", required=True)
    o = sub.add_parser("unseal")
    o.add_argument("--room", required=True)
    o.add_argument("--payload-hex", required=True)
    h = sub.add_parser("room-id")
    h.add_argument("--room", required=True)
    args = ap.parse_args()

    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "receive":
        return receive(args)
    if args.cmd == "fetch":
        result = fetch_one(args.room, args.host, args.port, args.token, args.out)
        say(result)
        return 0 if result.get("ok", True) else 4
    if args.cmd == "fernet-encrypt":
        print(Fernet(args.key.encode()).encrypt(args.data.encode()).decode())
    elif args.cmd == "fernet-decrypt":
        print(Fernet(args.key.encode()).decrypt(args.data.encode()).decode())
    elif args.cmd == "scrypt-key":
        print(derive_key(args.room, bytes.fromhex(args.salt_hex)).decode())
    elif args.cmd == "seal":
        print(seal(args.room, args.text.encode()).hex())
    elif args.cmd == "unseal":
        print(unseal(args.room, bytes.fromhex(args.payload_hex)).decode())
    elif args.cmd == "room-id":
        print(room_id(args.room))
    return 0


if __name__ == "__main__":
    sys.exit(main())
