# test_plugin_tables.py — ModuleService route tables reach the plugin (ABI 1.2
# routes_changed): every change, every new generation, and a plugin's refusal, which
# must fail the RPC and leave the previous table in force on both sides.

from mphelpers import test_plugin_path

T = 10


def stats(h, iid="echo"):
    m = h.pb.module_pb2
    return h.module.GetStats(m.GetStatsRequest(instance_id=iid), timeout=T).stats.custom_stats


def routes(h, t, *ids, **meta):
    return [t.Route(route_id=i, protocol=t.PROTOCOL_HTTP, destination_pattern=f"{i}.test",
                    metadata=meta) for i in ids]


def test_update_and_delete_reach_the_plugin(start_host):
    h = start_host(plugins=[test_plugin_path()], instances={"echo": {"plugin": "mptest"}})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    assert stats(h)["routes_seen"] == "0"
    r = h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="echo",
                                                    routes=routes(h, t, "a", "b")), timeout=T)
    assert r.success, r.message
    assert stats(h)["routes_seen"] == "2" and stats(h)["route_ids"] == "a,b"
    r = h.module.DeleteRoute(m.DeleteRouteRequest(instance_id="echo", route_id="a"), timeout=T)
    assert r.success, r.message
    assert stats(h)["route_ids"] == "b"


def test_refused_table_fails_the_call_and_keeps_the_old_one(start_host):
    h = start_host(plugins=[test_plugin_path()], instances={"echo": {"plugin": "mptest"}})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    ok = h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="echo",
                                                     routes=routes(h, t, "keep")), timeout=T)
    assert ok.success
    bad = h.module.UpdateRoutes(
        m.UpdateRoutesRequest(instance_id="echo", replace_all=True,
                              routes=routes(h, t, "evil", mptest_refuse="1")), timeout=T)
    assert not bad.success
    assert "refused on request" in bad.message and "route evil" in bad.message
    assert bad.error.code == t.STATUS_CODE_INVALID_ARGUMENT
    # the host's table and the plugin's are both the one from before
    got = h.module.GetRoutes(m.GetRoutesRequest(instance_id="echo"), timeout=T)
    assert [x.route_id for x in got.routes] == ["keep"]
    assert stats(h)["route_ids"] == "keep"


def test_new_generation_gets_the_table(start_host):
    h = start_host(plugins=[(test_plugin_path(), "mptest.so")],
                   instances={"echo": {"plugin": "mptest"}})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.UpdateRoutes(m.UpdateRoutesRequest(instance_id="echo",
                                                    routes=routes(h, t, "x", "y", "z")),
                              timeout=T)
    assert r.success
    h.install_plugin(test_plugin_path("mptest_v2"), "mptest.so")
    rr = h.module.Reload(m.ReloadRequest(instance_id="echo"), timeout=T)
    assert rr.success, rr.message
    st = h.module.GetStatus(m.GetStatusRequest(instance_id="echo"), timeout=T)
    assert st.instance.version.startswith("2.0.0+")
    assert stats(h)["route_ids"] == "x,y,z"
