# test_health_service.py — grpc.health.v1.Health as the host answers it: the process,
# its own services, each instance by id and each gRPC service a plugin registered.
# Status changes are made through ModuleService.UpdateConfig on the mptest instance.

import time

import grpc
import pytest

from mphelpers import SLOWDOWN, test_plugin_path

T = 10 * SLOWDOWN
FAST_STOP = {"drain_timeout_ms": 300}  # an idle client would hold SIGTERM for 5 s


def health_host(start_host, settings=None, iid="echo"):
    return start_host(plugins=[test_plugin_path()], host=FAST_STOP,
                      instances={iid: {"plugin": "mptest", "settings": settings or {}}})


def check(h, service):
    pb = h.pb.health_pb2
    return h.health.Check(pb.HealthCheckRequest(service=service), timeout=T).status


def set_health(h, iid, word):
    m, t = h.pb.module_pb2, h.pb.types_pb2
    r = h.module.UpdateConfig(m.UpdateConfigRequest(instance_id=iid, config=t.ConfigUpdate(
        config_data=f'health = "{word}";'.encode())), timeout=T)
    assert r.success, r.message


def test_check_host_and_own_services(start_host):
    h = health_host(start_host)
    st = h.pb.health_pb2.HealthCheckResponse
    for service in ("", "marchproxy.ModuleService", "marchproxy.NLBService"):
        assert check(h, service) == st.SERVING, service
    # an unhealthy instance does not take the host's own services down
    set_health(h, "echo", "unhealthy")
    for service in ("", "marchproxy.ModuleService", "marchproxy.NLBService"):
        assert check(h, service) == st.SERVING, service


def test_check_instances_by_id(start_host):
    well = health_host(start_host, iid="well")
    sick = health_host(start_host, {"health": "unhealthy"}, iid="sick")
    st = well.pb.health_pb2.HealthCheckResponse
    assert check(well, "well") == st.SERVING
    assert check(sick, "sick") == st.NOT_SERVING
    # degraded still serves
    set_health(well, "well", "degraded")
    assert check(well, "well") == st.SERVING
    set_health(sick, "sick", "healthy")
    assert check(sick, "sick") == st.SERVING


def test_check_plugin_service_follows_its_instance(start_host):
    h = health_host(start_host)
    st = h.pb.health_pb2.HealthCheckResponse
    assert check(h, "mptest.Echo") == st.SERVING
    set_health(h, "echo", "unhealthy")
    assert check(h, "mptest.Echo") == st.NOT_SERVING
    assert check(h, "echo") == st.NOT_SERVING
    set_health(h, "echo", "healthy")
    assert check(h, "mptest.Echo") == st.SERVING


def test_check_unknown_service_is_not_found(start_host):
    h = health_host(start_host)
    pb = h.pb.health_pb2
    for service in ("nobody.Home", "mptest", "mptest.Echo/Echo", "mptest.Ech", "ech"):
        with pytest.raises(grpc.RpcError) as e:
            h.health.Check(pb.HealthCheckRequest(service=service), timeout=T)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, service
        assert service in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        h.health.Check(pb.HealthCheckRequest(service="x" * 300), timeout=T)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_sends_current_status_then_changes(start_host):
    h = health_host(start_host)
    pb = h.pb.health_pb2
    st = pb.HealthCheckResponse
    stream = h.health.Watch(pb.HealthCheckRequest(service="echo"), timeout=30 * SLOWDOWN)
    start = time.monotonic()
    assert next(stream).status == st.SERVING
    assert time.monotonic() - start < 1 * SLOWDOWN  # at once, not after a period

    set_health(h, "echo", "unhealthy")
    changed = time.monotonic()
    assert next(stream).status == st.NOT_SERVING
    assert time.monotonic() - changed < 3 * SLOWDOWN

    set_health(h, "echo", "healthy")
    changed = time.monotonic()
    assert next(stream).status == st.SERVING
    assert time.monotonic() - changed < 3 * SLOWDOWN

    # degraded still serves: no message for it, so the next one is the real change
    set_health(h, "echo", "degraded")
    time.sleep(1.5)
    set_health(h, "echo", "unhealthy")
    assert next(stream).status == st.NOT_SERVING
    stream.cancel()
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert check(h, "") == st.SERVING  # the host is fine after the cancel


def test_watch_plugin_service_and_host(start_host):
    h = health_host(start_host)
    pb = h.pb.health_pb2
    st = pb.HealthCheckResponse
    svc = h.health.Watch(pb.HealthCheckRequest(service="mptest.Echo"), timeout=30 * SLOWDOWN)
    whole = h.health.Watch(pb.HealthCheckRequest(service=""), timeout=30 * SLOWDOWN)
    assert next(svc).status == st.SERVING
    assert next(whole).status == st.SERVING
    set_health(h, "echo", "unhealthy")
    assert next(svc).status == st.NOT_SERVING
    svc.cancel()
    whole.cancel()


def test_watch_unknown_service(start_host):
    h = health_host(start_host)
    pb = h.pb.health_pb2
    stream = h.health.Watch(pb.HealthCheckRequest(service="nobody.Home"), timeout=30 * SLOWDOWN)
    assert next(stream).status == pb.HealthCheckResponse.SERVICE_UNKNOWN
    stream.cancel()
