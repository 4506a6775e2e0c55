# test_smoke.py — the host starts with the default generated config, answers the
# standard health check, and stops cleanly on SIGTERM (checked by the fixture).


def test_host_serves_health(start_host):
    host = start_host()
    resp = host.health.Check(host.pb.health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == host.pb.health_pb2.HealthCheckResponse.SERVING


def test_state_dir_parents_are_created(start_host, tmp_path):
    # A fresh install's state_dir (e.g. /usr/local/var/lib/marchproxy) may lack parents.
    nested = tmp_path / "var" / "lib" / "marchproxy"
    host = start_host(host={"state_dir": str(nested)})
    resp = host.health.Check(host.pb.health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == host.pb.health_pb2.HealthCheckResponse.SERVING
    assert (nested / "plugin-cache").is_dir()
    assert oct(nested.stat().st_mode & 0o777) == "0o700"
