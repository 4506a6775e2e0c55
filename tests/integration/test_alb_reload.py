# test_alb_reload.py — replacing the ALB's .so under load: clients keep sending
# keep-alive requests through the proxy to nginx while the plugin file is replaced and
# a graceful Reload RPC loads it as a new generation. No request may fail. As every HTTP
# client does (RFC 9112, 9.3.1), a request is sent again only when a reused idle
# connection turns out closed before any byte of the answer came back; a fresh
# connection that fails, an error status or a short body counts as a failure.

import http.client
import threading
import time

from mp_alb import start_alb

T = 10


class Client(threading.Thread):
    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.ok = self.failed = self.resent = 0
        self.errors = []

    def run(self):
        conn, reused = None, False
        while not self.stop.is_set():
            if conn is None:
                conn, reused = http.client.HTTPConnection("127.0.0.1", self.port, timeout=T), False
            try:
                conn.request("GET", "/big", headers={"Host": "x.test"})
                r = conn.getresponse()
                body = r.read()
                if r.status == 200 and len(body) == 65536:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(f"status {r.status}, {len(body)} bytes")
                reused = True
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = None
                if reused:
                    self.resent += 1  # an idle keep-alive connection closed: send again
                else:
                    self.failed += 1
                    self.errors.append(f"fresh connection: {e!r}")
            except Exception as e:  # noqa: BLE001 - every other error is a failed request
                self.failed += 1
                self.errors.append(repr(e))
                conn.close()
                conn = None
        if conn:
            conn.close()


def test_reload_under_load_fails_no_request(start_host, alb_so, nginx_backends, tmp_path):
    a, b = nginx_backends("a", big_size=65536), nginx_backends("b", big_size=65536)
    settings = {"upstreams": {"web": {"servers": [f"127.0.0.1:{a.port}",
                                                  f"127.0.0.1:{b.port}"]}},
                "routes": [{"id": "all", "upstream": "web"}]}
    h, port = start_alb(start_host, alb_so, settings, drain_timeout_ms=5000,
                        plugin_name="alb.so")
    m = h.pb.module_pb2
    first = h.module.GetStatus(m.GetStatusRequest(instance_id="alb"), timeout=T).instance.version
    stop = threading.Event()
    clients = [Client(port, stop) for _ in range(6)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    versions = {first}
    for i in range(3):
        # same code, different bytes: a new image and so a new generation
        new = tmp_path / f"alb-{i}.so"
        new.write_bytes(alb_so.read_bytes() + bytes([i + 1]) * 64)
        h.install_plugin(new, "alb.so")
        r = h.module.Reload(m.ReloadRequest(instance_id="alb", graceful=True,
                                            timeout_seconds=30), timeout=T)
        assert r.success, r.message
        versions.add(h.module.GetStatus(m.GetStatusRequest(instance_id="alb"),
                                        timeout=T).instance.version)
        time.sleep(1.0)
    stop.set()
    for c in clients:
        c.join(timeout=T)
    ok = sum(c.ok for c in clients)
    failed = sum(c.failed for c in clients)
    errors = [e for c in clients for e in c.errors][:5]
    print(f"reload under load: {ok} requests answered, {failed} failed, "
          f"{sum(c.resent for c in clients)} sent again on a closed idle connection")
    assert len(versions) == 4, versions  # every reload made a new generation
    assert failed == 0, f"{failed} failed of {ok + failed}: {errors}"
    assert ok > 200, f"only {ok} requests went through"
