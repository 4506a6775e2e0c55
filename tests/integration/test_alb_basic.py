# test_alb_basic.py — the ALB plugin (plugins/alb) as an HTTP/1.1 reverse proxy: routing
# by host and path, round-robin, keep-alive, request bodies (Content-Length and chunked),
# forwarding headers, local errors (404, 502, 400 for smuggling), HEAD, pipelining and a
# large streamed response. Backends are real nginx servers on loopback (mp_nginx.py, the
# nginx_backends fixture); a Python one only for the WebSocket echo, which nginx cannot do.
#
# The plugin is compiled here from plugins/alb/*.c so the test does not depend on the
# Makefile wiring; once alb.so is built by make, the test still builds its own copy.

import hashlib
import http.client
import http.server
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from mp_nginx import parse_kv
from mp_alb import raw_exchange, read_until, request, start_alb, websocket_upgrade
from mphelpers import free_port

BIG = 10 * 1024 * 1024


@pytest.fixture(scope="session")
def alb_plugin(alb_so):
    return alb_so


class WsEchoBackend(http.server.ThreadingHTTPServer):
    """Answers a WebSocket upgrade with 101 and then echoes raw bytes: nginx has no way
    to be that backend. Anything else gets 404."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), WsEchoHandler)

    @property
    def port(self):
        return self.server_address[1]


class WsEchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/ws") and self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:  # raw echo: the proxy must now just pump bytes
                b = self.connection.recv(65536)
                if not b:
                    break
                self.connection.sendall(b)
            self.close_connection = True
            return
        self.send_error(404)


@pytest.fixture
def ws_backend():
    srv = WsEchoBackend()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def alb_host(start_host, plugin, upstreams, routes, timeouts=None):
    settings = {"upstreams": {name: {"servers": [f"127.0.0.1:{p}" for p in ports],
                                     "balance": "round-robin"}
                              for name, ports in upstreams.items()},
                "routes": routes}
    if timeouts:
        settings["timeouts"] = timeouts
    return start_alb(start_host, plugin, settings)


@pytest.fixture
def proxy(start_host, alb_plugin, nginx_backends):
    """api (one server) for a.example/api, web (two servers) for *.b.example and
    rr.example, and nothing else (404). The servers are nginx (mp_nginx.py)."""
    api = nginx_backends("api", echo_headers=("X-Secret",), big_size=BIG)
    web1, web2 = nginx_backends("web1"), nginx_backends("web2")
    h, port = alb_host(start_host, alb_plugin,
                       {"api": [api.port], "web": [web1.port, web2.port]},
                       [{"host": "a.example", "path_prefix": "/api", "upstream": "api"},
                        {"host": "*.b.example", "upstream": "web"},
                        {"host": "rr.example", "upstream": "web"}])
    return {"host": h, "port": port, "api": api, "web1": web1, "web2": web2}






def test_routes_by_host_and_path_with_curl(proxy):
    port = proxy["port"]
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "-H", "Host: a.example",
                        f"http://127.0.0.1:{port}/api/x?q=1"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    got = parse_kv(r.stdout)
    assert got["backend"] == "api" and got["uri"] == "/api/x?q=1"
    status, hdrs, body = request(port, "GET", "/foo", "x.b.example")
    assert status == 200
    assert parse_kv(body)["backend"] in ("web1", "web2")
    assert hdrs["x-backend"] in ("web1", "web2")
    assert "marchproxy-alb" in hdrs.get("via", "")
    # a.example outside /api matches no route; a suffix match needs a label before it
    assert request(port, "GET", "/other", "a.example")[0] == 404
    assert request(port, "GET", "/", "b.example")[0] == 404
    assert request(port, "GET", "/", "nothing.example")[0] == 404
    assert [(r["method"], r["uri"]) for r in proxy["api"].requests(wait_for=1)] == \
        [("GET", "/api/x?q=1")]


def test_round_robin_across_two_servers(proxy):
    names = [parse_kv(request(proxy["port"], "GET", f"/n{i}", "rr.example")[2])["backend"]
             for i in range(10)]
    assert names.count("web1") == 5 and names.count("web2") == 5, names


def test_keep_alive_serves_several_requests_on_one_connection(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy["port"], timeout=10)
    socks = set()
    for i in range(6):
        conn.request("GET", f"/api/k{i}", headers={"Host": "a.example"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200 and parse_kv(body)["uri"] == f"/api/k{i}"
        socks.add(id(conn.sock))
    conn.close()
    assert len(socks) == 1  # http.client reconnects if the proxy had closed it
    assert [r["uri"] for r in proxy["api"].requests(wait_for=6)] == \
        [f"/api/k{i}" for i in range(6)]


def test_post_bodies_reach_the_backend_intact(proxy):
    # nginx's /upload reads the body to the end and keeps it: compared byte for byte
    data = os.urandom(1_000_003)
    status, _, body = request(proxy["port"], "POST", "/api/cl/upload", "a.example", body=data)
    assert status == 200 and parse_kv(body)["length"] == str(len(data))
    assert proxy["api"].upload_bytes(body) == data
    # chunked from the client, with odd chunk sizes
    parts = [os.urandom(n) for n in (1, 17, 70_000, 5, 300_000)]
    conn = http.client.HTTPConnection("127.0.0.1", proxy["port"], timeout=10)
    conn.request("POST", "/api/chunked/upload", body=iter(parts), encode_chunked=True,
                 headers={"Host": "a.example", "Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    whole = b"".join(parts)
    assert r.status == 200 and parse_kv(body)["length"] == str(len(whole))
    assert proxy["api"].upload_bytes(body) == whole


def test_forwarding_headers_reach_the_backend(proxy):
    _, _, body = request(proxy["port"], "GET", "/api/h/echo-headers", "a.example",
                         headers={"Connection": "keep-alive, X-Secret", "X-Secret": "no"})
    hdrs = parse_kv(body)
    assert hdrs["x_forwarded_for"] == "127.0.0.1"
    assert "marchproxy-alb" in hdrs["via"]
    assert hdrs["http_host"] == "a.example"
    assert hdrs["x-secret"] == ""  # named in Connection: hop-by-hop, so not forwarded


def test_upstream_down_is_502(start_host, alb_plugin):
    dead = free_port()
    h, port = alb_host(start_host, alb_plugin, {"gone": [dead]}, [{"upstream": "gone"}])
    status, _, body = request(port, "GET", "/", "any.example")
    assert status == 502 and b"502" in body
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                        f"http://127.0.0.1:{port}/x"], capture_output=True, text=True, timeout=20)
    assert r.stdout == "502"


def test_smuggling_attempt_is_refused_before_the_backend(proxy):
    attack = (b"POST /api/a HTTP/1.1\r\nHost: a.example\r\nContent-Length: 44\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
              b"GET /api/smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n")
    out = raw_exchange(proxy["port"], attack)
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert out.count(b"HTTP/1.1") == 1
    time.sleep(0.2)
    assert proxy["api"].access_log_lines() == []


def test_head_has_the_get_headers_and_no_body(proxy):
    status, hdrs, body = request(proxy["port"], "GET", "/api/big", "a.example")
    assert status == 200 and len(body) == BIG
    s = socket.create_connection(("127.0.0.1", proxy["port"]), timeout=5)
    s.sendall(b"HEAD /api/big HTTP/1.1\r\nHost: a.example\r\n\r\n"
              b"GET /api/after HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    head, rest = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {BIG}".encode() in head.lower()
    # no body after the HEAD response: the next bytes are the pipelined GET's response
    assert rest.startswith(b"HTTP/1.1 200")
    assert b"uri=/api/after\n" in rest


def test_pipelined_requests_answered_in_order(proxy):
    reqs = b"".join(f"GET /api/p{i} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode()
                    for i in range(4))
    reqs += b"GET /api/last HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
    out = raw_exchange(proxy["port"], reqs)
    paths = [parse_kv(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["uri"]
             for part in out.split(b"HTTP/1.1 200")[1:]] if out.count(b"HTTP/1.1 200") == 5 \
        else None
    assert paths == [f"/api/p{i}" for i in range(4)] + ["/api/last"], out[:500]


def test_404_keeps_the_connection_and_drops_the_body(proxy):
    """A request no route takes is answered 404 once its body has been read and dropped,
    and the connection serves the next requests (as nginx and HAProxy do): a
    Content-Length body, a chunked one and a HEAD, pipelined with good requests."""
    body = b"GET /api/x HTTP/1.1\r\n"  # body bytes that look like a request: dropped
    reqs = (b"POST /nope HTTP/1.1\r\nHost: nothing.example\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body +
            b"GET /api/one HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"POST /nope HTTP/1.1\r\nHost: nothing.example\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            b"HEAD /nope HTTP/1.1\r\nHost: nothing.example\r\n\r\n"
            b"GET /api/two HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    out = raw_exchange(proxy["port"], reqs)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]
    assert statuses == [404, 200, 404, 404, 200], out[:800]
    assert b"connection: close" not in out.split(b"HTTP/1.1 200")[0].lower(), out[:400]
    assert [r["uri"] for r in proxy["api"].requests(wait_for=2)] == ["/api/one", "/api/two"]


def test_404_with_a_body_over_the_bound_closes(proxy):
    """A body too large to read and drop (over 1 MiB) gets its 404 and the close, and so
    does a client waiting for 100 Continue (at once, not after its wait)."""
    reqs = (b"POST /nope HTTP/1.1\r\nHost: nothing.example\r\n"
            b"Content-Length: 2000000\r\n\r\n")
    out = raw_exchange(proxy["port"], reqs)
    assert out.startswith(b"HTTP/1.1 404 "), out[:300]
    assert b"connection: close" in out.lower()
    t0 = time.monotonic()
    out = raw_exchange(proxy["port"], b"PUT /nope HTTP/1.1\r\nHost: nothing.example\r\n"
                                      b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 ") and b"connection: close" in out.lower(), out[:300]
    assert time.monotonic() - t0 < 2


def test_large_response_streams_intact(proxy):
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "-H", "Host: a.example",
                        f"http://127.0.0.1:{proxy['port']}/api/big"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == BIG
    assert hashlib.sha256(r.stdout).hexdigest() == proxy["api"].big_sha256


def test_timeouts_answer_408_and_504(start_host, alb_plugin):
    # an upstream that accepts and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        h, port = alb_host(start_host, alb_plugin, {"slow": [silent.getsockname()[1]]},
                           [{"upstream": "slow"}],
                           timeouts={"header_ms": 300, "response_ms": 400})
        t0 = time.monotonic()
        status, _, _ = request(port, "GET", "/", "x.example")
        assert status == 504 and 0.3 < time.monotonic() - t0 < 3
        # a request head that never ends
        out = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x.example\r\n")
        assert out.startswith(b"HTTP/1.1 408 "), out[:200]
    finally:
        silent.close()


def test_idle_keepalive_connection_closes_after_idle_ms(start_host, alb_plugin,
                                                        nginx_backends):
    """A kept client connection is closed after idle_ms without a request, not at the
    shorter header timeout (the proxy re-arms its one timer for the rest), and a request
    that starts in time is served; its header timer is the one that then runs."""
    be = nginx_backends("idle")
    _, port = alb_host(start_host, alb_plugin, {"be": [be.port]}, [{"upstream": "be"}],
                       timeouts={"header_ms": 300, "idle_ms": 1200})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until(s, b"uri=/a\n")
        time.sleep(0.6)  # past header_ms, within idle_ms: still open
        s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until(s, b"uri=/b\n")
        assert got.startswith(b"HTTP/1.1 200 "), got[:200]
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the proxy once idle
        waited = time.monotonic() - t0
    assert 1.0 < waited < 3.0, waited


def test_websocket_upgrade_is_pumped(start_host, alb_plugin, ws_backend):
    _, port = alb_host(start_host, alb_plugin, {"ws": [ws_backend.port]},
                       [{"host": "a.example", "upstream": "ws"}])
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    websocket_upgrade(s, "/api/ws", "a.example")
    payload = os.urandom(200_000)
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        b = s.recv(65536)
        assert b
        got += b
    assert got == payload
    s.close()
