# test_mp_nginx.py — the nginx backend fixture itself (mp_nginx.py, `nginx_backends`),
# checked with curl: what each endpoint answers, what the access log records, and that
# stopping a backend really frees its port. The ALB tests rely on all of this.

import hashlib
import os
import socket
import subprocess

from mp_nginx import big_content, parse_kv


def curl(*args, timeout=20):
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", *args], capture_output=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


def split_response(raw):
    """curl -i output -> (status, {lower-case header: value}, body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def test_endpoints_answer_as_documented(nginx_backends):
    a = nginx_backends("alpha", echo_headers=("X-Secret",), big_size=300_001)
    b = nginx_backends("beta")
    assert a.port != b.port

    status, hdrs, body = split_response(curl("-i", a.url("/some/path?q=1")))
    assert status == 200 and hdrs["x-backend"] == "alpha"
    assert parse_kv(body) == {"backend": "alpha", "method": "GET", "uri": "/some/path?q=1"}
    assert parse_kv(curl(b.url("/")))["backend"] == "beta"

    echo = parse_kv(curl("-H", "Host: h.example", "-H", "X-Forwarded-For: 10.1.2.3",
                         "-H", "Via: 1.1 test", "-H", "X-Secret: s3", "-H", "Connection: close",
                         a.url("/api/echo-headers")))
    assert echo["host"] == "h.example" and echo["x_forwarded_for"] == "10.1.2.3"
    assert echo["via"] == "1.1 test" and echo["connection"] == "close"
    assert echo["x-secret"] == "s3" and echo["x_forwarded_proto"] == ""
    assert echo["uri"] == "/api/echo-headers" and echo["remote_addr"] == "127.0.0.1"

    for code in (204, 404, 503):
        got = curl("-o", os.devnull, "-w", "%{http_code}", a.url(f"/x/status/{code}"))
        assert got == str(code).encode()

    big = curl(a.url("/api/big"))
    assert len(big) == 300_001 and big == big_content(300_001)
    assert hashlib.sha256(big).hexdigest() == a.big_sha256
    assert parse_kv(curl(a.url("/healthz"))) == {} and curl(a.url("/healthz")) == b"ok\n"


def test_upload_keeps_the_exact_body_and_the_log_records_requests(nginx_backends, tmp_path):
    n = nginx_backends("up")
    data = os.urandom(700_001)
    src = tmp_path / "body.bin"
    src.write_bytes(data)
    answer = curl("--data-binary", f"@{src}", n.url("/a/upload"))
    fields = parse_kv(answer)
    assert fields["method"] == "POST" and fields["length"] == str(len(data))
    assert n.upload_bytes(answer) == data
    # chunked: nginx reads it to the end and reports the decoded length
    answer = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{src}",
                  n.url("/upload"))
    fields = parse_kv(answer)
    assert fields["transfer_encoding"] == "chunked" and fields["length"] == str(len(data))
    assert n.upload_bytes(answer) == data

    # Two requests on one connection, then one more on a new one.
    curl(n.url("/k1"), n.url("/k2"))
    curl(n.url("/k3"))
    reqs = n.requests(wait_for=5)
    assert [r["uri"] for r in reqs] == ["/a/upload", "/upload", "/k1", "/k2", "/k3"]
    assert [r["method"] for r in reqs] == ["POST", "POST", "GET", "GET", "GET"]
    k1, k2, k3 = reqs[2:]
    assert k1["connection"] == k2["connection"] != k3["connection"]
    assert (k1["connection_requests"], k2["connection_requests"]) == ("1", "2")


def test_slow_endpoint_takes_its_time(nginx_backends):
    n = nginx_backends("slow")
    out = curl("-o", os.devnull, "-w", "%{size_download} %{time_total}",
               n.url("/slow?rate=65536")).decode().split()
    # 64 KiB at 64 KiB/s: nginx sends the first second's worth at once, then waits
    assert out[0] == "65536"
    fast = curl("-o", os.devnull, "-w", "%{time_total}", n.url("/slow?rate=10000000"))
    slow = curl("-o", os.devnull, "-w", "%{time_total}", n.url("/slow?rate=16384"))
    assert float(slow) > 2.0 > float(fast), (slow, fast)


def test_stop_frees_the_port(nginx_backends):
    n = nginx_backends("gone")
    assert curl(n.url("/healthz")) == b"ok\n"
    assert n.stop() == 0 and not n.running
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", n.port)) != 0     # nothing listens any more
    with socket.socket() as s:
        s.bind(("127.0.0.1", n.port))                       # and the port can be had again
    # a fixed port is honoured: a second backend takes the port the first one left
    again = nginx_backends("again", port=n.port)
    assert parse_kv(curl(again.url("/")))["backend"] == "again"
