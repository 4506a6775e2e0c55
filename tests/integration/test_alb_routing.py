# test_alb_routing.py — the ALB driven by ModuleService: UpdateRoutes / DeleteRoute
# change live routing (host, path prefix/exact/regex, methods, headers, priority,
# Host rewrite), a route naming an unknown upstream is refused whole, CanHandle answers
# from the live table, SetRateLimit gives 429 with Retry-After, per-route stats show in
# GetStats, and the access log writes combined and JSON lines. Backends are real nginx.

import json
import time

import pytest

import mp_alb
from mp_alb import raw_exchange
from mp_nginx import parse_kv

T = 10


def start_alb(start_host, alb_so, upstreams, routes=(), access_log=None):
    settings = {"upstreams": {name: {"servers": [f"127.0.0.1:{p}" for p in ports]}
                              for name, ports in upstreams.items()},
                "routes": list(routes)}
    if access_log:
        settings["access_log"] = access_log
    return mp_alb.start_alb(start_host, alb_so, settings)


def get(port, path, host="x.test", method="GET", headers=None, body=None):
    return mp_alb.request(port, method, path, host, body=body, headers=headers, timeout=T)


def backend_of(resp):
    status, hdrs, _ = resp
    return hdrs.get("x-backend") if status == 200 else status


def route(h, rid, upstream, **fields):
    t = h.pb.types_pb2
    meta = {"upstream": upstream}
    for k in ("methods", "host_rewrite"):
        if k in fields:
            meta[k] = fields.pop(k)
    return t.Route(route_id=rid, protocol=t.PROTOCOL_HTTP, metadata=meta, **fields)


def update(h, routes, replace_all=False):
    m = h.pb.module_pb2
    return h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="alb", routes=routes,
                                                       replace_all=replace_all), timeout=T)


def custom(h):
    m = h.pb.module_pb2
    return h.module.GetStats(m.GetStatsRequest(instance_id="alb"), timeout=T).stats.custom_stats


@pytest.fixture
def two(start_host, alb_so, nginx_backends):
    a, b = nginx_backends("a"), nginx_backends("b")
    h, port = start_alb(start_host, alb_so, {"A": [a.port], "B": [b.port]})
    return h, port, a, b


def test_update_routes_changes_live_routing(two):
    h, port, a, b = two
    assert get(port, "/")[0] == 404  # no route yet
    r = update(h, [route(h, "api", "A", destination_pattern="*.test", path_pattern="/api/"),
                   route(h, "rest", "B")])
    assert r.success, r.message
    assert backend_of(get(port, "/api/x", host="www.test")) == "a"
    assert backend_of(get(port, "/api/x", host="www.other")) == "b"
    assert backend_of(get(port, "/else", host="www.test")) == "b"
    got = h.module.GetRoutes(h.pb.module_pb2.GetRoutesRequest(instance_id="alb"), timeout=T)
    assert [x.route_id for x in got.routes] == ["api", "rest"]
    d = h.module.DeleteRoute(h.pb.module_pb2.DeleteRouteRequest(instance_id="alb",
                                                                route_id="rest"), timeout=T)
    assert d.success
    assert get(port, "/else", host="www.test")[0] == 404
    assert backend_of(get(port, "/api/y", host="www.test")) == "a"


def test_unknown_upstream_is_refused_and_nothing_changes(two):
    h, port, a, b = two
    assert update(h, [route(h, "ok", "A")]).success
    bad = update(h, [route(h, "ok", "A"), route(h, "oops", "NOPE", path_pattern="/x")],
                 replace_all=True)
    assert not bad.success
    assert 'route oops: unknown upstream "NOPE"' in bad.message and "A, B" in bad.message
    got = h.module.GetRoutes(h.pb.module_pb2.GetRoutesRequest(instance_id="alb"), timeout=T)
    assert [x.route_id for x in got.routes] == ["ok"]
    assert backend_of(get(port, "/x")) == "a"
    bad = update(h, [route(h, "re", "A", path_pattern="~(unclosed")])
    assert not bad.success and "route re: path regex" in bad.message


def test_priority_regex_exact_methods_headers(two):
    h, port, a, b = two
    assert update(h, [
        route(h, "img", "B", path_pattern="~\\.(png|jpg)$", priority=10),
        route(h, "login", "B", path_pattern="=/login"),
        route(h, "writes", "B", methods="POST,PUT", priority=5),
        route(h, "beta", "B", headers={"X-Beta": "1"}, priority=7),
        route(h, "default", "A"),
    ]).success
    assert backend_of(get(port, "/static/logo.png?v=3")) == "b"
    assert backend_of(get(port, "/login")) == "b"
    assert backend_of(get(port, "/login/more")) == "a"
    assert backend_of(get(port, "/form", method="POST", body=b"x=1")) == "b"
    assert backend_of(get(port, "/form")) == "a"
    assert backend_of(get(port, "/p", headers={"X-Beta": "1"})) == "b"
    assert backend_of(get(port, "/p", headers={"X-Beta": "2"})) == "a"


def test_host_is_preserved_or_rewritten_per_route(start_host, alb_so, nginx_backends):
    a = nginx_backends("a")
    h, port = start_alb(start_host, alb_so, {"A": [a.port]})
    assert update(h, [route(h, "keep", "A", path_pattern="/keep/"),
                      route(h, "rw", "A", path_pattern="/rw/", host_rewrite="internal.svc")]
                  ).success
    kept = parse_kv(get(port, "/keep/echo-headers", host="public.test")[2])
    assert kept["http_host"] == "public.test"
    rw = parse_kv(get(port, "/rw/echo-headers", host="public.test")[2])
    assert rw["http_host"] == "internal.svc"
    assert rw["x_forwarded_host"] == "public.test"


def test_can_handle_answers_from_the_route_table(two):
    h, port, a, b = two
    m, t = h.pb.module_pb2, h.pb.types_pb2
    assert update(h, [route(h, "api", "A", destination_pattern="api.test",
                            path_pattern="/v1/")]).success

    def can(host, path):
        return h.module.CanHandle(m.CanHandleRequest(
            route=t.Route(protocol=t.PROTOCOL_HTTP, destination_pattern=host,
                          path_pattern=path), context={"instance_id": "alb"}), timeout=T)

    yes = can("api.test", "/v1/users")
    assert yes.can_handle and "route api -> upstream A" in yes.reason
    no = can("api.test", "/v2/users")
    assert not no.can_handle and "no route" in no.reason
    no = h.module.CanHandle(m.CanHandleRequest(
        route=t.Route(protocol=t.PROTOCOL_MYSQL, destination_port=3306),
        context={"instance_id": "alb"}), timeout=T)
    assert not no.can_handle


def test_rate_limit_answers_429_with_retry_after(two):
    h, port, a, b = two
    m, t = h.pb.module_pb2, h.pb.types_pb2
    assert update(h, [route(h, "slow", "A", path_pattern="/slow/"),
                      route(h, "free", "B")]).success
    r = h.module.SetRateLimit(m.SetRateLimitRequest(instance_id="alb", limit=t.RateLimit(
        limit_id="l", target="route:slow", requests_per_minute=6, burst_size=3,
        enabled=True)), timeout=T)
    assert r.success, r.message
    codes = [get(port, "/slow/x")[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    status, hdrs, body = get(port, "/slow/x")
    assert status == 429 and 1 <= int(hdrs["retry-after"]) <= 10 and b"429" in body
    assert all(get(port, "/other")[0] == 200 for _ in range(10))  # other routes are free
    # a 429 keeps the connection: the limited request and a free one, pipelined
    out = raw_exchange(port, b"GET /slow/y HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 429 ") and out.count(b"HTTP/1.1 200 ") == 1, out[:500]
    st = custom(h)
    assert st["route.slow.rate_limited"] == "4" and st["rate_limited"] == "4"
    # a bad target is refused by the plugin, with its reason
    bad = h.module.SetRateLimit(m.SetRateLimitRequest(instance_id="alb", limit=t.RateLimit(
        limit_id="x", target="host:y", requests_per_second=1, enabled=True)), timeout=T)
    assert not bad.success and 'target "host:y"' in bad.message
    assert h.module.RemoveRateLimit(m.RemoveRateLimitRequest(instance_id="alb", limit_id="l"),
                                    timeout=T).success
    assert get(port, "/slow/x")[0] == 200


def test_per_route_stats(two):
    h, port, a, b = two
    assert update(h, [route(h, "ra", "A", path_pattern="/a/"),
                      route(h, "rb", "B", path_pattern="/b/")]).success
    for _ in range(4):
        get(port, "/a/x")
    get(port, "/b/status/503")
    st = custom(h)
    assert st["route.ra.requests"] == "4" and st["route.ra.2xx"] == "4"
    assert st["route.rb.5xx"] == "1"
    assert int(st["route.ra.bytes_out"]) > 0
    assert 0 < int(st["route.ra.p50_us"]) <= int(st["route.ra.p99_us"])
    assert st["not_found"] == "0"
    # the same counters as data points in GetMetrics
    mt = h.module.GetMetrics(h.pb.module_pb2.GetMetricsRequest(
        instance_id="alb", metric_names=["route.ra.requests", "route.rb.5xx",
                                         "route.ra.p99_us"]), timeout=T).metrics
    points = {p.name: p.value for p in mt.metrics}
    assert points["route.ra.requests"] == 4 and points["route.rb.5xx"] == 1
    assert points["route.ra.p99_us"] > 0


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_access_log(start_host, alb_so, nginx_backends, tmp_path, fmt):
    a = nginx_backends("a")
    log = tmp_path / f"access-{fmt}.log"
    h, port = start_alb(start_host, alb_so, {"A": [a.port]},
                        routes=[{"id": "main", "upstream": "A"}],
                        access_log={"path": str(log), "format": fmt})
    get(port, "/hello?x=1", headers={"User-Agent": 'ua "quoted"', "Referer": "http://r/"})
    get(port, "/status/404")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    if fmt == "combined":
        assert lines[0].startswith("127.0.0.1 - - [")
        assert '"GET /hello?x=1 HTTP/1.1" 200 ' in lines[0]
        assert lines[0].endswith('"http://r/" "ua \\"quoted\\""')
        assert '"GET /status/404 HTTP/1.1" 404 ' in lines[1]
    else:
        first, second = json.loads(lines[0]), json.loads(lines[1])
        assert first["uri"] == "/hello?x=1" and first["status"] == 200
        assert first["user_agent"] == 'ua "quoted"' and first["route"] == "main"
        assert first["upstream"] == f"127.0.0.1:{a.port}" and first["host"] == "x.test"
        assert first["request_time"] >= 0 and second["status"] == 404


def test_expect_100_continue_is_relayed(start_host, alb_so, nginx_backends):
    """curl waits up to 1 s for "100 Continue" before sending a body: the interim answer
    must come through promptly, and the body then reaches the backend intact."""
    import hashlib
    import subprocess
    a = nginx_backends("a")
    h, port = start_alb(start_host, alb_so, {"A": [a.port]},
                        routes=[{"id": "main", "upstream": "A"}])
    body = bytes(range(256)) * 4096  # 1 MiB
    t0 = time.monotonic()
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "-v", "--expect100-timeout", "5",
                        "-H", "Expect: 100-continue", "--data-binary", "@-",
                        f"http://127.0.0.1:{port}/upload"],
                       input=body, capture_output=True, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert b"HTTP/1.1 100 Continue" in r.stderr
    assert elapsed < 4, f"the 100 Continue did not come through ({elapsed:.1f}s)"
    assert hashlib.sha256(a.upload_bytes(r.stdout)).digest() == hashlib.sha256(body).digest()


def test_upstream_connections_are_reused_across_clients(start_host, alb_so, nginx_backends):
    """Clients that each send one request and leave still share the upstream
    connections: a finished one waits in the worker's keepalive set for the next client
    (nginx's `keepalive` in an upstream block)."""
    a = nginx_backends("a")
    h, port = start_alb(start_host, alb_so, {"A": [a.port]}, routes=[{"id": "r", "upstream": "A"}])
    for i in range(40):
        status, _, _ = get(port, f"/n{i}", headers={"Connection": "close"})
        assert status == 200
    reqs = a.requests(wait_for=40)
    conns = {r["connection"] for r in reqs}
    # two workers each keep theirs; a handful at most, never one per client
    assert len(conns) <= 4, f"{len(conns)} upstream connections for 40 clients"
    st = custom(h)
    assert int(st["upstream_connections_reused"]) >= 36
    assert int(st["upstream_idle_connections"]) >= 1
