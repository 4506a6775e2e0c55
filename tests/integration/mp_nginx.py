# mp_nginx.py — real nginx backends on loopback for the integration tests (ALB first).
# start_nginx() writes a config into a tmp dir, runs nginx in the foreground (master + one
# worker) as the current user, and waits until it accepts. conftest.py's `nginx_backends`
# fixture wraps it so every backend a test starts is stopped at teardown.
#
# What every backend answers (any path prefix: the ALB forwards /api/big as is, so the
# special endpoints match on how the path ENDS, like the Python backends they replace):
#   /                    200 "backend=<name>\nmethod=..\nuri=..\n"; every response carries
#                        X-Backend: <name>
#   .../echo-headers     200, one `key=value` line per request field (ECHO_FIELDS plus
#                        the header names given in echo_headers=); absent headers are empty
#   .../status/<code>    that status, for the codes in STATUS_CODES (nginx's `return` needs
#                        a literal code, so the set is fixed)
#   .../upload           reads the whole body (Content-Length or chunked, up to 100 MiB)
#                        and keeps it in a file; answers method, length and body_file=<path>
#                        (read it with Nginx.upload_bytes to compare byte for byte)
#   .../slow             a 64 KiB body sent at ?rate= bytes/s (default 4096): a backend
#                        that is slow in the middle of a body. nginx cannot delay its
#                        response head; a test that needs a silent backend uses a socket.
#   .../healthz          200 "ok\n"
#   .../big              a static file of big_size bytes (default 1 MiB, deterministic
#                        content; Nginx.big_sha256), with HEAD and Range as nginx does them
# Every request is logged (JSON, one line each) to access.log: Nginx.requests().

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mphelpers import SLOWDOWN, free_port

STATUS_CODES = (200, 201, 204, 301, 302, 400, 401, 403, 404, 405, 408, 413, 429, 500, 502,
                503, 504)

# Request fields /echo-headers reports: (key in the answer, nginx variable).
ECHO_FIELDS = (
    ("method", "$request_method"),
    ("uri", "$request_uri"),
    ("protocol", "$server_protocol"),
    ("remote_addr", "$remote_addr"),
    ("host", "$host"),
    ("http_host", "$http_host"),
    ("x_forwarded_for", "$http_x_forwarded_for"),
    ("x_forwarded_proto", "$http_x_forwarded_proto"),
    ("x_forwarded_host", "$http_x_forwarded_host"),
    ("x_real_ip", "$http_x_real_ip"),
    ("forwarded", "$http_forwarded"),
    ("via", "$http_via"),
    ("connection", "$http_connection"),
    ("keep_alive", "$http_keep_alive"),
    ("upgrade", "$http_upgrade"),
    ("te", "$http_te"),
    ("transfer_encoding", "$http_transfer_encoding"),
    ("content_length", "$content_length"),
    ("user_agent", "$http_user_agent"),
    ("x_request_id", "$http_x_request_id"),
)

# The access log: one JSON object per request (escape=json keeps it parseable).
_LOG_FIELDS = (
    ("method", "$request_method"),
    ("uri", "$request_uri"),
    ("status", "$status"),
    ("protocol", "$server_protocol"),
    ("host", "$host"),
    ("remote_addr", "$remote_addr"),
    ("remote_port", "$remote_port"),
    ("connection", "$connection"),
    ("connection_requests", "$connection_requests"),
    ("request_length", "$request_length"),
    ("body_bytes_sent", "$body_bytes_sent"),
    ("x_forwarded_for", "$http_x_forwarded_for"),
    ("via", "$http_via"),
)

# What /upload answers (the inner request carries the outer one's facts in X-Mp-*).
UPLOAD_ANSWER = ("backend={name}\nmethod=$http_x_mp_method\nuri=$http_x_mp_uri\n"
                 "length=$content_length\ntransfer_encoding=$http_x_mp_chunked\n"
                 "body_file=$http_x_mp_body_file\n")

NGINX_START_TIMEOUT = 10 * SLOWDOWN
BIG_SEED = b"mp-nginx-big"


def nginx_binary():
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(path, os.X_OK):
        pytest.fail("nginx not found (Debian: apt-get install nginx; see "
                    "scripts/install-deps.sh)", pytrace=False)
    return path


def big_content(size):
    """The deterministic bytes /big serves (and what a test compares against)."""
    block = b"".join(hashlib.sha256(BIG_SEED + i.to_bytes(4, "big")).digest()
                     for i in range(2048))  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def parse_kv(text):
    """`key=value` lines (the /, /echo-headers and /upload answers) -> dict."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _nginx_string(s):
    """A double-quoted nginx string; `$` is left alone so variables still expand."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _header_var(name):
    return "$http_" + name.lower().replace("-", "_")


class Nginx:
    """One running nginx (master + one worker) and the files it uses."""

    def __init__(self, name, directory, port, proc, big_size):
        self.name = name
        self.dir = directory
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.proc = proc
        self.pid = proc.pid
        self.big_size = big_size
        self.big_sha256 = hashlib.sha256(big_content(big_size)).hexdigest()
        self.access_log = directory / "logs" / "access.log"
        self.error_log = directory / "logs" / "error.log"
        self.stdout_log = directory / "logs" / "stdout.log"
        self.stopped = False    # stop() or kill() was called: its end was asked for

    @property
    def running(self):
        return self.proc.poll() is None

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    # --- logs
    def access_log_lines(self):
        """The access log's lines so far (one JSON object per request, as text)."""
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def requests(self, wait_for=None, timeout=5):
        """The logged requests as dicts of strings (method, uri, status, host, connection,
        connection_requests, request_length, x_forwarded_for, via, ...).

        nginx logs a request after its response went out, so a client can see the answer
        a moment before the line exists: wait_for=N waits (up to timeout s) for N lines."""
        deadline = time.monotonic() + timeout * SLOWDOWN
        while True:
            lines = self.access_log_lines()
            if wait_for is None or len(lines) >= wait_for or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.02)

    def error_log_text(self):
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def upload_bytes(self, answer):
        """The body an /upload request delivered, read back from the file nginx kept."""
        fields = parse_kv(answer)
        path = fields.get("body_file", "")
        if not path:
            return b""  # nginx makes no file for an empty body
        path = Path(path)
        if not path.is_relative_to(self.dir):
            raise ValueError(f"{path} is not in this backend's directory {self.dir}")
        return path.read_bytes()

    # --- the process
    def stop(self, timeout=10):
        """Fast shutdown (SIGTERM) and wait; returns the exit code. Idempotent."""
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOWDOWN)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"nginx {self.name} did not stop on SIGTERM; killed",
                            pytrace=False)
        return self.proc.returncode

    def kill(self):
        # The worker is in the master's process group (start_new_session), so it goes too.
        self.stopped = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def render_config(directory, name, port, *, extra_locations="", body=None, echo_headers=(),
                  keepalive_requests=1000, ssl=None):
    """The nginx.conf text for one backend (see the module comment for the endpoints)."""
    d = Path(directory)
    body_text = body if body is not None else (
        f"backend={name}\nmethod=$request_method\nuri=$request_uri\n")
    echo = "".join(f"{k}={v}\n" for k, v in ECHO_FIELDS)
    echo += "".join(f"{h.lower()}={_header_var(h)}\n" for h in echo_headers)
    log_format = "{" + ",".join(f'"{k}":"{v}"' for k, v in _LOG_FIELDS) + "}"
    status_locations = "".join(
        f"        location ~ /status/{code}$ {{ return {code}"
        f"{' /' if 300 <= code < 400 else ''}; }}\n" for code in STATUS_CODES)
    # Workers of a root master switch to `user` (nobody by default), which could not read
    # pytest's 0700 tmp dirs; as an ordinary user the directive is ignored with a warning.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    listen = f"listen 127.0.0.1:{port};"
    scheme = "http"
    if ssl:  # (cert, key): the server speaks only TLS
        listen = (f"listen 127.0.0.1:{port} ssl;\n        ssl_certificate {ssl[0]};\n"
                  f"        ssl_certificate_key {ssl[1]};")
        scheme = "https"
    return f"""# written by tests/integration/mp_nginx.py for backend {name}
{user}worker_processes 1;
master_process on;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/logs/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    default_type text/plain;
    types {{ application/octet-stream bin; }}
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests {keepalive_requests};
    server_tokens off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    log_format mp escape=json '{log_format}';
    access_log {d}/logs/access.log mp;

    map $arg_rate $mp_slow_rate {{
        default 4096;
        "~^[0-9]+$" $arg_rate;
    }}

    server {{
        {listen}
        server_name _;
        add_header X-Backend {_nginx_string(name)} always;

{extra_locations}
        location / {{
            return 200 {_nginx_string(body_text)};
        }}
        location ~ /echo-headers$ {{
            return 200 {_nginx_string(echo)};
        }}
{status_locations}
        location ~ /healthz$ {{
            return 200 "ok\\n";
        }}
        location ~ /big$ {{
            root {d}/html;
            try_files /big.bin =404;
        }}
        location ~ /slow$ {{
            limit_rate $mp_slow_rate;
            root {d}/html;
            try_files /slow.bin =404;
        }}
        # nginx's `return` never reads a request body; proxying to ourselves does, to
        # the end (chunked included), and client_body_in_file_only keeps it in a file.
        location ~ /upload$ {{
            client_max_body_size 100m;
            client_body_in_file_only on;
            client_body_temp_path {d}/uploads;
            proxy_hide_header X-Backend;
            proxy_set_header X-Mp-Method $request_method;
            proxy_set_header X-Mp-Uri $request_uri;
            proxy_set_header X-Mp-Body-File $request_body_file;
            proxy_set_header X-Mp-Chunked $http_transfer_encoding;
            rewrite ^ /__mp_upload_answer break;
            proxy_pass {scheme}://127.0.0.1:{port};
        }}
        location = /__mp_upload_answer {{
            client_max_body_size 100m; # the body comes along again: not the 1 MiB default
            access_log off;
            allow 127.0.0.1;
            deny all;
            return 200 {_nginx_string(UPLOAD_ANSWER.format(name=name))};
        }}
    }}
}}
"""


def _prepare_dir(directory, big_size):
    for sub in ("logs", "tmp", "uploads", "html"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "html" / "big.bin").write_bytes(big_content(big_size))
    (directory / "html" / "slow.bin").write_bytes(big_content(64 * 1024))


def _wait_accepting(proc, port, deadline):
    """True once 127.0.0.1:port accepts; False if nginx exited (e.g. port taken); None
    when the deadline passed."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return None


def start_nginx(tmp_path, name, *, port=None, extra_locations="", body=None, echo_headers=(),
                big_size=1024 * 1024, keepalive_requests=1000, ssl=None):
    """Starts one nginx backend named `name` under tmp_path/nginx-<name>; returns Nginx.

      port             listen port (default: a free one, retried if another process takes
                       it between the check and nginx's bind)
      extra_locations  nginx text put in the server block before the defaults; regex
                       locations listed first win, prefix ones should use `=` or `^~`
      body             the text `/` answers instead of "backend=<name>\\n..." (nginx
                       variables such as $request_uri expand)
      echo_headers     more request header names /echo-headers reports, e.g. ("X-Secret",)
      big_size         bytes /big serves
      ssl              (cert_file, key_file): listen with TLS only (PEM paths)

    The caller stops it (Nginx.stop); the nginx_backends fixture does that at teardown.
    """
    directory = Path(tmp_path) / f"nginx-{name}"
    if directory.exists():
        raise ValueError(f"a backend named {name!r} was already started in {tmp_path}")
    _prepare_dir(directory, big_size)
    binary = nginx_binary()
    attempts = 1 if port is not None else 3
    last_error = ""
    for attempt in range(attempts):
        listen = port if port is not None else free_port()
        conf = directory / "nginx.conf"
        conf.write_text(render_config(directory, name, listen, extra_locations=extra_locations,
                                      body=body, echo_headers=echo_headers,
                                      keepalive_requests=keepalive_requests, ssl=ssl))
        out = directory / "logs" / "stdout.log"
        with open(out, "ab") as log:
            # Own session, so kill() can reach the worker through the process group.
            proc = subprocess.Popen([binary, "-p", str(directory), "-c", str(conf),
                                     "-g", "daemon off;"],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        ok = _wait_accepting(proc, listen, time.monotonic() + NGINX_START_TIMEOUT)
        backend = Nginx(name, directory, listen, proc, big_size)
        if ok:
            return backend
        backend.kill()
        last_error = (backend.error_log_text()[-2000:] + out.read_text(errors="replace")[-2000:])
        if ok is None or "Address already in use" not in last_error:
            break
    pytest.fail(f"nginx backend {name} did not start (exit "
                f"{proc.returncode}); config {directory / 'nginx.conf'}; last messages:\n"
                f"{last_error}", pytrace=False)
