# test_nlb_service.py — every marchproxy.NLBService RPC against the real host, through
# stubs generated from the spec. External modules are played by the test itself
# (RegisterModule + Heartbeat); in-process instances run the mptest plugin. Each test
# changes something with one call and observes the effect with another.

import hashlib
import math
import re
import time

import grpc
import pytest

import mphelpers
from mphelpers import SLOWDOWN, VALGRIND, test_plugin_path

T = 10 * SLOWDOWN  # seconds per call
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# An idle client connection holds a SIGTERM'd host for its whole drain grace (5 s by
# default); a short one keeps the suite fast without changing what is tested.
FAST_STOP = {"drain_timeout_ms": 300}


def nlb_host(start_host, instances=None, host=None, **kw):
    settings = dict(FAST_STOP)
    settings.update(host or {})
    if instances is None:
        instances = {"echo": {"plugin": "mptest", "settings": {"handles_port": 8080}}}
    return start_host(plugins=[test_plugin_path()], instances=instances, host=settings, **kw)


def stubs(h):
    return h.pb.nlb_pb2, h.pb.types_pb2


def register(h, iid, *, address="10.9.0.1:7000", module_type=None, routes=(), hc=None,
             **fields):
    n, t = stubs(h)
    inst = t.ModuleInstance(instance_id=iid, address=address,
                            module_type=t.MODULE_TYPE_ALB if module_type is None else module_type,
                            **fields)
    return h.nlb.RegisterModule(n.RegisterModuleRequest(instance=inst, initial_routes=list(routes),
                                                        health_config=hc), timeout=T)


def registered(h, iid, **kw):
    r = register(h, iid, **kw)
    assert r.success, r.message
    return r.registration_id


def heartbeat(h, iid, reg, status=0, stats=None):
    n, _ = stubs(h)
    return h.nlb.Heartbeat(n.HeartbeatRequest(instance_id=iid, registration_id=reg, status=status,
                                              current_stats=stats), timeout=T)


def route_req(h, dry_run=False, context=None, **fields):
    n, t = stubs(h)
    return h.nlb.RouteRequest(n.RouteRequestRequest(route=t.Route(**fields), dry_run=dry_run,
                                                    context=context or {}), timeout=T)


def api_route(t, rid, target, **fields):
    return t.Route(route_id=rid, metadata={"target": target}, **fields)


def update_routing(h, routes, **kw):
    n, _ = stubs(h)
    return h.nlb.UpdateRouting(n.UpdateRoutingRequest(routes=routes, **kw), timeout=T)


def table(h, **kw):
    n, _ = stubs(h)
    r = h.nlb.GetRoutingTable(n.GetRoutingTableRequest(**kw), timeout=T)
    return {e.route.route_id: e for e in r.entries}


def modules(h, **kw):
    n, _ = stubs(h)
    r = h.nlb.ListModules(n.ListModulesRequest(**kw), timeout=T)
    return {m.instance_id: m for m in r.modules}


def status(h, include_modules=False):
    n, _ = stubs(h)
    return h.nlb.GetNLBStatus(n.GetNLBStatusRequest(include_modules=include_modules), timeout=T)


def host_metrics(h, names=()):
    n, _ = stubs(h)
    r = h.nlb.GetNLBMetrics(n.GetNLBMetricsRequest(metric_names=list(names)), timeout=T)
    return {p.name: p.value for p in r.metrics}, r


def eventually(fn, what, timeout=3):
    """Polls fn() until it returns something true (health is re-read every 0.5 s)."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout * SLOWDOWN}s"
        time.sleep(0.05)


def rpc_error(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, timeout=T, **kw)
    return e.value


# ------------------------------------------------------------------ registration

def test_register_then_list_info_routing_table_and_heartbeat(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    routes = [t.Route(route_id="ext-web", protocol=t.PROTOCOL_HTTP, destination_pattern="web.test",
                      priority=7),
              t.Route(route_id="ext-db", protocol=t.PROTOCOL_MYSQL, destination_port=3306)]
    r = register(h, "ext-1", address="db.internal:9100", module_type=t.MODULE_TYPE_DBLB,
                 routes=routes, version="3.1", max_connections=100, metadata={"zone": "a"},
                 hc=t.HealthCheckConfig(interval_seconds=30))
    assert r.success and not r.HasField("error"), r.message
    assert UUID4.match(r.registration_id)
    assert r.registered_at.seconds > 0
    assert "30 s" in r.message

    mods = modules(h)
    assert list(mods) == ["echo", "ext-1"]  # in-process first, then external
    ext = mods["ext-1"]
    assert ext.address == "db.internal:9100" and ext.module_type == t.MODULE_TYPE_DBLB
    assert ext.health_status == t.HEALTH_STATUS_HEALTHY
    assert ext.version == "3.1" and ext.max_connections == 100
    assert ext.metadata["kind"] == "external" and ext.metadata["zone"] == "a"
    assert ext.started_at.seconds > 0
    assert mods["echo"].metadata["kind"] == "in-process"
    assert mods["echo"].address == "inproc:echo"

    info = h.nlb.GetModuleInfo(n.GetModuleInfoRequest(instance_id="ext-1"), timeout=T)
    assert info.instance.instance_id == "ext-1"
    assert [x.route_id for x in info.routes] == ["ext-web", "ext-db"]
    assert info.routes[0].destination_pattern == "web.test" and info.routes[0].priority == 7
    assert info.details["kind"] == "external" and info.details["in_rotation"] == "true"
    assert info.details["heartbeat_interval_s"] == "30"

    entries = table(h)
    assert entries["ext-db"].target_instance_id == "ext-1"
    assert entries["ext-db"].target_module_type == t.MODULE_TYPE_DBLB
    assert entries["ext-web"].created_at.seconds > 0

    # A heartbeat with stats: acknowledged, and the stats show up where stats are shown.
    before = time.time()
    hb = heartbeat(h, "ext-1", r.registration_id, status=t.HEALTH_STATUS_HEALTHY,
                   stats=t.ModuleStats(total_requests=1234, active_connections=17,
                                       cpu_usage_percent=12.5, custom_stats={"k": "v"}))
    assert hb.acknowledged and not hb.should_scale and not hb.should_reload
    assert abs(hb.server_time.seconds - before) < 5
    info = h.nlb.GetModuleInfo(n.GetModuleInfoRequest(instance_id="ext-1"), timeout=T)
    assert info.stats.instance_id == "ext-1"
    assert info.stats.total_requests == 1234 and info.stats.cpu_usage_percent == 12.5
    assert info.stats.custom_stats["k"] == "v"
    assert info.details["reported_status"] == "HEALTH_STATUS_HEALTHY"
    assert modules(h)["ext-1"].current_connections == 17

    # The in-process instance is described by the same RPC.
    info = h.nlb.GetModuleInfo(n.GetModuleInfoRequest(instance_id="echo"), timeout=T)
    assert info.details["kind"] == "in-process" and info.details["plugin"] == "mptest"
    assert info.instance.module_type == t.MODULE_TYPE_ALB
    assert info.stats.instance_id == "echo"
    assert info.deployment_config.active_version.startswith("1.0.0+")


def test_register_refuses_invalid_requests(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    bad = [
        dict(iid="has space", address="h:1"),
        dict(iid="x" * 129, address="h:1"),
        dict(iid="", address="h:1"),
        dict(iid="ok", address=""),
        dict(iid="ok", address="nohostport"),
        dict(iid="ok", address="h:70000"),
        dict(iid="ok", address="h:1", module_type=6),
        dict(iid="ok", address="h:1", module_type=0),
        dict(iid="ok", address="[10.0.0.1]:80"),   # brackets are for IPv6
        dict(iid="ok", address="[::1]"),
        dict(iid="ok", address="2001:db8::1:80"),  # IPv6 needs brackets
    ]
    for kw in bad:
        iid = kw.pop("iid")
        e = rpc_error(h.nlb.RegisterModule, n.RegisterModuleRequest(instance=t.ModuleInstance(
            instance_id=iid, address=kw["address"],
            module_type=kw.get("module_type", t.MODULE_TYPE_ALB))))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (iid, kw, e.details())
    # IPv6 addresses are accepted in brackets, and 128-character ids are fine.
    assert register(h, "v6", address="[2001:db8::1]:443").success
    assert register(h, "v6-mapped", address="[::ffff:10.0.0.1]:443").success
    assert register(h, "y" * 128, address="h:1").success

    # The id of an in-process instance is not for external modules.
    r = register(h, "echo", address="h:1")
    assert not r.success and r.error.code == t.STATUS_CODE_ALREADY_EXISTS
    assert not r.registration_id

    # An invalid initial route refuses the whole registration.
    e = rpc_error(h.nlb.RegisterModule, n.RegisterModuleRequest(
        instance=t.ModuleInstance(instance_id="badroutes", address="h:1", module_type=1),
        initial_routes=[t.Route(route_id="fine"), t.Route(route_id="cidr",
                                                         source_pattern="10.0.0.0/33")]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "cidr" in e.details()
    # ... as does a route id another owner already holds.
    assert update_routing(h, [api_route(t, "taken", "echo")]).success
    e = rpc_error(h.nlb.RegisterModule, n.RegisterModuleRequest(
        instance=t.ModuleInstance(instance_id="thief", address="h:1", module_type=1),
        initial_routes=[t.Route(route_id="taken")]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "taken" in e.details()
    assert sorted(modules(h)) == sorted(["echo", "v6", "v6-mapped", "y" * 128])
    assert "fine" not in table(h) and table(h)["taken"].target_instance_id == "echo"


def test_reregister_replaces_registration_and_routes(start_host):
    h = nlb_host(start_host)
    _, t = stubs(h)
    first = registered(h, "ext", routes=[t.Route(route_id="old-a"), t.Route(route_id="keep")])
    second = registered(h, "ext", address="10.9.0.2:7001",
                        routes=[t.Route(route_id="keep", priority=5), t.Route(route_id="new-b")])
    assert UUID4.match(second) and second != first
    assert modules(h)["ext"].address == "10.9.0.2:7001"
    entries = table(h)
    assert "old-a" not in entries
    assert entries["keep"].route.priority == 5 and entries["new-b"].target_instance_id == "ext"
    # The old registration is dead; the new one lives.
    hb = heartbeat(h, "ext", first)
    assert not hb.acknowledged and "registration_id" in hb.message
    assert heartbeat(h, "ext", second).acknowledged
    assert len([m for m in modules(h) if m == "ext"]) == 1


def test_heartbeat_refusals(start_host):
    h = nlb_host(start_host)
    reg = registered(h, "ext")
    wrong = heartbeat(h, "ext", "00000000-0000-4000-8000-000000000000")
    assert not wrong.acknowledged and "register again" in wrong.message
    assert wrong.server_time.seconds > 0
    assert not heartbeat(h, "ext", "").acknowledged
    ghost = heartbeat(h, "ghost", reg)
    assert not ghost.acknowledged and "ghost" in ghost.message
    inproc = heartbeat(h, "echo", reg)
    assert not inproc.acknowledged and "in-process" in inproc.message
    assert heartbeat(h, "ext", reg).acknowledged


def test_unregister(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    reg = registered(h, "ext", routes=[t.Route(route_id="ext-r1"), t.Route(route_id="ext-r2")])
    assert update_routing(h, [api_route(t, "api-to-ext", "ext")]).success

    r = h.nlb.UnregisterModule(n.UnregisterModuleRequest(
        instance_id="ext", registration_id="00000000-0000-4000-8000-000000000000"), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_PERMISSION_DENIED
    assert "ext" in modules(h)

    r = h.nlb.UnregisterModule(n.UnregisterModuleRequest(instance_id="ext", registration_id=reg,
                                                         graceful=True), timeout=T)
    assert r.success, r.message
    assert "2 route(s)" in r.message
    assert "ext" not in modules(h)
    entries = table(h)
    assert "ext-r1" not in entries and "ext-r2" not in entries
    assert "api-to-ext" in entries  # an operator's route stays; its target is just gone
    e = rpc_error(h.nlb.GetModuleInfo, n.GetModuleInfoRequest(instance_id="ext"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert not heartbeat(h, "ext", reg).acknowledged

    r = h.nlb.UnregisterModule(n.UnregisterModuleRequest(instance_id="ext"), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_NOT_FOUND
    r = h.nlb.UnregisterModule(n.UnregisterModuleRequest(instance_id="echo"), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    assert "echo" in modules(h)
    e = rpc_error(h.nlb.UnregisterModule, n.UnregisterModuleRequest(instance_id=""))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_missed_heartbeats_take_module_out_of_rotation_and_back(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    hc = t.HealthCheckConfig(interval_seconds=1, unhealthy_threshold=2, healthy_threshold=3)
    reg = registered(h, "ext", hc=hc, routes=[t.Route(route_id="to-ext", destination_port=8080,
                                                      priority=10)])
    assert update_routing(h, [api_route(t, "fallback", "echo", destination_port=8080,
                                        priority=1)]).success
    assert route_req(h, destination_port=8080).target_instance_id == "ext"

    # Beating every half interval keeps it in rotation well past the threshold.
    for _ in range(6):
        assert heartbeat(h, "ext", reg).acknowledged
        time.sleep(0.5)
        assert route_req(h, destination_port=8080, dry_run=True).target_instance_id == "ext"

    # Silence: out of rotation after two missed intervals (+ the 0.5 s watchdog period).
    silent_from = time.monotonic()
    deadline = silent_from + 4 * SLOWDOWN
    while True:
        r = route_req(h, destination_port=8080, dry_run=True)
        if r.target_instance_id != "ext":
            break
        assert time.monotonic() < deadline, "module still chosen after missing heartbeats"
        time.sleep(0.1)
    took = time.monotonic() - silent_from
    assert took >= 1.5, f"out of rotation after only {took:.2f}s"
    assert r.routed and r.target_instance_id == "echo" and r.priority == 1
    assert modules(h)["ext"].health_status == t.HEALTH_STATUS_UNHEALTHY
    assert list(modules(h, status_filter=t.HEALTH_STATUS_UNHEALTHY)) == ["ext"]
    info = h.nlb.GetModuleInfo(n.GetModuleInfoRequest(instance_id="ext"), timeout=T)
    assert info.details["in_rotation"] == "false"
    assert int(info.details["missed_heartbeats"]) >= 2
    ch = h.nlb.CheckHealth(n.CheckHealthRequest(check_modules=True), timeout=T)
    assert ch.module_health["ext"] == t.HEALTH_STATUS_UNHEALTHY
    assert "1 out of rotation" in ch.checks["external_modules"]

    # healthy_threshold=3 consecutive heartbeats bring it back, not fewer.
    for i in (1, 2):
        hb = heartbeat(h, "ext", reg)
        assert hb.acknowledged and f"{i} of 3" in hb.message, hb.message
        assert route_req(h, destination_port=8080, dry_run=True).target_instance_id == "echo"
    hb = heartbeat(h, "ext", reg)
    assert hb.acknowledged and "back in rotation" in hb.message
    assert route_req(h, destination_port=8080).target_instance_id == "ext"
    assert modules(h)["ext"].health_status == t.HEALTH_STATUS_HEALTHY


def test_module_reporting_itself_unhealthy_is_skipped(start_host):
    h = nlb_host(start_host)
    _, t = stubs(h)
    reg = registered(h, "ext", routes=[t.Route(route_id="to-ext", destination_port=8080,
                                               priority=10)])
    assert update_routing(h, [api_route(t, "fallback", "echo", destination_port=8080)]).success
    assert route_req(h, destination_port=8080).target_instance_id == "ext"
    assert heartbeat(h, "ext", reg, status=t.HEALTH_STATUS_UNHEALTHY).acknowledged
    assert route_req(h, destination_port=8080).target_instance_id == "echo"
    assert modules(h)["ext"].health_status == t.HEALTH_STATUS_UNHEALTHY
    assert heartbeat(h, "ext", reg, status=t.HEALTH_STATUS_DEGRADED).acknowledged
    assert route_req(h, destination_port=8080).target_instance_id == "ext"
    assert modules(h)["ext"].health_status == t.HEALTH_STATUS_DEGRADED


def test_list_modules_filters_and_query(start_host):
    h = nlb_host(start_host, instances={
        "a": {"plugin": "mptest", "settings": {"health": "unhealthy"}}})
    n, t = stubs(h)
    registered(h, "db-1", module_type=t.MODULE_TYPE_DBLB)
    registered(h, "db-2", module_type=t.MODULE_TYPE_DBLB, address="10.0.0.2:5432")
    registered(h, "rtmp-1", module_type=t.MODULE_TYPE_RTMP)
    reg = registered(h, "alb-ext")
    heartbeat(h, "alb-ext", reg, status=t.HEALTH_STATUS_DEGRADED)
    r = h.nlb.ListModules(n.ListModulesRequest(), timeout=T)
    assert [m.instance_id for m in r.modules] == ["a", "db-1", "db-2", "rtmp-1", "alb-ext"]
    assert r.total_modules == 5
    assert list(modules(h, module_type_filter=t.MODULE_TYPE_DBLB)) == ["db-1", "db-2"]
    assert list(modules(h, module_type_filter=t.MODULE_TYPE_ALB)) == ["a", "alb-ext"]
    assert list(modules(h, status_filter=t.HEALTH_STATUS_UNHEALTHY)) == ["a"]
    assert list(modules(h, status_filter=t.HEALTH_STATUS_DEGRADED)) == ["alb-ext"]
    assert list(modules(h, module_type_filter=t.MODULE_TYPE_ALB,
                        status_filter=t.HEALTH_STATUS_HEALTHY)) == []
    assert list(modules(h, module_type_filter=t.MODULE_TYPE_AILB)) == []

    q = t.Query(filters=[t.Filter(field="kind", operator="eq", value="external")],
                sort_by="instance_id", sort_desc=True, pagination=t.Pagination(page=1, page_size=2))
    r = h.nlb.ListModules(n.ListModulesRequest(query=q), timeout=T)
    assert [m.instance_id for m in r.modules] == ["rtmp-1", "db-2"]
    assert r.total_modules == 4 and r.pagination.total_pages == 2
    q = t.Query(filters=[t.Filter(field="address", operator="contains", value="5432")])
    assert list(modules(h, query=q)) == ["db-2"]
    e = rpc_error(h.nlb.ListModules, n.ListModulesRequest(
        query=t.Query(filters=[t.Filter(field="bogus", operator="eq", value="x")])))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_ids(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    registered(h, "ext")
    for call, req in [
        (h.nlb.GetModuleInfo, n.GetModuleInfoRequest(instance_id="ghost")),
        (h.nlb.GetModuleMetrics, n.GetModuleMetricsRequest(instance_id="ghost")),
        (h.nlb.TriggerScaling, n.TriggerScalingRequest(instance_id="ghost",
                                                       scaling_action="scale_up")),
    ]:
        e = rpc_error(call, req)
        assert e.code() == grpc.StatusCode.NOT_FOUND, call
        assert "ghost" in e.details() and "echo" in e.details() and "ext" in e.details()
    for call, req in [
        (h.nlb.GetModuleInfo, n.GetModuleInfoRequest()),
        (h.nlb.GetModuleMetrics, n.GetModuleMetricsRequest()),
        (h.nlb.TriggerScaling, n.TriggerScalingRequest(scaling_action="scale_up")),
    ]:
        assert rpc_error(call, req).code() == grpc.StatusCode.INVALID_ARGUMENT, call
    r = h.nlb.ReportMetrics(n.ReportMetricsRequest(instance_id="ghost"), timeout=T)
    assert not r.acknowledged and "ghost" in r.message
    r = h.nlb.RebalanceLoad(n.RebalanceLoadRequest(target_instances=["echo", "ghost"]), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_NOT_FOUND and "ghost" in r.message


def test_malformed_request_is_invalid_argument(start_host):
    h = nlb_host(start_host)
    call = h.channel.unary_unary("/marchproxy.NLBService/RouteRequest",
                                 request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=T)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ routing table

def test_update_routing_and_get_routing_table(start_host):
    h = nlb_host(start_host, extra={"routes": [
        {"id": "cfg-route", "target": "echo", "protocol": "https", "destination": "cfg.example.org",
         "priority": 3}]})
    n, m, t = h.pb.nlb_pb2, h.pb.module_pb2, h.pb.types_pb2
    registered(h, "ext", module_type=t.MODULE_TYPE_AILB)
    # the in-process instance's own routes are part of the table too
    assert h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="echo", routes=[
        t.Route(route_id="own", protocol=t.PROTOCOL_GRPC, destination_pattern="own.example.com")]),
        timeout=T).success

    r = update_routing(h, [
        api_route(t, "by-meta", "echo", protocol=t.PROTOCOL_HTTP,
                  destination_pattern="a.example.com", priority=10, headers={"x-a": "1"}),
        t.Route(route_id="by-source", protocol=t.PROTOCOL_HTTP, destination_pattern="b.example.net",
                path_pattern="/v1"),
    ], source_instance_id="ext")
    assert r.success and r.routes_updated == 2 and not r.validation_errors, r.message

    entries = table(h)
    assert set(entries) == {"cfg-route", "by-meta", "by-source", "own"}
    assert entries["by-meta"].target_instance_id == "echo"
    assert entries["by-meta"].target_module_type == t.MODULE_TYPE_ALB
    assert entries["by-meta"].route.headers["x-a"] == "1"
    assert entries["by-meta"].route.metadata["target"] == "echo"
    assert entries["by-source"].target_instance_id == "ext"
    assert entries["by-source"].target_module_type == t.MODULE_TYPE_AILB
    assert entries["by-source"].route.path_pattern == "/v1"
    assert entries["own"].target_instance_id == "echo"
    assert entries["cfg-route"].target_instance_id == "echo"
    assert entries["cfg-route"].route.protocol == t.PROTOCOL_HTTPS
    assert all(e.created_at.seconds > 0 and not e.HasField("last_used") for e in entries.values())

    assert set(table(h, protocol_filter=t.PROTOCOL_HTTP)) == {"by-meta", "by-source"}
    assert set(table(h, destination_filter="EXAMPLE.COM")) == {"by-meta", "own"}
    q = t.Query(filters=[t.Filter(field="target_instance_id", operator="eq", value="echo")],
                sort_by="priority", sort_desc=True)
    r = h.nlb.GetRoutingTable(n.GetRoutingTableRequest(query=q), timeout=T)
    assert [e.route.route_id for e in r.entries] == ["by-meta", "cfg-route", "own"]
    assert r.total_entries == 3

    # Updating an API route in place; the config's route is not the API's to change.
    r = update_routing(h, [api_route(t, "by-meta", "ext", priority=11)])
    assert r.success and table(h)["by-meta"].target_instance_id == "ext"
    r = update_routing(h, [api_route(t, "cfg-route", "echo", priority=99)])
    assert not r.success and any("config file" in e for e in r.validation_errors)
    assert table(h)["cfg-route"].route.priority == 3


def test_update_routing_validate_only_and_replace_all(start_host):
    h = nlb_host(start_host, extra={"routes": [{"id": "cfg", "target": "echo"}]})
    _, t = stubs(h)
    registered(h, "ext", routes=[t.Route(route_id="mod-route")])
    r = update_routing(h, [api_route(t, f"r{i}", "echo", priority=i) for i in range(1, 4)])
    assert r.success and r.routes_updated == 3

    r = update_routing(h, [api_route(t, "r9", "echo"), api_route(t, "r1", "echo", priority=50)],
                       validate_only=True)
    assert r.success and r.routes_updated == 0 and "validate_only" in r.message
    entries = table(h)
    assert "r9" not in entries and entries["r1"].route.priority == 1

    r = update_routing(h, [api_route(t, "r2", "ext", priority=20), api_route(t, "r4", "echo")],
                       replace_all=True)
    assert r.success and r.routes_updated == 2, r.message
    entries = table(h)
    # replace_all swaps the API routes only: the config's and the module's stay
    assert set(entries) == {"cfg", "mod-route", "r2", "r4"}
    assert entries["r2"].route.priority == 20 and entries["r2"].target_instance_id == "ext"

    # replace_all + validate_only changes nothing either
    r = update_routing(h, [api_route(t, "r5", "echo")], replace_all=True, validate_only=True)
    assert r.success and set(table(h)) == {"cfg", "mod-route", "r2", "r4"}


def test_update_routing_invalid_routes_apply_nothing(start_host):
    h = nlb_host(start_host, extra={"routes": [{"id": "cfg", "target": "echo"}]})
    _, t = stubs(h)
    registered(h, "ext", routes=[t.Route(route_id="mod-route")])
    assert update_routing(h, [api_route(t, "existing", "echo", priority=1)]).success
    before = {k: (e.route.priority, e.target_instance_id) for k, e in table(h).items()}

    r = update_routing(h, [
        api_route(t, "good", "echo"),
        api_route(t, "existing", "echo", priority=42),
        api_route(t, "bad-cidr", "echo", source_pattern="10.0.0.0/33"),
        api_route(t, "bad-cidr6", "echo", source_pattern="2001:db8::/129"),
        api_route(t, "bad-port", "echo", destination_port=70000),
        api_route(t, "bad-target", "nobody"),
        t.Route(route_id="no-target"),
        api_route(t, "cfg", "echo"),
        api_route(t, "mod-route", "echo"),
        api_route(t, "good", "echo"),
        api_route(t, "bad path", "echo", path_pattern="nope"),
    ])
    assert not r.success and r.routes_updated == 0
    assert r.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    errs = "\n".join(r.validation_errors)
    for needle in ["'bad-cidr'", "'bad-cidr6'", "'bad-port'", "70000", "'bad-target'", "nobody",
                   "'no-target'", "'cfg'", "'mod-route'", "listed twice", "route_id contains ' '",
                   "path_pattern"]:
        assert needle in errs, (needle, errs)
    assert not any("'existing'" in e for e in r.validation_errors)
    after = {k: (e.route.priority, e.target_instance_id) for k, e in table(h).items()}
    assert after == before  # nothing partially applied
    # the owning module may take over its own route, but not aim it elsewhere
    r = update_routing(h, [t.Route(route_id="mod-route", priority=4)], source_instance_id="ext")
    assert r.success and table(h)["mod-route"].route.priority == 4
    r = update_routing(h, [api_route(t, "mod-route", "echo")], source_instance_id="ext")
    assert not r.success and "only target" in r.validation_errors[0], r.validation_errors
    assert table(h)["mod-route"].target_instance_id == "ext"


# ------------------------------------------------------------------ RouteRequest

def test_route_request_matching_and_priority(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    targets = ["m-default", "m-v4", "m-v6", "m-host", "m-path", "m-hdr", "m-top"]
    for i, iid in enumerate(targets):
        registered(h, iid, address=f"10.50.0.{i + 1}:80{i:02d}",
                   module_type=t.MODULE_TYPE_NLB if iid == "m-top" else t.MODULE_TYPE_ALB)
    assert update_routing(h, [
        api_route(t, "default", "m-default", priority=1),
        api_route(t, "cidr4", "m-v4", source_pattern="10.1.0.0/16", priority=50),
        api_route(t, "cidr6", "m-v6", source_pattern="2001:db8::/32", priority=50),
        # prefixes that end inside a byte
        api_route(t, "cidr4-17", "m-top", source_pattern="10.1.128.0/17", priority=60),
        api_route(t, "cidr6-33", "m-top", source_pattern="2001:db8:8000::/33", priority=60),
        api_route(t, "wild", "m-host", destination_pattern="*.example.com", priority=40),
        api_route(t, "path", "m-path", path_pattern="/api/", priority=30),
        api_route(t, "hdr", "m-hdr", headers={"X-Tenant": "blue"}, priority=20),
        api_route(t, "top", "m-top", protocol=t.PROTOCOL_HTTPS, destination_port=9443,
                  priority=100),
    ]).success

    def target(**kw):
        r = route_req(h, **kw)
        assert r.routed, r.message
        return r.target_instance_id

    assert target(source_pattern="10.1.2.3") == "m-v4"
    assert target(source_pattern="10.1.127.255") == "m-v4"
    assert target(source_pattern="10.1.128.0") == "m-top"
    assert target(source_pattern="2001:db8:8000::1") == "m-top"
    assert target(source_pattern="2001:db8:7fff:ffff::1") == "m-v6"
    assert target(source_pattern="::ffff:10.1.100.7") == "m-v4"  # dual-stack view
    assert target(source_pattern="::ffff:10.1.200.7") == "m-top"
    assert target(source_pattern="10.2.0.1") == "m-default"
    assert target(source_pattern="2001:db8:1::5") == "m-v6"
    assert target(source_pattern="2001:db9::5") == "m-default"
    assert target(destination_pattern="a.example.com") == "m-host"
    assert target(destination_pattern="X.Y.EXAMPLE.COM") == "m-host"
    assert target(destination_pattern="example.com") == "m-default"
    assert target(destination_pattern="badexample.com") == "m-default"
    assert target(path_pattern="/api/users") == "m-path"
    assert target(path_pattern="/apix") == "m-default"
    assert target(headers={"x-tenant": "blue"}) == "m-hdr"
    assert target(headers={"x-tenant": "Blue"}) == "m-default"
    assert target(protocol=t.PROTOCOL_HTTPS, destination_port=9443,
                  source_pattern="10.1.2.3") == "m-top"
    assert target(protocol=t.PROTOCOL_HTTP, destination_port=9443,
                  source_pattern="10.1.2.3") == "m-v4"
    assert target(source_pattern="10.1.2.3", destination_pattern="a.example.com",
                  path_pattern="/api/x") == "m-v4"
    assert target(destination_pattern="a.example.com", path_pattern="/api/x") == "m-host"

    r = route_req(h, protocol=t.PROTOCOL_HTTPS, destination_port=9443)
    assert r.priority == 100 and r.target_address == "10.50.0.7:8006"
    assert r.target_module_type == t.MODULE_TYPE_NLB and "top" in r.message

    # Nothing matches once the catch-all is gone: NOT_FOUND in the error field.
    assert update_routing(h, [api_route(t, "cidr4", "m-v4", source_pattern="10.1.0.0/16")],
                          replace_all=True).success
    r = route_req(h, source_pattern="192.168.1.1")
    assert not r.routed and r.error.code == t.STATUS_CODE_NOT_FOUND
    assert "192.168.1.1" in r.message
    e = rpc_error(h.nlb.RouteRequest, n.RouteRequestRequest(
        route=t.Route(source_pattern="10.0.0.0/8")))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    e = rpc_error(h.nlb.RouteRequest, n.RouteRequestRequest(route=t.Route(destination_port=70000)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    e = rpc_error(h.nlb.RouteRequest, n.RouteRequestRequest())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_route_request_equal_priority_keeps_insertion_order(start_host):
    h = nlb_host(start_host)
    _, t = stubs(h)
    registered(h, "first")
    registered(h, "second")
    assert update_routing(h, [api_route(t, "z-first", "first", priority=5),
                              api_route(t, "a-second", "second", priority=5)]).success
    assert route_req(h).target_instance_id == "first"
    assert update_routing(h, [api_route(t, "a-second", "second", priority=6)]).success
    assert route_req(h).target_instance_id == "second"


def test_route_request_falls_through_unavailable_targets(start_host):
    # (One live mptest instance per host: a second would clash on /mptest.Echo/*.)
    h = nlb_host(start_host, instances={
        "sick": {"plugin": "mptest", "settings": {"handles_port": 8080, "health": "unhealthy"}}})
    n, m, t = h.pb.nlb_pb2, h.pb.module_pb2, h.pb.types_pb2
    registered(h, "gone")
    reg = registered(h, "ext", address="10.7.0.1:8080", module_type=t.MODULE_TYPE_NLB)
    assert update_routing(h, [
        api_route(t, "to-sick", "sick", destination_port=8080, priority=30),
        api_route(t, "to-gone", "gone", destination_port=8080, priority=20),
        api_route(t, "to-ext", "ext", destination_port=8080, priority=10),
    ]).success
    assert h.nlb.UnregisterModule(n.UnregisterModuleRequest(instance_id="gone"),
                                  timeout=T).success
    r = route_req(h, destination_port=8080)
    assert r.routed and r.target_instance_id == "ext" and r.priority == 10
    assert r.target_address == "10.7.0.1:8080" and r.target_module_type == t.MODULE_TYPE_NLB

    # With the last one unavailable too, nothing can take it: UNAVAILABLE, with reasons.
    assert heartbeat(h, "ext", reg, status=t.HEALTH_STATUS_UNHEALTHY).acknowledged
    r = route_req(h, destination_port=8080)
    assert not r.routed and r.error.code == t.STATUS_CODE_UNAVAILABLE
    assert "sick is unhealthy" in r.message, r.message
    assert "gone is neither a loaded instance nor a registered module" in r.message
    assert "ext reports itself unhealthy" in r.message

    # The sick instance recovering takes the traffic (its route ranks first) ...
    u = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="sick", config=t.ConfigUpdate(
        config_data=b"handles_port = 8080;\n")), timeout=T)
    assert u.success, u.message

    def sick_chosen():
        r = route_req(h, destination_port=8080)
        return r if r.target_instance_id == "sick" else None

    r = eventually(sick_chosen, "recovered instance chosen")  # health is re-read every 0.5 s
    assert r.target_address == "inproc:sick"
    assert r.target_module_type == t.MODULE_TYPE_ALB and r.priority == 30
    # ... until its plugin declines the port: then the next available one.
    u = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="sick", config=t.ConfigUpdate(
        config_data=b"handles_port = 9999;\n")), timeout=T)
    assert u.success, u.message
    assert heartbeat(h, "ext", reg, status=t.HEALTH_STATUS_HEALTHY).acknowledged
    assert route_req(h, destination_port=8080).target_instance_id == "ext"
    assert heartbeat(h, "ext", reg, status=t.HEALTH_STATUS_STOPPING).acknowledged
    r = route_req(h, destination_port=8080)
    assert not r.routed and "sick declined" in r.message and "9999" in r.message


def test_route_request_dry_run_is_not_counted(start_host):
    h = nlb_host(start_host)
    _, t = stubs(h)
    assert update_routing(h, [api_route(t, "web", "echo", destination_port=8080)]).success
    assert status(h).total_requests == 0
    for _ in range(3):
        r = route_req(h, destination_port=8080, dry_run=True)
        assert r.routed and r.target_instance_id == "echo" and "would route" in r.message
    route_req(h, destination_port=1, dry_run=True)  # unmatched dry run: not refused either
    assert status(h).total_requests == 0
    points, _ = host_metrics(h, ["nlb_routed_total", "nlb_refused_total"])
    assert points == {"nlb_routed_total": 0, "nlb_refused_total": 0}
    assert not table(h)["web"].HasField("last_used")

    before = time.time()
    for _ in range(2):
        assert route_req(h, destination_port=8080).routed
    assert not route_req(h, destination_port=1).routed
    assert status(h).total_requests == 2
    points, _ = host_metrics(h, ["nlb_routed_total", "nlb_refused_total"])
    assert points == {"nlb_routed_total": 2, "nlb_refused_total": 1}
    assert table(h)["web"].last_used.seconds >= int(before) - 1


def test_validate_route(start_host):
    h = nlb_host(start_host, instances={
        "web": {"plugin": "mptest", "settings": {"handles_port": 8080}}})
    n, m, t = h.pb.nlb_pb2, h.pb.module_pb2, h.pb.types_pb2

    def validate(**kw):
        return h.nlb.ValidateRoute(n.ValidateRouteRequest(route=t.Route(**kw)), timeout=T)

    r = validate(route_id="probe", destination_port=8080)
    assert r.valid and not r.validation_errors
    assert r.has_handler and list(r.capable_instances) == ["web"]
    r = validate(route_id="probe", destination_port=9090)
    assert r.valid and not r.has_handler and not r.capable_instances
    assert "8080" in r.details["verdict.web"] and "9090" in r.details["verdict.web"]

    # the plugin's verdict follows its live settings
    u = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="web", config=t.ConfigUpdate(
        config_data=b"handles_port = 9090;")), timeout=T)
    assert u.success, u.message
    assert list(validate(route_id="probe", destination_port=9090).capable_instances) == ["web"]
    assert not validate(route_id="probe", destination_port=8080).has_handler

    r = validate(route_id="bad", destination_port=70000, source_pattern="300.1.1.1/8",
                 path_pattern="x")
    assert not r.valid and len(r.validation_errors) == 3
    assert any("70000" in e for e in r.validation_errors)
    assert any("source_pattern" in e for e in r.validation_errors)
    assert any("path_pattern" in e for e in r.validation_errors)
    assert not validate(destination_port=9090).valid  # no route_id

    # An external module counts as capable through a routing entry that targets it.
    registered(h, "ext", routes=[t.Route(route_id="ext-5432", destination_port=5432)])
    r = validate(route_id="probe", destination_port=5432)
    assert r.has_handler and list(r.capable_instances) == ["ext"]
    assert r.details["matching_routes"] == "ext-5432"
    assert not validate(route_id="probe", destination_port=5433).has_handler


# ------------------------------------------------------------------ metrics

def test_report_metrics_then_get_metrics(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    registered(h, "ext", module_type=t.MODULE_TYPE_DBLB)
    registered(h, "quiet")
    r = h.nlb.ReportMetrics(n.ReportMetricsRequest(instance_id="ext", metrics=t.ModuleMetrics(
        metrics=[t.MetricDataPoint(name="qps", value=42.5, labels={"db": "main"}),
                 t.MetricDataPoint(name="errors", value=3)])), timeout=T)
    assert r.acknowledged and "2 data point" in r.message and r.processed_at.seconds > 0

    got = h.nlb.GetModuleMetrics(n.GetModuleMetricsRequest(instance_id="ext"), timeout=T)
    assert got.metrics.instance_id == "ext" and got.metrics.module_type == t.MODULE_TYPE_DBLB
    assert {p.name: p.value for p in got.metrics.metrics} == {"qps": 42.5, "errors": 3}
    assert got.metrics.metrics[0].labels["db"] == "main"
    assert got.metrics.collected_at.seconds > 0 and got.collected_at.seconds > 0
    got = h.nlb.GetModuleMetrics(n.GetModuleMetricsRequest(instance_id="ext",
                                                           metric_names=["errors"]), timeout=T)
    assert [(p.name, p.value) for p in got.metrics.metrics] == [("errors", 3)]
    # nothing reported yet: empty, not an error
    got = h.nlb.GetModuleMetrics(n.GetModuleMetricsRequest(instance_id="quiet"), timeout=T)
    assert got.metrics.instance_id == "quiet" and not got.metrics.metrics

    # a second report replaces the first
    assert h.nlb.ReportMetrics(n.ReportMetricsRequest(instance_id="ext", metrics=t.ModuleMetrics(
        metrics=[t.MetricDataPoint(name="qps", value=7)])), timeout=T).acknowledged

    points, full = host_metrics(h)
    assert points["modules_registered"] == 2 and points["instances_loaded"] == 1
    assert points["process_rss_mb"] > 1 and full.collected_at.seconds > 0
    mm = full.module_metrics
    assert set(mm) == {"echo", "ext", "quiet"}
    assert {p.name: p.value for p in mm["ext"].metrics} == {"qps": 7}
    in_proc = {p.name: p.value for p in mm["echo"].metrics}
    assert in_proc["requests_total"] == 0 and in_proc["healthy"] == 1

    # In-process numbers move with real traffic through the plugin.
    echo = h.channel.unary_unary("/mptest.Echo/Echo", request_serializer=None,
                                 response_deserializer=None)
    for _ in range(4):
        echo(b"abc", timeout=T)
    got = h.nlb.GetModuleMetrics(n.GetModuleMetricsRequest(
        instance_id="echo", metric_names=["requests_total", "bytes_in_total"]), timeout=T)
    assert {p.name: p.value for p in got.metrics.metrics} == {"requests_total": 4,
                                                              "bytes_in_total": 12}
    # Reports about an in-process instance show next to its live numbers, never over them.
    r = h.nlb.ReportMetrics(n.ReportMetricsRequest(instance_id="echo", metrics=t.ModuleMetrics(
        metrics=[t.MetricDataPoint(name="cache_hits", value=5),
                 t.MetricDataPoint(name="requests_total", value=999)])), timeout=T)
    assert r.acknowledged
    got = h.nlb.GetModuleMetrics(n.GetModuleMetricsRequest(
        instance_id="echo", metric_names=["requests_total", "cache_hits"]), timeout=T)
    assert sorted((p.name, p.value) for p in got.metrics.metrics) == \
        [("cache_hits", 5), ("requests_total", 4)]
    _, full = host_metrics(h)
    echo_points = [(p.name, p.value) for p in full.module_metrics["echo"].metrics]
    assert ("cache_hits", 5) in echo_points and ("requests_total", 999) not in echo_points

    points, full = host_metrics(h, ["routes_total", "qps"])
    assert set(points) == {"routes_total"}
    assert [p.name for p in full.module_metrics["ext"].metrics] == ["qps"]
    assert not full.module_metrics["echo"].metrics


def test_stream_nlb_metrics(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    registered(h, "ext")
    assert h.nlb.ReportMetrics(n.ReportMetricsRequest(instance_id="ext", metrics=t.ModuleMetrics(
        metrics=[t.MetricDataPoint(name="qps", value=9)])), timeout=T).acknowledged
    assert update_routing(h, [api_route(t, "web", "echo", destination_port=8080)]).success

    stream = h.nlb.StreamNLBMetrics(n.StreamNLBMetricsRequest(
        interval_seconds=1, include_modules=True,
        metric_names=["nlb_routed_total", "qps", "requests_total"]), timeout=30 * SLOWDOWN)
    routed, stamps = [], []
    start = time.monotonic()
    for msg in stream:
        stamps.append(time.monotonic() - start)
        routed.append({p.name: p.value for p in msg.metrics}["nlb_routed_total"])
        assert set(msg.module_metrics) == {"echo", "ext"}
        assert [(p.name, p.value) for p in msg.module_metrics["ext"].metrics] == [("qps", 9)]
        assert [p.name for p in msg.module_metrics["echo"].metrics] == ["requests_total"]
        assert msg.timestamp.seconds > 0
        assert route_req(h, destination_port=8080).routed
        if len(routed) == 3:
            stream.cancel()
            break
    assert routed == [0, 1, 2]  # each message sees the request routed after the previous
    slack = 1 if not VALGRIND else 3
    assert stamps[0] < 0.5 * slack
    for a, b in zip(stamps, stamps[1:]):
        assert 0.8 < b - a < 1.6 * slack, stamps
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    # the host ends its side too: only the asking call is left active
    eventually(lambda: host_metrics(h, ["grpc_calls_active"])[0]["grpc_calls_active"] == 1,
               "stream ended on the host")

    # without include_modules there are no per-module metrics
    stream = h.nlb.StreamNLBMetrics(n.StreamNLBMetricsRequest(interval_seconds=1),
                                    timeout=30 * SLOWDOWN)
    msg = next(stream)
    stream.cancel()
    assert not msg.module_metrics
    assert {"nlb_routed_total", "grpc_calls_total", "modules_registered"} <= \
        {p.name for p in msg.metrics}

    e = rpc_error(lambda req, timeout: list(h.nlb.StreamNLBMetrics(req, timeout=timeout)),
                  n.StreamNLBMetricsRequest(interval_seconds=3601))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the cancelled streams left the host in working order
    assert status(h).total_requests == 3


def test_stream_open_at_shutdown(start_host):
    h = nlb_host(start_host)
    n, _ = stubs(h)
    stream = h.nlb.StreamNLBMetrics(n.StreamNLBMetricsRequest(interval_seconds=1,
                                                              include_modules=True),
                                    timeout=30 * SLOWDOWN)
    assert next(stream).timestamp.seconds > 0
    assert h.stop() == 0


# ------------------------------------------------------------------ health and status

def test_check_health(start_host):
    h = nlb_host(start_host, instances={
        "well": {"plugin": "mptest", "settings": {"health": "degraded"}}})
    n, m, t = h.pb.nlb_pb2, h.pb.module_pb2, h.pb.types_pb2
    reg = registered(h, "ext")
    reg2 = registered(h, "ext-2")
    assert heartbeat(h, "ext-2", reg2, status=t.HEALTH_STATUS_DEGRADED).acknowledged
    r = h.nlb.CheckHealth(n.CheckHealthRequest(), timeout=T)
    assert r.status == t.HEALTH_STATUS_HEALTHY and r.message == "healthy"  # degraded != down
    assert not r.module_health and r.checked_at.seconds > 0
    assert r.checks["instances"] == "1 loaded" and r.checks["grpc"] == "ok"
    assert r.checks["external_modules"] == "2 in rotation"

    r = h.nlb.CheckHealth(n.CheckHealthRequest(check_modules=True, deep_check=True), timeout=T)
    assert dict(r.module_health) == {"well": t.HEALTH_STATUS_DEGRADED,
                                     "ext": t.HEALTH_STATUS_HEALTHY,
                                     "ext-2": t.HEALTH_STATUS_DEGRADED}
    assert heartbeat(h, "ext", reg).acknowledged

    u = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id="well", config=t.ConfigUpdate(
        config_data=b'health = "unhealthy";')), timeout=T)
    assert u.success, u.message
    r = h.nlb.CheckHealth(n.CheckHealthRequest(check_modules=True), timeout=T)
    assert r.status == t.HEALTH_STATUS_DEGRADED
    assert r.module_health["well"] == t.HEALTH_STATUS_UNHEALTHY
    assert "well" in r.message and "1 unhealthy" in r.checks["instances"]
    assert status(h).status == t.HEALTH_STATUS_DEGRADED


def test_get_nlb_status(start_host):
    h = nlb_host(start_host, instances={
        "a": {"plugin": "mptest", "settings": {"handles_port": 8080}}})
    n, t = stubs(h)
    started = time.time()
    s = status(h)
    assert s.status == t.HEALTH_STATUS_HEALTHY and s.version
    assert 0 < s.started_at.seconds <= started + 1
    assert s.registered_modules == 1 and dict(s.modules_by_type) == {"MODULE_TYPE_ALB": 1}
    assert not s.modules and s.total_requests == 0 and s.active_connections == 0
    assert s.details["config"] == str(h.config_path)
    assert s.details["strategy"] == "round-robin"

    r1 = registered(h, "db", module_type=t.MODULE_TYPE_DBLB)
    r2 = registered(h, "ai", module_type=t.MODULE_TYPE_AILB)
    registered(h, "b")
    heartbeat(h, "db", r1, stats=t.ModuleStats(active_connections=7))
    heartbeat(h, "ai", r2, stats=t.ModuleStats(active_connections=5))
    assert update_routing(h, [api_route(t, "x", "a", destination_port=8080)]).success
    route_req(h, destination_port=8080)
    s = status(h, include_modules=True)
    assert s.registered_modules == 4
    assert dict(s.modules_by_type) == {"MODULE_TYPE_ALB": 2, "MODULE_TYPE_DBLB": 1,
                                       "MODULE_TYPE_AILB": 1}
    assert [mod.instance_id for mod in s.modules] == ["a", "db", "ai", "b"]
    assert s.active_connections == 12 and s.total_requests == 1


# ------------------------------------------------------------------ config

def test_get_nlb_config(start_host):
    h = nlb_host(start_host)
    n, _ = stubs(h)
    r = h.nlb.GetNLBConfig(n.GetNLBConfigRequest(), timeout=T)
    assert len(r.configs) == 1
    c = r.configs[0]
    on_disk = h.config_path.read_bytes()
    assert c.config_data == on_disk
    assert c.checksum == "sha256:" + hashlib.sha256(on_disk).hexdigest()
    assert c.config_type == "libconfig" and c.metadata["path"] == str(h.config_path)
    assert c.updated_at.seconds > 0 and r.last_updated.seconds > 0
    r = h.nlb.GetNLBConfig(n.GetNLBConfigRequest(config_type="libconfig"), timeout=T)
    assert r.configs[0].config_data == on_disk
    assert not h.nlb.GetNLBConfig(n.GetNLBConfigRequest(config_type="yaml"), timeout=T).configs


def render(h, **kw):
    kw.setdefault("host", FAST_STOP)
    return mphelpers.render_config(h.dir, h.port, **kw).encode()


def update_config(h, data, **kw):
    n, t = stubs(h)
    return h.nlb.UpdateNLBConfig(n.UpdateNLBConfigRequest(
        config=t.ConfigUpdate(config_data=data, **kw.pop("fields", {})), **kw), timeout=T)


def current_config(h):
    n, _ = stubs(h)
    return h.nlb.GetNLBConfig(n.GetNLBConfigRequest(), timeout=T).configs[0].config_data


ECHO = {"echo": {"plugin": "mptest", "settings": {"handles_port": 8080}}}


def test_update_nlb_config_validation(start_host):
    h = nlb_host(start_host)
    _, t = stubs(h)
    original = current_config(h)
    good = render(h, instances=ECHO)

    lines = good.decode().splitlines()
    broken = "\n".join(lines + ["", "oops = ;", ""]).encode()
    r = update_config(h, broken, validate_only=True)
    assert not r.success and not r.validation_passed
    assert r.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    assert re.search(rf"<UpdateNLBConfig>:{len(lines) + 2}:", r.validation_errors[0]), \
        r.validation_errors

    bad_cidr = good + (b'routes = (\n  { id = "r"; target = "echo";\n'
                       b'    source = "10.0.0.0/99"; }\n);\n')
    r = update_config(h, bad_cidr, validate_only=True)
    assert not r.validation_passed
    assert re.search(rf":{len(lines) + 3}:.*10\.0\.0\.0/99", r.validation_errors[0]), \
        r.validation_errors

    for inc in (b'@include "/etc/passwd"\n', b'  \t@include "other.conf"\n'):
        r = update_config(h, good + inc)
        assert not r.success and any("@include" in e for e in r.validation_errors)
    r = update_config(h, good, fields={"checksum": "sha256:" + "0" * 64})
    assert not r.success and "checksum" in r.validation_errors[0]
    r = update_config(h, good, fields={"config_type": "yaml"})
    assert not r.success and "yaml" in r.validation_errors[0]
    r = update_config(h, b"")
    assert not r.success and "empty" in r.validation_errors[0]
    r = update_config(h, b"host: { };\x00")
    assert not r.success and "NUL" in r.validation_errors[0]

    # A valid config with validate_only changes nothing.
    bigger = render(h, instances={**ECHO, "extra": {"plugin": "mptest", "settings": {}}})
    r = update_config(h, bigger, validate_only=True,
                      fields={"checksum": "sha256:" + hashlib.sha256(bigger).hexdigest()})
    assert r.success and r.validation_passed and not r.requires_restart, r.message
    assert list(modules(h)) == ["echo"]
    assert current_config(h) == original


def test_update_nlb_config_applies(start_host):
    # Starts without instances: a second live mptest instance would clash on its methods.
    h = nlb_host(start_host, instances={}, host={"autoload": False})
    n, t = stubs(h)
    assert list(modules(h)) == []
    new = render(h, host={**FAST_STOP, "autoload": False},
                 instances={"added": {"plugin": "mptest", "settings": {"handles_port": 9000}}},
                 extra={"routes": [{"id": "cfg-added", "target": "added", "destination_port": 9000,
                                    "priority": 5}]})
    r = update_config(h, new)
    assert r.success and r.validation_passed and not r.requires_restart, r.message
    assert list(modules(h)) == ["added"]
    assert table(h)["cfg-added"].target_instance_id == "added"
    rr = route_req(h, destination_port=9000)
    assert rr.routed and rr.target_instance_id == "added"
    got = h.nlb.GetNLBConfig(n.GetNLBConfigRequest(), timeout=T).configs[0]
    assert got.config_data == new
    assert got.checksum == "sha256:" + hashlib.sha256(new).hexdigest()

    # and back: the instance and its config route go away
    r = update_config(h, render(h, host={**FAST_STOP, "autoload": False}, instances={}))
    assert r.success, r.message
    assert list(modules(h)) == [] and "cfg-added" not in table(h)
    assert not route_req(h, destination_port=9000).routed


def test_update_nlb_config_requires_restart(start_host):
    h = nlb_host(start_host)
    other = f"127.0.0.1:{mphelpers.free_port()}"
    moved = render(h, instances=ECHO, grpc={"address": other})
    r = update_config(h, moved, validate_only=True)
    assert r.success and r.validation_passed and r.requires_restart
    assert "grpc.address" in r.message

    r = update_config(h, render(h, instances=ECHO, host={**FAST_STOP, "workers": 3}),
                      validate_only=True)
    assert r.requires_restart and "host.workers" in r.message
    r = update_config(h, render(h, instances=ECHO), validate_only=True)
    assert r.success and not r.requires_restart

    # Applied anyway: accepted, flagged, and the server keeps listening where it was.
    r = update_config(h, moved)
    assert r.success and r.requires_restart and "grpc.address" in r.message
    assert current_config(h) == moved
    assert list(modules(h)) == ["echo"]


# ------------------------------------------------------------------ load

def test_rebalance_load(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    reg = registered(h, "ext")
    heartbeat(h, "ext", reg, stats=t.ModuleStats(active_connections=9))

    r = h.nlb.RebalanceLoad(n.RebalanceLoadRequest(strategy="random-ish"), timeout=T)
    assert not r.success and r.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    assert "random-ish" in r.message
    assert status(h).details["strategy"] == "round-robin"

    r = h.nlb.RebalanceLoad(n.RebalanceLoadRequest(strategy="least-conn", force=True), timeout=T)
    assert r.success, r.message
    assert dict(r.previous_distribution) == {"echo": 0, "ext": 9}
    assert dict(r.new_distribution) == {"echo": 0, "ext": 9}
    assert status(h).details["strategy"] == "least-conn"

    r = h.nlb.RebalanceLoad(n.RebalanceLoadRequest(strategy="weighted",
                                                   target_instances=["ext"]), timeout=T)
    assert r.success and dict(r.previous_distribution) == {"ext": 9}
    assert status(h).details["strategy"] == "weighted"
    # no strategy: keep the current one
    r = h.nlb.RebalanceLoad(n.RebalanceLoadRequest(), timeout=T)
    assert r.success and status(h).details["strategy"] == "weighted"


def test_get_load_distribution(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    r1 = registered(h, "ext-1", max_connections=100)
    r2 = registered(h, "db-1", module_type=t.MODULE_TYPE_DBLB)
    heartbeat(h, "ext-1", r1, stats=t.ModuleStats(active_connections=10, cpu_usage_percent=12.5,
                                                   memory_usage_mb=256, avg_latency_ms=3.5))
    heartbeat(h, "db-1", r2, stats=t.ModuleStats(active_connections=30))
    echo = h.channel.unary_unary("/mptest.Echo/Echo", request_serializer=None,
                                 response_deserializer=None)
    for _ in range(20):
        echo(b"x", timeout=T)

    r = h.nlb.GetLoadDistribution(n.GetLoadDistributionRequest(), timeout=T)
    d = r.distribution
    assert set(d) == {"echo", "ext-1", "db-1"}
    assert d["ext-1"].instance_id == "ext-1" and d["ext-1"].active_connections == 10
    assert d["ext-1"].cpu_usage_percent == 12.5 and d["ext-1"].memory_usage_mb == 256
    assert d["ext-1"].avg_latency_ms == 3.5
    assert d["ext-1"].load_score == pytest.approx(0.1)        # 10 of 100
    assert d["db-1"].load_score == pytest.approx(0.03)        # 30 of a nominal 1000
    assert d["echo"].active_connections == 0 and d["echo"].memory_usage_mb > 1
    assert d["echo"].requests_per_second > 0
    loads = [0, 10, 30]
    mean = sum(loads) / 3
    cv = math.sqrt(sum((x - mean) ** 2 for x in loads) / 3) / mean
    assert 0 <= r.balance_score <= 1
    assert r.balance_score == pytest.approx(1 - cv)
    assert r.measured_at.seconds > 0

    r = h.nlb.GetLoadDistribution(n.GetLoadDistributionRequest(
        module_type_filter=t.MODULE_TYPE_DBLB), timeout=T)
    assert list(r.distribution) == ["db-1"] and r.balance_score == pytest.approx(1.0)

    # an even spread scores 1
    heartbeat(h, "db-1", r2, stats=t.ModuleStats(active_connections=10))
    r = h.nlb.GetLoadDistribution(n.GetLoadDistributionRequest(
        module_type_filter=t.MODULE_TYPE_ALB), timeout=T)
    assert set(r.distribution) == {"echo", "ext-1"}
    assert r.balance_score == pytest.approx(0.0)  # 0 and 10: as uneven as two can be


# ------------------------------------------------------------------ scaling

def test_trigger_scaling_in_process(start_host):
    h = nlb_host(start_host, host={"workers": 4})
    n, t = stubs(h)

    def scale(**kw):
        return h.nlb.TriggerScaling(n.TriggerScalingRequest(instance_id="echo", **kw), timeout=T)

    def workers():
        info = h.nlb.GetModuleInfo(n.GetModuleInfoRequest(instance_id="echo"), timeout=T)
        return info.details["workers_desired"]

    assert workers() == "all"
    r = scale(target_instances=2)
    assert r.success and r.scaling_action == "set"
    assert r.target_instances == 2 and r.current_instances == 2
    assert workers() == "2"
    r = scale(scaling_action="scale_up")
    assert r.success and r.target_instances == 3 and workers() == "3"
    r = scale(scaling_action="scale_down")
    assert r.target_instances == 2 and workers() == "2"
    r = scale(scaling_action="set", target_instances=10)
    assert r.success and r.target_instances == 4 and "bounded" in r.message
    r = scale(scaling_action="scale_down", config=t.ScalingConfig(min_instances=4, max_instances=4))
    assert r.target_instances == 4 and workers() == "4"

    for bad in [dict(scaling_action="sideways"), dict(scaling_action="set"),
                dict(scaling_action="scale_up",
                     config=t.ScalingConfig(min_instances=3, max_instances=2))]:
        r = scale(**bad)
        assert not r.success and r.error.code == t.STATUS_CODE_INVALID_ARGUMENT, bad
    assert workers() == "4"


def test_trigger_scaling_external_is_delivered_on_next_heartbeat(start_host):
    h = nlb_host(start_host)
    n, t = stubs(h)
    reg = registered(h, "ext")
    assert not heartbeat(h, "ext", reg).should_scale
    r = h.nlb.TriggerScaling(n.TriggerScalingRequest(instance_id="ext", scaling_action="scale_up",
                                                     target_instances=3), timeout=T)
    assert r.target_instances == 3 and r.scaling_action == "scale_up"
    assert "next heartbeat" in r.message
    hb = heartbeat(h, "ext", reg)
    assert hb.acknowledged and hb.should_scale
    assert dict(hb.instructions) == {"scaling_action": "scale_up", "target_instances": "3"}
    hb = heartbeat(h, "ext", reg)  # delivered once
    assert hb.acknowledged and not hb.should_scale and not hb.instructions

    r = h.nlb.TriggerScaling(n.TriggerScalingRequest(instance_id="ext",
                                                     scaling_action="scale_down"), timeout=T)
    assert r.target_instances == 0
    # a refused heartbeat does not consume it
    assert not heartbeat(h, "ext", "wrong").should_scale
    hb = heartbeat(h, "ext", reg)
    assert hb.should_scale and dict(hb.instructions) == {"scaling_action": "scale_down"}
