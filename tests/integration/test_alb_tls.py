# test_alb_tls.py — TLS in the ALB plugin (plugins/alb/alb_tls.c wired into alb_proxy.c):
# termination on an https listener (certificates picked by SNI, ALPN http/1.1,
# X-Forwarded-Proto https, keep-alive, pipelining, large bodies both ways, a WebSocket
# relayed over TLS), TLS and plain HTTP on one tcp listener, settings errors reported by
# `marchproxy -t` with FILE:LINE, replaced certificate files served to new connections
# while an open one keeps working, and TLS to the upstream with verification (a wrong CA is
# 502). A private CA and its certificates are made with the openssl CLI in tmp dirs;
# backends are nginx (mp_nginx.py) except the WebSocket echo.

import hashlib
import http.client
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from mp_nginx import parse_kv
from mphelpers import host_binary
import mp_alb
from mp_alb import read_to_close, request, websocket_upgrade
from test_alb_basic import ws_backend  # noqa: F401 (a fixture)

T = 10
BIG = 5 * 1024 * 1024


# ------------------------------------------------------------------ certificates

def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"


class Pki:
    """A CA and server certificates it signed, as PEM files in one directory."""

    def __init__(self, directory, ca_name="MarchProxy Test CA"):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = directory / "ca.pem"
        self.ca_key = directory / "ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "2", "-subj", f"/CN={ca_name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-keyout", str(self.ca_key), "-out", str(self.ca), cwd=directory)
        self.serial = 1000

    def issue(self, stem, cn, sans):
        """Writes <stem>.pem and <stem>.key for `cn` with subjectAltNames `sans`
        (e.g. "DNS:a.test,IP:127.0.0.1"); returns (cert, key, serial)."""
        self.serial += 1
        cert, key, csr = (self.dir / f"{stem}.pem", self.dir / f"{stem}.key",
                          self.dir / f"{stem}.csr")
        ext = self.dir / f"{stem}.ext"
        ext.write_text(f"basicConstraints=CA:FALSE\nsubjectAltName={sans}\n"
                       "extendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr), cwd=self.dir)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
                 str(self.ca_key), "-set_serial", str(self.serial), "-days", "2",
                 "-extfile", str(ext), "-out", str(cert), cwd=self.dir)
        return cert, key, self.serial


@pytest.fixture
def pki(tmp_path):
    p = Pki(tmp_path / "pki")
    p.a = p.issue("a", "a.test", "DNS:a.test")
    p.b = p.issue("b", "*.b.test", "DNS:*.b.test")
    return p


def client_ctx(ca, alpn=("http/1.1",)):
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_connect(port, name, ca, alpn=("http/1.1",), timeout=10):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_ctx(ca, alpn).wrap_socket(raw, server_hostname=name)


class HTTPSTo127(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:port with SNI and verification for `name` (no resolver)."""

    def __init__(self, port, name, ca, timeout=10):
        super().__init__(name, port, timeout=timeout, context=client_ctx(ca))
        self._mp_port = port

    def connect(self):
        raw = socket.create_connection(("127.0.0.1", self._mp_port), timeout=self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def https_request(port, name, ca, method, path, body=None, headers=None):
    conn = HTTPSTo127(port, name, ca)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        conn.close()


def peer_serial(sock):
    der = sock.getpeercert(binary_form=True)
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                       input=der, capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.decode().strip().split("=", 1)[1], 16)


# ------------------------------------------------------------------ the host

def alb_settings(upstreams, routes, pki=None, certs=None):
    settings = {"upstreams": upstreams, "routes": routes}
    if certs is None and pki is not None:
        certs = [pki.a, pki.b]
    if certs:
        settings["tls"] = {"certificates": [{"cert": c[0], "key": c[1]} for c in certs]}
    return settings


def start_alb(start_host, so, settings, protocol="https", drain_ms=3000):
    return mp_alb.start_alb(start_host, so, settings, protocol=protocol,
                            drain_timeout_ms=drain_ms)


@pytest.fixture
def tls_proxy(start_host, alb_so, nginx_backends, pki):
    """An https listener with a.test and *.b.test certificates; a.test -> api (nginx with
    a 5 MiB /big), *.b.test -> web."""
    api = nginx_backends("api", big_size=BIG)
    web = nginx_backends("web")
    settings = alb_settings(
        {"api": {"servers": [api.address]}, "web": {"servers": [web.address]}},
        [{"host": "a.test", "upstream": "api"}, {"host": "*.b.test", "upstream": "web"}],
        pki)
    h, port = start_alb(start_host, alb_so, settings)
    return {"host": h, "port": port, "api": api, "web": web, "pki": pki}


# ------------------------------------------------------------------ termination

def test_curl_over_https_reaches_backend_with_forwarded_proto(tls_proxy):
    port, pki = tls_proxy["port"], tls_proxy["pki"]
    r = subprocess.run(["curl", "-sS", "-v", "--noproxy", "*", "--http1.1",
                        "--resolve", f"a.test:{port}:127.0.0.1", "--cacert", str(pki.ca),
                        f"https://a.test:{port}/x/echo-headers"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    got = parse_kv(r.stdout)
    assert got["x_forwarded_proto"] == "https"
    assert got["uri"] == "/x/echo-headers" and got["http_host"] == f"a.test:{port}"
    assert re.search(r"ALPN[:,] server accepted (to use )?http/1\.1", r.stderr), r.stderr
    assert [q["uri"] for q in tls_proxy["api"].requests(wait_for=1)] == ["/x/echo-headers"]


def test_sni_picks_the_certificate(tls_proxy):
    port, pki = tls_proxy["port"], tls_proxy["pki"]

    def subject(*servername):
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                            *servername, "-showcerts", "-alpn", "http/1.1"],
                           input="", capture_output=True, text=True, timeout=20)
        m = re.search(r"^subject=(.*)$", r.stdout, re.M)
        assert m, r.stdout + r.stderr
        return m.group(1), r.stdout

    subj, out = subject("-servername", "x.b.test")
    assert "CN = *.b.test" in subj, subj
    assert "ALPN protocol: http/1.1" in out
    subj, _ = subject("-servername", "a.test")
    assert "CN = a.test" in subj, subj
    subj, _ = subject("-servername", "unknown.test")  # no match: the first is the default
    assert "CN = a.test" in subj, subj
    # and a verified request by SNI name to the wildcard
    status, _, body = https_request(port, "deep.b.test", pki.ca, "GET", "/w")
    assert status == 200 and parse_kv(body)["backend"] == "web"


def test_alpn_http11_and_client_offering_only_h2(tls_proxy):
    port, pki = tls_proxy["port"], tls_proxy["pki"]
    with tls_connect(port, "a.test", pki.ca) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        assert s.version() in ("TLSv1.2", "TLSv1.3")
    # offering only h2: no ALPN answer, and HTTP/1.1 still works
    with tls_connect(port, "a.test", pki.ca, alpn=("h2",)) as s:
        assert s.selected_alpn_protocol() is None
        s.sendall(b"GET /h2only HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        out = read_to_close(s)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]


def test_keep_alive_and_pipelining_on_one_tls_connection(tls_proxy):
    port, pki = tls_proxy["port"], tls_proxy["pki"]
    conn = HTTPSTo127(port, "a.test", pki.ca)
    socks = set()
    for i in range(6):
        conn.request("GET", f"/k{i}")
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200 and parse_kv(body)["uri"] == f"/k{i}"
        socks.add(id(conn.sock))
    conn.close()
    assert len(socks) == 1
    # pipelined: all requests in one write (one or a few TLS records), answered in order
    with tls_connect(port, "a.test", pki.ca) as s:
        reqs = b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
                        for i in range(4))
        s.sendall(reqs + b"GET /plast HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        out = read_to_close(s)
    uris = re.findall(rb"uri=(\S+)\n", out)
    assert uris == [f"/p{i}".encode() for i in range(4)] + [b"/plast"], out[:600]
    assert out.count(b"HTTP/1.1 200 ") == 5


def test_5mib_upload_and_download_intact(tls_proxy):
    port, pki, api = tls_proxy["port"], tls_proxy["pki"], tls_proxy["api"]
    data = os.urandom(BIG)
    status, _, body = https_request(port, "a.test", pki.ca, "POST", "/u/upload", body=data)
    assert status == 200 and parse_kv(body)["length"] == str(len(data))
    assert hashlib.sha256(api.upload_bytes(body)).digest() == hashlib.sha256(data).digest()
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--resolve",
                        f"a.test:{port}:127.0.0.1", "--cacert", str(pki.ca),
                        f"https://a.test:{port}/d/big"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == BIG
    assert hashlib.sha256(r.stdout).hexdigest() == api.big_sha256


def test_websocket_echo_over_tls(start_host, alb_so, pki, ws_backend):
    settings = alb_settings({"ws": {"servers": [f"127.0.0.1:{ws_backend.port}"]}},
                            [{"upstream": "ws"}], pki)
    _, port = start_alb(start_host, alb_so, settings)
    with tls_connect(port, "a.test", pki.ca) as s:
        websocket_upgrade(s, "/chat/ws", "a.test")
        payload = os.urandom(300_000)
        got = b""
        # write in pieces while reading, so neither side's buffers decide the outcome
        for off in range(0, len(payload), 50_000):
            s.sendall(payload[off:off + 50_000])
            while len(got) < off + 50_000:
                b = s.recv(65536)
                assert b, len(got)
                got += b
        assert got == payload


def test_tls_and_plain_http_share_a_tcp_listener(start_host, alb_so, nginx_backends, pki):
    api = nginx_backends("api")
    settings = alb_settings({"api": {"servers": [api.address]}}, [{"upstream": "api"}], pki)
    _, port = start_alb(start_host, alb_so, settings, protocol="tcp")
    status, _, body = https_request(port, "a.test", pki.ca, "GET", "/echo-headers")
    assert status == 200 and parse_kv(body)["x_forwarded_proto"] == "https"
    status, _, body = request(port, "GET", "/echo-headers", "plain.test")
    assert status == 200 and parse_kv(body)["x_forwarded_proto"] == "http"


def test_https_without_tls_settings_is_refused(start_host, alb_so, nginx_backends, pki):
    api = nginx_backends("api")
    settings = alb_settings({"api": {"servers": [api.address]}}, [{"upstream": "api"}])
    _, port = start_alb(start_host, alb_so, settings)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with tls_connect(port, "a.test", pki.ca, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert s.recv(100) == b""
            raise ConnectionError("closed")  # an orderly close counts as refused too
    assert api.access_log_lines() == []


# ------------------------------------------------------------------ settings errors

def check_config(tmp_path, alb_so, settings_text):
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755, exist_ok=True)
    os.chmod(plugins, 0o755)
    dest = plugins / "alb.so"
    if not dest.exists():
        dest.write_bytes(alb_so.read_bytes())
        os.chmod(dest, 0o644)
    conf = tmp_path / "check.conf"
    text = (f'host: {{ plugin_dir = "{plugins}"; state_dir = "{tmp_path}/s"; }};\n'
            'instances: {\n  alb: {\n    plugin = "alb";\n    settings: {\n'
            + settings_text + '    };\n  };\n};\n')
    conf.write_text(text)
    r = subprocess.run([str(host_binary()), "-t", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    return r, conf, text.splitlines()


def line_of(lines, needle):
    hits = [i + 1 for i, line in enumerate(lines) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def test_bad_tls_settings_are_refused_with_file_and_line(tmp_path, alb_so, pki):
    def tls_text(entries):
        return ("      tls: {\n        certificates = (\n" +
                ",\n".join(f'          {{ cert = "{c}"; key = "{k}"; }}' for c, k in entries)
                + "\n        );\n      };\n")

    ok, conf, _ = check_config(tmp_path, alb_so, tls_text([pki.a[:2], pki.b[:2]]))
    assert ok.returncode == 0, ok.stderr
    missing = tmp_path / "nope.pem"
    r, conf, lines = check_config(tmp_path, alb_so,
                                  tls_text([pki.a[:2], (missing, pki.b[1])]))
    assert r.returncode == 1
    assert f"{conf}:{line_of(lines, str(missing))}:" in r.stderr, r.stderr
    assert str(missing) in r.stderr
    # a key that belongs to another certificate
    r, conf, lines = check_config(tmp_path, alb_so, tls_text([(pki.a[0], pki.b[1])]))
    assert r.returncode == 1
    assert f"{conf}:{line_of(lines, str(pki.b[1]))}:" in r.stderr, r.stderr
    assert str(pki.a[0]) in r.stderr or str(pki.b[1]) in r.stderr
    # unknown keys, and an upstream CA file that is not there
    r, conf, lines = check_config(tmp_path, alb_so,
                                  '      tls: {\n        certs = ();\n      };\n')
    assert r.returncode == 1 and f"{conf}:" in r.stderr and "certs" in r.stderr, r.stderr
    r, conf, lines = check_config(
        tmp_path, alb_so,
        '      upstreams: {\n        u: {\n          servers = [ "127.0.0.1:9" ];\n'
        f'          tls: {{ verify = true; ca_file = "{missing}"; }};\n        }};\n      }};\n')
    assert r.returncode == 1
    assert f"{conf}:{line_of(lines, 'ca_file')}:" in r.stderr and str(missing) in r.stderr, \
        r.stderr


# ------------------------------------------------------------------ reload

def test_replaced_certificate_files_serve_new_connections_while_open_ones_go_on(
        start_host, alb_so, nginx_backends, tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key, old_serial = pki.issue("a", "a.test", "DNS:a.test")
    api = nginx_backends("api")
    settings = alb_settings({"api": {"servers": [api.address]}}, [{"upstream": "api"}],
                            certs=[(cert, key)])
    settings["tls"]["reload_check_ms"] = 100
    h, port = start_alb(start_host, alb_so, settings, drain_ms=20000)
    old = HTTPSTo127(port, "a.test", pki.ca)
    old.request("GET", "/before")
    r = old.getresponse()
    assert r.status == 200 and parse_kv(r.read())["uri"] == "/before"
    assert peer_serial(old.sock) == old_serial
    old_sock = id(old.sock)

    def new_conn_serial():
        with tls_connect(port, "a.test", pki.ca) as s:
            serial = peer_serial(s)
            s.sendall(b"GET /after HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            assert b"uri=/after\n" in read_to_close(s)
        return serial

    # The certificate is replaced first, its key a moment later: in between the pair
    # does not match, and the old pair stays in force.
    new_cert, new_key, new_serial = pki.issue("a2", "a.test", "DNS:a.test")
    mark = h.log_mark()
    cert.write_bytes(new_cert.read_bytes())
    h.wait_log(r"certificate files changed but cannot be used .*: .*(" +
               re.escape(str(key)) + "|" + re.escape(str(cert)) + ")", timeout=5, since=mark)
    assert new_conn_serial() == old_serial
    mark = h.log_mark()
    key.write_bytes(new_key.read_bytes())
    # Reload makes no new generation for unchanged settings; it re-reads the files
    # itself, or the watcher has already done so.
    m = h.pb.module_pb2
    rr = h.module.Reload(m.ReloadRequest(instance_id="alb", graceful=True), timeout=T)
    assert rr.success, rr.message
    h.wait_log(r"(certificate files changed|certificates re-read on reload): new TLS "
               r"connections use them", timeout=5, since=mark)
    assert new_conn_serial() == new_serial
    # the connection opened first still serves requests, on its first certificate
    for i in range(3):
        old.request("GET", f"/old{i}")
        r = old.getresponse()
        assert r.status == 200 and parse_kv(r.read())["uri"] == f"/old{i}"
    assert id(old.sock) == old_sock and peer_serial(old.sock) == old_serial
    old.close()


def test_reload_rereads_certificates(start_host, alb_so, nginx_backends, tmp_path):
    """With the file watcher off, Reload (same plugin, same settings: no new generation)
    re-reads the certificate files; a pair that does not match fails the Reload with
    the file's name and the certificate in force stays."""
    pki = Pki(tmp_path / "pki")
    cert, key, old_serial = pki.issue("a", "a.test", "DNS:a.test")
    api = nginx_backends("api")
    settings = alb_settings({"api": {"servers": [api.address]}}, [{"upstream": "api"}],
                            certs=[(cert, key)])
    settings["tls"]["reload_check_ms"] = 0  # never: only Reload reads them again
    h, port = start_alb(start_host, alb_so, settings)
    m = h.pb.module_pb2

    def serial_now():
        with tls_connect(port, "a.test", pki.ca) as s:
            return peer_serial(s)

    assert serial_now() == old_serial
    new_cert, new_key, new_serial = pki.issue("a2", "a.test", "DNS:a.test")
    cert.write_bytes(new_cert.read_bytes())  # its key not yet: the pair does not match
    rr = h.module.Reload(m.ReloadRequest(instance_id="alb", graceful=True), timeout=T)
    assert not rr.success and "does not match" in rr.message, rr.message
    assert str(key) in rr.message and ".conf:" in rr.message, rr.message  # FILE:LINE
    assert serial_now() == old_serial
    key.write_bytes(new_key.read_bytes())
    time.sleep(0.3)
    assert serial_now() == old_serial  # nothing looks at the files by itself
    rr = h.module.Reload(m.ReloadRequest(instance_id="alb", graceful=True), timeout=T)
    assert rr.success, rr.message
    assert serial_now() == new_serial


# ------------------------------------------------------------------ upstream TLS

@pytest.fixture
def tls_backend(nginx_backends, pki):
    cert, key, _ = pki.issue("backend", "backend.test", "DNS:backend.test,IP:127.0.0.1")
    return nginx_backends("secure", ssl=(cert, key), big_size=BIG)


def test_upstream_tls_verified(start_host, alb_so, tls_backend, pki):
    settings = alb_settings(
        {"secure": {"servers": [tls_backend.address],
                    "tls": {"verify": True, "ca_file": pki.ca,
                            "server_name": "backend.test"}}},
        [{"upstream": "secure"}], pki)
    _, port = start_alb(start_host, alb_so, settings)
    # plain client -> TLS upstream is exercised through the tcp listener too, below;
    # here TLS on both sides, keep-alive, a large body each way
    conn = HTTPSTo127(port, "a.test", pki.ca)
    for i in range(3):
        conn.request("GET", f"/s{i}/echo-headers")
        r = conn.getresponse()
        got = parse_kv(r.read())
        assert r.status == 200 and got["uri"] == f"/s{i}/echo-headers"
        assert got["x_forwarded_proto"] == "https"
    conn.request("GET", "/big")
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200 and hashlib.sha256(body).hexdigest() == tls_backend.big_sha256
    data = os.urandom(BIG)
    conn.request("POST", "/upload", body=data)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, body
    assert tls_backend.upload_bytes(body) == data
    conn.close()
    reqs = tls_backend.requests(wait_for=5)
    assert len(reqs) == 5
    # nginx's $connection: the ALB kept one upstream TLS connection for all of them
    assert len({q["connection"] for q in reqs}) == 1, reqs


def test_upstream_tls_plain_client(start_host, alb_so, tls_backend, pki):
    settings = alb_settings(
        {"secure": {"servers": [tls_backend.address],
                    "tls": {"ca_file": pki.ca, "server_name": "backend.test"}}},
        [{"upstream": "secure"}])
    _, port = start_alb(start_host, alb_so, settings, protocol="tcp")
    status, _, body = request(port, "GET", "/plain/echo-headers", "x.test")
    got = parse_kv(body)
    assert status == 200 and got["uri"] == "/plain/echo-headers"
    assert got["x_forwarded_proto"] == "http"


def test_upstream_tls_wrong_ca_or_name_is_502(start_host, alb_so, tls_backend, pki,
                                             tmp_path):
    other = Pki(tmp_path / "other", ca_name="Some Other CA")
    settings = alb_settings(
        {"wrongca": {"servers": [tls_backend.address],
                     "tls": {"verify": True, "ca_file": other.ca,
                             "server_name": "backend.test"}},
         "wrongname": {"servers": [tls_backend.address],
                       "tls": {"ca_file": pki.ca, "server_name": "elsewhere.test"}},
         "noverify": {"servers": [tls_backend.address],
                      "tls": {"verify": False, "ca_file": other.ca}}},
        [{"host": "ca.test", "upstream": "wrongca"},
         {"host": "name.test", "upstream": "wrongname"},
         {"host": "nv.test", "upstream": "noverify"}])
    h, port = start_alb(start_host, alb_so, settings, protocol="tcp")

    def get(host):
        return request(port, "GET", "/v/echo-headers", host)

    assert get("ca.test")[0] == 502
    assert get("name.test")[0] == 502
    status, _, body = get("nv.test")
    assert status == 200 and parse_kv(body)["uri"] == "/v/echo-headers"
    h.wait_log(r"TLS: .*certificate verify failed", timeout=5)
    assert [q["uri"] for q in tls_backend.requests(wait_for=1)] == ["/v/echo-headers"]
