#!/usr/bin/env python3
"""A standard third-party DNS-SD browser (python-zeroconf) looking for deaddrop holders: browses
_deaddrop._tcp.local. for a few seconds, resolves every instance, and prints one JSON line per
instance with its name, host, port, addresses and TXT. Used by the interop test; run it inside a
test namespace only."""
import json
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

SERVICE = "_deaddrop._tcp.local."
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
found = {}


class Listener(ServiceListener):
    def add_service(self, zc, type_, name):
        found[name] = None

    def update_service(self, zc, type_, name):
        found[name] = None

    def remove_service(self, zc, type_, name):
        pass


zc = Zeroconf(ip_version=IPVersion.All)
ServiceBrowser(zc, SERVICE, Listener())
time.sleep(seconds)
for name in sorted(found):
    info = zc.get_service_info(SERVICE, name, timeout=2000)
    if info is None:
        print(json.dumps({"name": name, "resolved": False}))
        continue
    print(json.dumps({
        "name": name,
        "resolved": True,
        "server": info.server,
        "port": info.port,
        "addresses": info.parsed_addresses(),
        "txt": {k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()},
    }))
zc.close()
