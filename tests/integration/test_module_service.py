# test_module_service.py — every marchproxy.ModuleService RPC against the real host
# with the test plugin loaded, through stubs generated from the spec (not our protos).
# Each test asserts an effect: what one call changes, another call (or the plugin's own
# gRPC methods) observes.

import hashlib
import threading
import time

import grpc
import pytest

from mphelpers import test_plugin_path

T = 10  # seconds per call


def echo_host(start_host, settings=None, **kw):
    return start_host(plugins=[test_plugin_path()],
                      instances={"echo": {"plugin": "mptest",
                                          "settings": settings or {"greeting": "hi"}}},
                      **kw)


def raw_unary(host, method):
    return host.channel.unary_unary(method, request_serializer=None,
                                    response_deserializer=None)


def test_unknown_and_missing_instance_ids(start_host):
    h = echo_host(start_host)
    m = h.pb.module_pb2
    with pytest.raises(grpc.RpcError) as e:
        h.module.GetStatus(m.GetStatusRequest(instance_id="nope"), timeout=T)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "echo" in e.value.details() and "nope" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        h.module.GetStats(m.GetStatsRequest(instance_id=""), timeout=T)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "echo" in e.value.details()


def test_malformed_request_bytes_are_invalid_argument(start_host):
    h = echo_host(start_host)
    call = raw_unary(h, "/marchproxy.ModuleService/GetStatus")
    with pytest.raises(grpc.RpcError) as e:
        call(b"\xff\xff\xff\xff\x0f", timeout=T)  # a truncated varint key
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetStatusRequest" in e.value.details()


def test_unknown_method_is_unimplemented(start_host):
    h = echo_host(start_host)
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(h, "/marchproxy.ModuleService/NoSuchMethod")(b"", timeout=T)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(h, "/nobody.Home/Call")(b"", timeout=T)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_message_size_limit(start_host):
    h = echo_host(start_host, grpc={"max_message_bytes": 65536})
    big = b"x" * 70000
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(h, "/mptest.Echo/Echo")(big, timeout=T)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # just under the limit still works
    assert raw_unary(h, "/mptest.Echo/Echo")(b"y" * 60000, timeout=T) == b"y" * 60000


def test_get_status_reports_plugin_and_health(start_host):
    h = echo_host(start_host)
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.GetStatus(m.GetStatusRequest(instance_id="echo"), timeout=T)
    assert r.status == t.HEALTH_STATUS_HEALTHY
    assert r.instance.instance_id == "echo"
    assert r.instance.module_type == t.MODULE_TYPE_ALB
    assert r.instance.version.startswith("1.0.0+")
    assert r.details["plugin"] == "mptest"
    assert r.details["plugin_version"] == "1.0.0"
    so = test_plugin_path().read_bytes()
    assert r.details["plugin_sha256"] == hashlib.sha256(so).hexdigest()
    assert r.instance.started_at.seconds > 0


def test_health_check_follows_plugin_and_config(start_host):
    h = echo_host(start_host, settings={"health": "degraded"})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.HealthCheck(m.HealthCheckRequest(instance_id="echo", deep_check=True),
                             timeout=T)
    assert r.status == t.HEALTH_STATUS_DEGRADED
    assert "deep check" in r.message
    assert r.checks["deep"] == "yes"
    assert r.checked_at.seconds > 0


def test_routes_update_get_query_delete(start_host):
    h = echo_host(start_host)
    m, t = h.pb.module_pb2, h.pb.types_pb2
    routes = [t.Route(route_id=f"r{i:02d}", protocol=t.PROTOCOL_HTTP, destination_port=8000 + i,
                      path_pattern=f"/p{i}", priority=i % 3, headers={"x-k": str(i)})
              for i in range(25)]
    r = h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="echo", routes=routes),
                              timeout=T)
    assert r.success and r.routes_updated == 25
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert got.total_routes == 25
    assert [x.route_id for x in got.routes] == [f"r{i:02d}" for i in range(25)]
    assert got.routes[7].headers["x-k"] == "7" and got.routes[7].path_pattern == "/p7"

    # filters, numeric sort and pagination
    q = t.Query(filters=[t.Filter(field="priority", operator="eq", value="2")],
                sort_by="destination_port", sort_desc=True,
                pagination=t.Pagination(page=2, page_size=3))
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo", query=q), timeout=T)
    # priority 2: r02 r05 r08 r11 r14 r17 r20 r23 -> desc by port, page 2 of size 3
    assert [x.route_id for x in got.routes] == ["r14", "r11", "r08"]
    assert got.total_routes == 8
    assert got.pagination.total_items == 8 and got.pagination.total_pages == 3
    assert got.pagination.page == 2 and got.pagination.page_size == 3

    bad = t.Query(filters=[t.Filter(field="nope", operator="eq", value="1")])
    with pytest.raises(grpc.RpcError) as e:
        h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo", query=bad), timeout=T)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    d = h.module.DeleteRoute(m.DeleteRouteRequest(instance_id="echo", route_id="r03"), timeout=T)
    assert d.success
    d = h.module.DeleteRoute(m.DeleteRouteRequest(instance_id="echo", route_id="r03"), timeout=T)
    assert not d.success and d.error.code == t.STATUS_CODE_NOT_FOUND
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert got.total_routes == 24 and "r03" not in [x.route_id for x in got.routes]

    # replace_all swaps the whole set
    r = h.module.UpdateRoutes(m.UpdateRoutesRequest(
        instance_id="echo", replace_all=True,
        routes=[t.Route(route_id="only", destination_port=9)]), timeout=T)
    assert r.success and r.routes_updated == 1
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert [x.route_id for x in got.routes] == ["only"]


def test_invalid_routes_are_refused_whole(start_host):
    h = echo_host(start_host)
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="echo", routes=[
        t.Route(route_id="good", destination_port=80),
        t.Route(route_id="bad", destination_port=70000),
        t.Route(route_id="", destination_port=80),
        t.Route(route_id="cidr", source_pattern="10.0.0.0/40"),
    ]), timeout=T)
    assert not r.success
    assert r.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    assert "bad" in r.message and "cidr" in r.message
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert got.total_routes == 0  # nothing partially applied


def test_rate_limits_set_get_remove_and_config_seeded(start_host):
    h = echo_host(start_host, extra={"rate_limits": [
        {"id": "from-config", "instance": "echo", "target": "*", "requests_per_second": 50,
         "burst_size": 100}]})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    got = h.module.GetRateLimits(m.GetRateLimitsRequest(instance_id="echo"), timeout=T)
    assert [(x.limit_id, x.requests_per_second, x.burst_size, x.enabled) for x in got.limits] == \
        [("from-config", 50, 100, True)]
    r = h.module.SetRateLimit(m.SetRateLimitRequest(instance_id="echo", limit=t.RateLimit(
        limit_id="per-ip", target="ip", requests_per_minute=600, burst_size=20, enabled=True,
        metadata={"team": "a"})), timeout=T)
    assert r.success, r.message
    r = h.module.SetRateLimit(m.SetRateLimitRequest(instance_id="echo", limit=t.RateLimit(
        limit_id="neg", requests_per_second=-1, enabled=True)), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    r = h.module.SetRateLimit(m.SetRateLimitRequest(instance_id="echo", limit=t.RateLimit(
        limit_id="empty", enabled=True)), timeout=T)
    assert not r.success
    got = h.module.GetRateLimits(m.GetRateLimitsRequest(instance_id="echo", target="ip"),
                                 timeout=T)
    assert got.total_limits == 1
    assert got.limits[0].limit_id == "per-ip" and got.limits[0].metadata["team"] == "a"
    assert got.limits[0].requests_per_minute == 600
    r = h.module.RemoveRateLimit(m.RemoveRateLimitRequest(instance_id="echo",
                                                          limit_id="per-ip"), timeout=T)
    assert r.success
    r = h.module.RemoveRateLimit(m.RemoveRateLimitRequest(instance_id="echo",
                                                          limit_id="per-ip"), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_NOT_FOUND
    got = h.module.GetRateLimits(m.GetRateLimitsRequest(instance_id="echo"), timeout=T)
    assert [x.limit_id for x in got.limits] == ["from-config"]


def test_stats_count_real_plugin_requests(start_host):
    h = echo_host(start_host)
    m = h.pb.module_pb2
    echo = raw_unary(h, "/mptest.Echo/Echo")
    for i in range(200):
        assert echo(b"z" * (i + 1), timeout=T) == b"z" * (i + 1)
    s = h.module.GetStats(m.GetStatsRequest(instance_id="echo"), timeout=T).stats
    assert s.instance_id == "echo"
    assert s.total_requests == 200 and s.successful_requests == 200 and s.failed_requests == 0
    total_bytes = sum(range(1, 201))
    assert s.bytes_received == total_bytes and s.bytes_sent == total_bytes
    assert 0 < s.p50_latency_ms <= s.p95_latency_ms <= s.p99_latency_ms < 1000
    assert s.avg_latency_ms > 0
    assert s.memory_usage_mb > 1
    assert s.cpu_usage_percent >= 0
    assert s.custom_stats["echo_calls"] == "200"
    # reset returns the counts once more, then they start from zero
    s = h.module.GetStats(m.GetStatsRequest(instance_id="echo", reset_counters=True),
                          timeout=T).stats
    assert s.total_requests == 200
    s = h.module.GetStats(m.GetStatsRequest(instance_id="echo"), timeout=T).stats
    assert s.total_requests == 0 and s.bytes_received == 0
    assert s.since.seconds > 0


def test_get_metrics_and_filter(start_host):
    h = echo_host(start_host)
    m = h.pb.module_pb2
    for _ in range(5):
        raw_unary(h, "/mptest.Echo/Echo")(b"abc", timeout=T)
    r = h.module.GetMetrics(m.GetMetricsRequest(instance_id="echo"), timeout=T)
    points = {p.name: p.value for p in r.metrics.metrics}
    assert points["requests_total"] == 5 and points["bytes_in_total"] == 15
    assert r.metrics.instance_id == "echo" and r.collected_at.seconds > 0
    r = h.module.GetMetrics(m.GetMetricsRequest(instance_id="echo",
                                                metric_names=["requests_total"]), timeout=T)
    assert [p.name for p in r.metrics.metrics] == ["requests_total"]
    assert r.metrics.metrics[0].labels["instance_id"] == "echo"


def test_stream_metrics_every_interval_until_cancel(start_host):
    h = echo_host(start_host)
    m = h.pb.module_pb2
    stream = h.module.StreamMetrics(m.StreamMetricsRequest(
        instance_id="echo", interval_seconds=1, metric_names=["requests_total"]), timeout=30)
    seen, stamps = [], []
    start = time.monotonic()
    for msg in stream:
        seen.append(msg.metrics.metrics[0].value)
        stamps.append(time.monotonic() - start)
        raw_unary(h, "/mptest.Echo/Echo")(b"q", timeout=T)
        if len(seen) == 3:
            stream.cancel()
            break
    assert seen == [0, 1, 2]  # each message sees the echo made after the previous one
    assert stamps[0] < 0.5 and 0.8 < stamps[2] - stamps[1] < 1.6
    # the host is still fine after the cancel
    h.module.GetStatus(m.GetStatusRequest(instance_id="echo"), timeout=T)


def test_config_get_update_validate(start_host):
    h = echo_host(start_host, settings={"greeting": "hello"})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    version = raw_unary(h, "/mptest.Echo/Version")
    assert version(b"", timeout=T) == b"1.0.0 hello"
    got = h.module.GetConfig(m.GetConfigRequest(instance_id="echo"), timeout=T)
    assert len(got.configs) == 1
    c = got.configs[0]
    assert c.config_type == "libconfig" and b'greeting = "hello";' in c.config_data
    assert c.checksum == "sha256:" + hashlib.sha256(c.config_data).hexdigest()

    new = b'greeting = "bonjour";\nhealth = "degraded";\n'
    bad_key = b'greting = "typo";\n'
    r = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="echo", config=t.ConfigUpdate(
        config_type="libconfig", config_data=bad_key)), timeout=T)
    assert not r.success and not r.validation_passed
    assert any("unknown key" in e and "greting" in e for e in r.validation_errors)
    r = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="echo", config=t.ConfigUpdate(
        config_data=b"greeting = ;")), timeout=T)
    assert not r.validation_passed and ":1:" in r.validation_errors[0]
    r = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="echo", config=t.ConfigUpdate(
        config_data=new, checksum="sha256:" + "0" * 64)), timeout=T)
    assert not r.validation_passed and "checksum" in r.validation_errors[0]

    r = h.module.UpdateConfig(m.UpdateConfigRequest(
        instance_id="echo", validate_only=True,
        config=t.ConfigUpdate(config_data=new,
                              checksum="sha256:" + hashlib.sha256(new).hexdigest())), timeout=T)
    assert r.success and r.validation_passed
    assert version(b"", timeout=T) == b"1.0.0 hello"  # validate_only changed nothing

    r = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="echo",
                                                    config=t.ConfigUpdate(config_data=new)),
                              timeout=T)
    assert r.success and r.validation_passed, r.message
    assert version(b"", timeout=T) == b"1.0.0 bonjour"
    hc = h.module.HealthCheck(m.HealthCheckRequest(instance_id="echo"), timeout=T)
    assert hc.status == t.HEALTH_STATUS_DEGRADED
    got = h.module.GetConfig(m.GetConfigRequest(instance_id="echo"), timeout=T)
    assert b'"bonjour"' in got.configs[0].config_data
    assert not h.module.GetConfig(m.GetConfigRequest(instance_id="echo", config_type="yaml"),
                                  timeout=T).configs


def test_can_handle_uses_plugin_verdict(start_host):
    h = echo_host(start_host, settings={"handles_port": 8443})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    yes = h.module.CanHandle(m.CanHandleRequest(route=t.Route(destination_port=8443),
                                                context={"instance_id": "echo"}), timeout=T)
    assert yes.can_handle and yes.priority == 50 and yes.metadata["instance_id"] == "echo"
    no = h.module.CanHandle(m.CanHandleRequest(route=t.Route(destination_port=80)), timeout=T)
    assert not no.can_handle and "8443" in no.reason
    with pytest.raises(grpc.RpcError) as e:
        h.module.CanHandle(m.CanHandleRequest(route=t.Route(destination_port=80),
                                              context={"instance_id": "ghost"}), timeout=T)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_scale_sets_worker_share(start_host):
    h = echo_host(start_host, host={"workers": 2})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.Scale(m.ScaleRequest(instance_id="echo", immediate=True, config=t.ScalingConfig(
        min_instances=1, max_instances=1)), timeout=T)
    assert r.success and r.current_instances == 2 and r.desired_instances == 1
    r = h.module.Scale(m.ScaleRequest(instance_id="echo", config=t.ScalingConfig(
        min_instances=2, max_instances=8)), timeout=T)
    assert r.current_instances == 1 and r.desired_instances == 2  # capped by 2 workers
    r = h.module.Scale(m.ScaleRequest(instance_id="echo", config=t.ScalingConfig(
        min_instances=3, max_instances=2)), timeout=T)
    assert not r.success


def test_get_instances_filters(start_host):
    h = start_host(plugins=[test_plugin_path()], instances={
        "a": {"plugin": "mptest", "settings": {}},
        "b": {"plugin": "mptest", "settings": {"health": "unhealthy"}}})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.GetInstances(m.GetInstancesRequest(), timeout=T)
    assert sorted(i.instance_id for i in r.instances) == ["a", "b"] and r.total_instances == 2
    r = h.module.GetInstances(m.GetInstancesRequest(status_filter=t.HEALTH_STATUS_UNHEALTHY),
                              timeout=T)
    assert [i.instance_id for i in r.instances] == ["b"]
    r = h.module.GetInstances(m.GetInstancesRequest(module_type=t.MODULE_TYPE_DBLB), timeout=T)
    assert r.total_instances == 0


def test_shutdown_stops_one_instance_and_reload_brings_it_back(start_host):
    h = start_host(plugins=[test_plugin_path()], instances={
        "a": {"plugin": "mptest", "settings": {}},
        "b": {"plugin": "mptest", "settings": {}}})
    m = h.pb.module_pb2
    r = h.module.Shutdown(m.ShutdownRequest(instance_id="a", graceful=True), timeout=T)
    assert r.success
    with pytest.raises(grpc.RpcError) as e:
        h.module.GetStatus(m.GetStatusRequest(instance_id="a"), timeout=T)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    h.module.GetStatus(m.GetStatusRequest(instance_id="b"), timeout=T)
    r = h.module.Reload(m.ReloadRequest(instance_id="a"), timeout=T)
    assert r.success, r.message
    h.module.GetStatus(m.GetStatusRequest(instance_id="a"), timeout=T)


def test_streaming_plugin_method_from_plugin_thread(start_host):
    h = echo_host(start_host)
    count = h.channel.unary_stream("/mptest.Echo/Count", request_serializer=None,
                                   response_deserializer=None)
    assert list(count(b"50", timeout=T)) == [str(i).encode() for i in range(50)]
    with pytest.raises(grpc.RpcError) as e:
        list(count(b"lots", timeout=T))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_calls(start_host):
    h = echo_host(start_host)
    echo = raw_unary(h, "/mptest.Echo/Echo")
    errors = []

    def worker(n):
        try:
            for i in range(100):
                payload = f"{n}-{i}".encode() * 10
                assert echo(payload, timeout=T) == payload
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    s = h.module.GetStats(h.pb.module_pb2.GetStatsRequest(instance_id="echo"), timeout=T).stats
    assert s.total_requests == 800
