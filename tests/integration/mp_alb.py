# mp_alb.py — starting the host with the ALB plugin for the ALB suites: the alb.so this
# build produced (same flags as what is installed, sanitizers too) behind one listener
# whose every connection the NLB hands to the instance "alb".

import http.client
import socket
import ssl

from mphelpers import BUILDDIR, free_port


def alb_so_path():
    so = BUILDDIR / "plugins" / "alb" / ".libs" / "alb.so"
    assert so.is_file(), f"{so} missing: build it with `make` first"
    return so


def start_alb(start_host, so, settings, *, workers=2, drain_timeout_ms=3000, plugin_name=None,
              protocol="tcp"):
    """Starts a host whose instance "alb" runs `settings`; returns (Host, listener port).
    plugin_name installs the .so under that file name (to replace it later); protocol
    is the listener's and its route's ("tcp": the plugin reads whatever comes)."""
    port = free_port()
    h = start_host(plugins=[(so, plugin_name) if plugin_name else so],
                   instances={"alb": {"plugin": "alb", "settings": settings}},
                   host={"workers": workers, "drain_timeout_ms": drain_timeout_ms},
                   extra={"listeners": [{"name": "http", "address": f"127.0.0.1:{port}",
                                         "protocol": protocol}],
                          "routes": [{"id": "all", "protocol": protocol, "target": "alb"}]})
    return h, port


def read_to_close(s):
    """Everything read from socket `s` (plain or TLS) until the peer closes it, resets
    it, or stays silent for the socket's timeout."""
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout, ssl.SSLError):
            break
        if not b:
            break
        out += b
    return out


def read_until(s, marker):
    """Reads from `s` until `marker` has arrived; the peer closing first fails."""
    got = b""
    while marker not in got:
        b = s.recv(65536)
        assert b, got
        got += b
    return got


def raw_exchange(port, data, timeout=5):
    """Sends raw bytes on a new connection and returns everything read until the proxy
    closes it (or a reset, or `timeout` of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_to_close(s)


def request(port, method, path, host, body=None, headers=None, timeout=10):
    """One request on its own connection: (status, {lowercased header: value}, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"Host": host}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def websocket_upgrade(sock, path, host):
    """Sends a WebSocket upgrade request on sock and returns the response head, which
    must be a 101 that says websocket (asserted)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = sock.recv(1)
        assert b, head
        head += b
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"upgrade: websocket" in head.lower()
    return head
