"""The demo's egress bot: it may reach pypi.org and nothing else. Every 10 s it tries an allowed
site, a site that is not on its list, and a raw connection that ignores the proxy settings,
and prints what happened."""

import socket
import time
import urllib.request


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # uses HTTPS_PROXY: the gateway
            return f"HTTP {resp.status}, {len(resp.read())} bytes"
    except Exception as err:  # noqa: BLE001 - the demo prints whatever happened
        return f"refused: {err}"


def raw(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3) as sock:  # no proxy
            sock.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            return f"answered: {sock.recv(64)[:40]!r}"
    except OSError as err:
        return f"refused: {err}"


while True:
    print("allowed  https://pypi.org/simple/six/ ->", fetch("https://pypi.org/simple/six/"), flush=True)
    print("denied   https://example.com/         ->", fetch("https://example.com/"), flush=True)
    print("raw IP   1.1.1.1:80 (no proxy)        ->", raw("1.1.1.1", 80), flush=True)
    time.sleep(10)
