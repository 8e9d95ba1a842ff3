"""A LAN of network-namespace hosts on one bridge, for benchmarks (root only).

Every packet stays inside namespaces this module creates; they are deleted on exit.
"""
import os
import subprocess
import sys


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def ip_tc(ns, dev, rate):
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "256kb", "latency", "50ms"], check=True, capture_output=True)


class Lan:
    def __init__(self, hosts, tag=None):
        if os.geteuid() != 0:
            sys.exit("this benchmark needs root to create network namespaces")
        self.tag = tag or f"ddb{os.getpid()}"
        self.switch = f"{self.tag}sw"
        self.names = []
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, hosts + 1):
            host = f"{self.tag}h{i}"
            ip("netns", "add", host)
            self.names.append(host)
            ip("link", "add", "name", "eth0", "netns", host, "type", "veth",
               "peer", "name", f"p{i}", "netns", self.switch)
            ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", host, "addr", "add", f"10.77.0.{i}/24", "brd", "+", "dev", "eth0")
            ip("-n", host, "link", "set", "eth0", "up")
            ip("-n", host, "link", "set", "lo", "up")
            ip("-n", host, "route", "add", "default", "via", "10.77.0.254", "dev", "eth0", "onlink")

    def limit_rate(self, rate):
        """Caps every host's link to `rate` (tbf), both ways: egress on the host's side and on
        the switch's side of each veth pair."""
        for i, host in enumerate(self.names, start=1):
            for ns, dev in ((host, "eth0"), (self.switch, f"p{i}")):
                ip_tc(ns, dev, rate)

    def drop_on_bridge(self, *matches):
        """Drops frames crossing the switch that match each nftables expression (bridge family)."""
        def nft(*args):
            subprocess.run(["ip", "netns", "exec", self.switch, "nft", *args], check=True, capture_output=True)
        nft("add", "table", "bridge", "bench")
        nft("add chain bridge bench fw { type filter hook forward priority 0; }")
        for m in matches:
            nft(f"add rule bridge bench fw {m} drop")

    def ipv6_only(self):
        """Replaces every host's IPv4 address with fd77::N/64 and waits for IPv6 to be usable."""
        import time
        for i, host in enumerate(self.names, start=1):
            subprocess.run(["ip", "-n", host, "route", "del", "default"], capture_output=True)
            ip("-n", host, "addr", "del", f"10.77.0.{i}/24", "dev", "eth0")
            ip("-n", host, "addr", "add", f"fd77::{i}/64", "dev", "eth0", "nodad")
        self.wait_ipv6()

    def wait_ipv6(self):
        """Waits until no host's IPv6 address is still being checked for duplicates."""
        import time
        deadline = time.monotonic() + 10
        for host in self.names:
            while True:
                out = subprocess.run(["ip", "-n", host, "-6", "addr", "show", "dev", "eth0"],
                                     capture_output=True, text=True).stdout
                if "inet6 fe80" in out and "tentative" not in out:
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"IPv6 not ready on {host}")
                time.sleep(0.1)

    def addr(self, host):
        return f"10.77.0.{host}"

    def prefix(self, host):
        """Command prefix that runs a program on host `host` (1-based)."""
        return ["ip", "netns", "exec", self.names[host - 1]]

    def close(self):
        for ns in self.names + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
