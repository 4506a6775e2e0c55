# test_alb_pools.py — the ALB's upstream pools through the real host, against real nginx
# backends (mp_nginx.py): weighted / least-conn / hash distribution, a GET retried on
# another member after a refused connect (and a POST not), passive ejection of a backend
# that died and its trial after fail_timeout, 5xx answers counting as failures, 503 at
# once when no member is usable, active health checks taking a member out and back, and
# the per-member custom stats.
#
# Every request uses a new client connection, so each one is a fresh pick.

import collections
import http.client
import re
import time

import pytest

from mp_alb import start_alb
from mphelpers import free_port

T = 10


def pool_host(start_host, so, upstream):
    """A host whose ALB sends every request to upstream "u" (settings as given)."""
    settings = {"upstreams": {"u": upstream}, "routes": [{"upstream": "u"}],
                "timeouts": {"connect_ms": 1000}}
    return start_alb(start_host, so, settings)


def call(port, method="GET", path="/", headers=None, body=None):
    """One request on its own connection: (status, X-Backend, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    try:
        conn.request(method, path, body=body, headers={"Host": "pool.example", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.getheader("X-Backend"), r.read()
    finally:
        conn.close()


def stats(h):
    m = h.pb.module_pb2
    return dict(h.module.GetStats(m.GetStatsRequest(instance_id="alb"), timeout=T)
                .stats.custom_stats)


def test_weighted_round_robin_is_exact(start_host, alb_so, nginx_backends):
    a, b, c = nginx_backends("a"), nginx_backends("b"), nginx_backends("c")
    h, port = pool_host(start_host, alb_so, {
        "servers": [{"address": a.address, "weight": 3}, {"address": b.address, "weight": 1},
                    {"address": c.address, "weight": 2}],
        "balance": "weighted"})
    got = [call(port) for _ in range(60)]
    assert all(s == 200 for s, _, _ in got)
    names = [n for _, n, _ in got]
    assert collections.Counter(names) == {"a": 30, "b": 10, "c": 20}
    # smooth: the heaviest member never takes more than two turns in a row
    assert "aaa" not in "".join(names)
    cs = stats(h)
    assert cs[f"upstream.u.{a.address}"].startswith("healthy active=0 picks=30 ")


def test_least_conn_avoids_the_busy_member(start_host, alb_so, nginx_backends):
    a, b = nginx_backends("a"), nginx_backends("b")
    h, port = pool_host(start_host, alb_so, {"servers": [a.address, b.address],
                                             "balance": "least-conn"})
    # A slow download holds one member busy (its body trickles for seconds).
    slow = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
    slow.request("GET", "/slow?rate=4096", headers={"Host": "pool.example"})
    r = slow.getresponse()
    busy = r.getheader("X-Backend")
    r.read(1000)
    names = [call(port)[1] for _ in range(10)]
    assert busy in ("a", "b") and names == [{"a": "b", "b": "a"}[busy]] * 10
    assert stats(h)[f"upstream.u.{(a if busy == 'a' else b).address}"].startswith(
        "healthy active=1 ")
    slow.close()
    # The proxy notices the closed client at its next write (the trickle); then the
    # member is idle again and the two share.
    deadline = time.monotonic() + 10
    while any(" active=0 " not in v for k, v in stats(h).items() if k.startswith("upstream.")):
        assert time.monotonic() < deadline, stats(h)
        time.sleep(0.05)
    names = [call(port)[1] for _ in range(10)]
    assert collections.Counter(names) == {"a": 5, "b": 5}


def test_hash_on_a_header_is_sticky(start_host, alb_so, nginx_backends):
    bs = [nginx_backends(n) for n in ("a", "b", "c")]
    h, port = pool_host(start_host, alb_so, {"servers": [b.address for b in bs],
                                             "balance": "hash", "hash_key": "header:X-User"})
    where = {}
    for user in (f"user{i}" for i in range(30)):
        seen = {call(port, headers={"X-User": user})[1] for _ in range(3)}
        assert len(seen) == 1, (user, seen)
        where[user] = seen.pop()
    assert len(set(where.values())) == 3  # 30 keys do not all land on one member
    # no header: the client IP decides (all these come from 127.0.0.1)
    assert len({call(port)[1] for _ in range(6)}) == 1


def test_get_is_retried_on_another_member_after_a_refused_connect(start_host, alb_so,
                                                                  nginx_backends):
    a = nginx_backends("a")
    dead = f"127.0.0.1:{free_port()}"
    # max_fails 0: never ejected, so every turn of the dead member is a refused connect
    h, port = pool_host(start_host, alb_so, {"servers": [dead, a.address], "max_fails": 0})
    got = [call(port) for _ in range(10)]
    assert [(s, n) for s, n, _ in got] == [(200, "a")] * 10
    # a POST is not idempotent: the refused connect is answered 502, nothing retried
    posts = [call(port, "POST", body=b"x")[0] for _ in range(10)]
    assert sorted(posts) == [200] * 5 + [502] * 5
    assert f"upstream u server {dead}: connect failed: Connection refused" in h.log()
    # retries = 0 turns the retry off for GETs too
    h2, port2 = pool_host(start_host, alb_so, {"servers": [dead, a.address], "max_fails": 0,
                                               "retries": 0})
    assert sorted(call(port2)[0] for _ in range(10)) == [200] * 5 + [502] * 5


def test_dead_backend_is_ejected_and_tried_again_later(start_host, alb_so, nginx_backends):
    a, b = nginx_backends("a"), nginx_backends("b")
    h, port = pool_host(start_host, alb_so, {"servers": [a.address, b.address],
                                             "max_fails": 2, "fail_timeout_ms": 1500,
                                             "retries": 0})
    assert collections.Counter(call(port)[1] for _ in range(4)) == {"a": 2, "b": 2}
    b.stop()
    mark = h.log_mark()
    # POSTs (never retried) show each failure: two on b, then b is out
    got = [call(port, "POST", body=b"x")[0] for _ in range(12)]
    assert got.count(502) == 2 and got[got.index(502) + 1:].count(502) == 1, got
    last_bad = max(i for i, s in enumerate(got) if s == 502)
    assert got[last_bad + 1:] == [200] * (11 - last_bad)
    h.wait_log(rf"upstream u server {re.escape(b.address)} ejected for 1500 ms after 2 "
               rf"failures", since=mark)
    assert stats(h)[f"upstream.u.{b.address}"].startswith("ejected ")
    # after fail_timeout one trial request goes to b; it fails and b is out again
    time.sleep(1.6)
    got = [call(port, "POST", body=b"x")[0] for _ in range(6)]
    assert got.count(502) == 1, got
    # b comes back on the same port: the next trial succeeds and it is in the rotation
    b2 = nginx_backends("b2", port=b.port)
    time.sleep(1.6)
    names = [call(port)[1] for _ in range(8)]
    assert names.count("b2") >= 3, names


def test_5xx_answers_eject_and_no_usable_member_is_503(start_host, alb_so, nginx_backends):
    a, b = nginx_backends("a"), nginx_backends("b")
    h, port = pool_host(start_host, alb_so, {"servers": [a.address, b.address],
                                             "max_fails": 2, "fail_timeout_ms": 60000})
    assert [call(port, path="/status/500")[0] for _ in range(4)] == [500] * 4
    # both members returned two 500s in a row: both out, answered locally at once
    t0 = time.monotonic()
    status, backend, body = call(port)
    assert status == 503 and backend is None and body == b"503 Service Unavailable\n"
    assert time.monotonic() - t0 < 1
    assert call(port, "HEAD")[0] == 503
    n = len(a.requests(wait_for=2)) + len(b.requests(wait_for=2))
    assert n == 4  # nothing after the ejection reached a backend
    cs = stats(h)
    assert cs[f"upstream.u.{a.address}"].startswith("ejected active=0 picks=2 fails=2 "
                                                    "ejections=1")


def test_all_down_after_a_refused_connect_is_502_then_503(start_host, alb_so, nginx_backends):
    a = nginx_backends("a")
    h, port = pool_host(start_host, alb_so, {"servers": [a.address], "max_fails": 1,
                                             "fail_timeout_ms": 60000})
    assert call(port)[0] == 200
    a.stop()
    assert call(port)[0] == 502  # the failure that ejects it; no other member to retry
    assert call(port)[0] == 503


def test_active_checks_take_a_member_out_and_back(start_host, alb_so, nginx_backends):
    a, b = nginx_backends("a"), nginx_backends("b")
    h, port = pool_host(start_host, alb_so, {
        "servers": [a.address, b.address], "retries": 0, "max_fails": 0,
        "health_check": {"path": "/healthz", "interval_ms": 100, "timeout_ms": 500,
                         "healthy_threshold": 2, "unhealthy_threshold": 2}})
    checks = [r for r in a.requests(wait_for=2) if r["uri"] == "/healthz"]
    assert checks and checks[0]["method"] == "GET" and checks[0]["status"] == "200"
    b.stop()
    h.wait_log(rf"upstream u server {re.escape(b.address)} is unhealthy: connect: "
               rf"Connection refused \(2 failed checks\)", timeout=5)
    # taken out before any request failed: POSTs (never retried) all succeed on a
    assert [call(port, "POST", body=b"x")[:2] for _ in range(10)] == [(200, "a")] * 10
    assert stats(h)[f"upstream.u.{b.address}"].startswith("unhealthy ")
    b2 = nginx_backends("b2", port=b.port)
    h.wait_log(rf"upstream u server {re.escape(b.address)} is healthy again", timeout=5)
    names = [call(port)[1] for _ in range(10)]
    assert collections.Counter(names) == {"a": 5, "b2": 5}


def test_active_checks_on_a_dead_pool_answer_503(start_host, alb_so):
    dead = f"127.0.0.1:{free_port()}"
    h, port = pool_host(start_host, alb_so, {
        "servers": [dead], "health_check": {"interval_ms": 50, "unhealthy_threshold": 1}})
    h.wait_log(rf"server {re.escape(dead)} is unhealthy", timeout=5)
    status, _, body = call(port)
    assert status == 503 and b"503" in body
