# test_smoke.py — the host starts with the default generated config, answers the
# standard health check, and stops cleanly on SIGTERM (checked by the fixture).


def test_host_serves_health(start_host):
    host = start_host()
    resp = host.health.Check(host.pb.health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == host.pb.health_pb2.HealthCheckResponse.SERVING
