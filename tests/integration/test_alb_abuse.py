# test_alb_abuse.py — request-smuggling and abuse defenses through the real ALB in
# front of a real nginx: every shape RFC 9112 forbids (or that two parsers could read
# two ways) is answered with the right 4xx, counted under refused.<reason> in GetStats,
# and never reaches the backend; size limits come from the `limits` settings; a client
# that sends its head too slowly gets 408 (slowloris).

import socket
import time

import pytest

import mp_alb
from mp_alb import raw_exchange, read_to_close

T = 10
LIMITS = {"max_request_line": 512, "max_header_line": 256, "max_header_bytes": 2048,
          "max_headers": 20, "max_body_bytes": 4096}


@pytest.fixture
def alb(start_host, alb_so, nginx_backends):
    web = nginx_backends("web")
    settings = {"upstreams": {"web": {"servers": [f"127.0.0.1:{web.port}"]}},
                "routes": [{"id": "all", "upstream": "web"}],
                "limits": LIMITS, "timeouts": {"header_ms": 500}}
    h, port = mp_alb.start_alb(start_host, alb_so, settings)
    return h, port, web




def refused(h):
    m = h.pb.module_pb2
    st = h.module.GetStats(m.GetStatsRequest(instance_id="alb"), timeout=T).stats.custom_stats
    return {k[len("refused."):]: int(v) for k, v in st.items() if k.startswith("refused.")}, st


H = b"Host: a.test\r\n"
CASES = [
    # (name, request bytes, status, counter)
    ("cl_and_te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n0\r\n\r\n", 400, "cl_and_te"),
    ("duplicate_cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n"
     b"hello!", 400, "cl_conflict"),
    ("invalid_cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400,
     "cl_invalid"),
    ("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n  two\r\n\r\n", 400, "obs_fold"),
    ("bare_lf", b"GET / HTTP/1.1\n" + H + b"\r\n", 400, "bare_lf"),
    ("bare_cr", b"GET / HTTP/1.1\r\nX-A: a\rb\r\n" + H + b"\r\n", 400, "bare_cr"),
    ("te_not_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400,
     "te_not_chunked"),
    ("space_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", 400,
     "header_ws_before_colon"),
    ("two_hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400, "host_duplicate"),
    ("no_host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "host_missing"),
    ("long_request_line", b"GET /" + b"a" * 600 + b" HTTP/1.1\r\n" + H + b"\r\n", 414,
     "start_line_too_long"),
    ("long_header_line", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 300 + b"\r\n\r\n", 431,
     "headers_too_large"),
    ("too_many_headers", b"GET / HTTP/1.1\r\n" + H +
     b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n", 431, "too_many_headers"),
    ("big_header_section", b"GET / HTTP/1.1\r\n" + H +
     b"".join(b"X-%d: " % i + b"v" * 150 + b"\r\n" for i in range(15)) + b"\r\n", 431,
     "headers_too_large"),
]


@pytest.mark.parametrize("name,data,status,counter", CASES, ids=[c[0] for c in CASES])
def test_refused_with_the_right_status_and_counted(alb, name, data, status, counter):
    h, port, web = alb
    out = raw_exchange(port, data)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert out.count(b"HTTP/1.1 ") == 1  # nothing else was answered on that connection
    got, _ = refused(h)
    assert got.get(counter) == 1, got
    time.sleep(0.1)
    assert web.access_log_lines() == []  # the backend never saw a byte of it


def test_body_limit_is_413_for_length_and_for_chunked(alb):
    h, port, web = alb
    out = raw_exchange(port, b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5000\r\n\r\n"
                   + b"x" * 5000)
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    chunk = b"%x\r\n" % 3000 + b"y" * 3000 + b"\r\n"
    out = raw_exchange(port, b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                   + chunk + chunk + b"0\r\n\r\n")
    # the first chunk may already be on its way: the answer is 413 or a cut connection,
    # never the backend's 200
    assert not out.startswith(b"HTTP/1.1 200"), out[:200]
    _, st = refused(h)
    assert st["body_too_large"] == "2"
    out = raw_exchange(port, b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 4096\r\n"
                   b"Connection: close\r\n\r\n" + b"z" * 4096)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]  # at the limit is fine


def test_slowloris_gets_408(alb):
    h, port, web = alb
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        t0 = time.monotonic()
        for piece in (b"Host: a", b".test\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
            time.sleep(0.2)
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        out = read_to_close(s)
        assert out.startswith(b"HTTP/1.1 408 "), out[:200]
        assert time.monotonic() - t0 < 3
