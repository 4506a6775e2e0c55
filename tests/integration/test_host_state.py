# test_host_state.py — the host keeps what was changed over gRPC (instance routes and
# rate limits, NLB routes, external module registrations) in the LauraDB instance named
# by host.state_store, and reads it back at start: after a clean stop, and after
# SIGKILL (a write acknowledged over gRPC is durable).

import signal

import pytest

from mphelpers import BUILDDIR, test_plugin_path

T = 10


def lauradb_plugin():
    so = BUILDDIR / "plugins" / "lauradb" / ".libs" / "lauradb.so"
    if not so.exists():
        pytest.fail(f"{so} is not built (make all builds it)")
    return so


def state_host(start_host, **kw):
    return start_host(plugins=[test_plugin_path(), lauradb_plugin()],
                      host={"state_store": "lauradb"},
                      instances={"echo": {"plugin": "mptest"},
                                 "lauradb": {"plugin": "lauradb"}}, **kw)


def change_everything(h):
    m, t, n = h.pb.module_pb2, h.pb.types_pb2, h.pb.nlb_pb2
    r = h.module.UpdateRoutes(m.UpdateRoutesRequest(
        instance_id="echo",
        routes=[t.Route(route_id="r1", destination_pattern="a.test", priority=3,
                        headers={"x-k": "v"}, metadata={"upstream": "web"}),
                t.Route(route_id="r2", path_pattern="/api/")]), timeout=T)
    assert r.success, r.message
    r = h.module.SetRateLimit(m.SetRateLimitRequest(
        instance_id="echo", limit=t.RateLimit(limit_id="l1", target="*",
                                              requests_per_second=50, burst_size=10,
                                              enabled=True)), timeout=T)
    assert r.success, r.message
    r = h.nlb.UpdateRouting(n.UpdateRoutingRequest(routes=[
        t.Route(route_id="nlb-1", protocol=t.PROTOCOL_HTTP, destination_port=8080,
                metadata={"target": "echo"})]), timeout=T)
    assert r.success, r.message
    reg = h.nlb.RegisterModule(n.RegisterModuleRequest(
        instance=t.ModuleInstance(instance_id="ext-1", address="127.0.0.1:9999",
                                  module_type=t.MODULE_TYPE_DBLB, version="7"),
        initial_routes=[t.Route(route_id="ext-r", protocol=t.PROTOCOL_MYSQL,
                                destination_port=3306)],
        health_config=t.HealthCheckConfig(interval_seconds=30)), timeout=T)
    assert reg.success, reg.message
    return reg.registration_id


def assert_everything_back(h, reg_id):
    m, t, n = h.pb.module_pb2, h.pb.types_pb2, h.pb.nlb_pb2
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert [r.route_id for r in got.routes] == ["r1", "r2"]
    assert got.routes[0].headers["x-k"] == "v" and got.routes[0].priority == 3
    assert got.routes[0].metadata["upstream"] == "web"
    # the plugin got the restored table too
    st = h.module.GetStats(m.GetStatsRequest(instance_id="echo"), timeout=T).stats
    assert st.custom_stats["route_ids"] == "r1,r2"
    lim = h.module.GetRateLimits(m.GetRateLimitsRequest(instance_id="echo"), timeout=T)
    assert [(x.limit_id, x.requests_per_second, x.burst_size) for x in lim.limits] == \
        [("l1", 50, 10)]
    tab = h.nlb.GetRoutingTable(n.GetRoutingTableRequest(), timeout=T)
    ids = {e.route.route_id for e in tab.entries}
    assert {"nlb-1", "ext-r"} <= ids
    mods = {x.instance_id: x for x in
            h.nlb.ListModules(n.ListModulesRequest(), timeout=T).modules}
    assert mods["ext-1"].version == "7" and mods["ext-1"].address == "127.0.0.1:9999"
    # the module keeps its registration: its heartbeats are still accepted
    hb = h.nlb.Heartbeat(n.HeartbeatRequest(instance_id="ext-1", registration_id=reg_id,
                                            status=t.HEALTH_STATUS_HEALTHY), timeout=T)
    assert hb.acknowledged, hb.message


def test_state_survives_a_clean_restart(start_host):
    h = state_host(start_host)
    reg = change_everything(h)
    h.restart()
    assert_everything_back(h, reg)
    assert "read back from instance lauradb" in h.log()


def test_state_survives_sigkill(start_host):
    h = state_host(start_host)
    reg = change_everything(h)
    h.restart(sig=signal.SIGKILL)
    assert_everything_back(h, reg)


def test_deletions_are_kept_too(start_host):
    h = state_host(start_host)
    m = h.pb.module_pb2
    change_everything(h)
    assert h.module.DeleteRoute(m.DeleteRouteRequest(instance_id="echo", route_id="r1"),
                                timeout=T).success
    assert h.module.RemoveRateLimit(m.RemoveRateLimitRequest(instance_id="echo",
                                                             limit_id="l1"), timeout=T).success
    h.restart(sig=signal.SIGKILL)
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert [r.route_id for r in got.routes] == ["r2"]
    lim = h.module.GetRateLimits(m.GetRateLimitsRequest(instance_id="echo"), timeout=T)
    assert list(lim.limits) == []


def test_state_store_must_name_a_store(start_host):
    h = start_host(plugins=[test_plugin_path()], host={"state_store": "echo"},
                   instances={"echo": {"plugin": "mptest"}}, wait=False)
    code = h.wait_exit()
    assert code != 0
    assert "host.state_store 'echo'" in h.log() and "offers no state store" in h.log()
    assert str(h.config_path) + ":" in h.log()


def test_without_state_store_nothing_is_kept(start_host):
    h = start_host(plugins=[test_plugin_path()], instances={"echo": {"plugin": "mptest"}})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    assert h.module.UpdateRoutes(m.UpdateRoutesRequest(
        instance_id="echo", routes=[t.Route(route_id="gone")]), timeout=T).success
    h.restart()
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert list(got.routes) == []
