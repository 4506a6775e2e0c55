# test_grpc_tls.py — the gRPC control plane over TLS and mutual TLS, with certificates
# made by the openssl command for each test, and rotated on disk while the host runs.

import subprocess
import time

import grpc
import pytest

T = 10


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d, ca, name, cn, server):
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)


def secure_channel(host, ca_pem, client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=client[0] if client else None,
        certificate_chain=client[1] if client else None)
    return grpc.secure_channel(host.address, creds,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def health_ok(host, channel, timeout=T):
    stub = host.pb.health_pb2_grpc.HealthStub(channel)
    return stub.Check(host.pb.health_pb2.HealthCheckRequest(service=""), timeout=timeout)


def wait_tls_ready(host, channel):
    deadline = time.monotonic() + 15
    while True:
        try:
            return health_ok(host, channel, timeout=2)
        except grpc.RpcError:
            if time.monotonic() > deadline or not host.running:
                raise
            time.sleep(0.1)


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca1")
    make_ca(d, "ca2")
    make_cert(d, "ca1", "server1", "localhost", True)
    make_cert(d, "ca2", "server2", "localhost", True)
    make_cert(d, "ca1", "client", "operator", False)
    return d


def test_tls_only_and_rotation(start_host, pki):
    live_crt, live_key = pki / "live.crt", pki / "live.key"
    live_crt.write_bytes((pki / "server1.crt").read_bytes())
    live_key.write_bytes((pki / "server1.key").read_bytes())
    h = start_host(grpc={"tls": {"cert": str(live_crt), "key": str(live_key)}}, wait=False)
    ca1, ca2 = (pki / "ca1.crt").read_bytes(), (pki / "ca2.crt").read_bytes()
    wait_tls_ready(h, secure_channel(h, ca1))

    # a plaintext client gets nowhere
    plain = grpc.insecure_channel(h.address)
    with pytest.raises(grpc.RpcError):
        health_ok(h, plain, timeout=2)
    # a client that trusts another CA is refused
    with pytest.raises(grpc.RpcError):
        health_ok(h, secure_channel(h, ca2), timeout=3)

    # rotate: write the ca2-signed certificate in place; new connections get it
    live_crt.write_bytes((pki / "server2.crt").read_bytes())
    live_key.write_bytes((pki / "server2.key").read_bytes())
    deadline = time.monotonic() + 10
    while True:
        try:
            health_ok(h, secure_channel(h, ca2), timeout=3)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "rotated certificate never served"
            time.sleep(0.2)
    h.wait_log(r"TLS certificates reloaded")

    # a broken file keeps the working certificates
    live_crt.write_text("not a certificate\n")
    time.sleep(1.1)  # a different mtime
    health_ok(h, secure_channel(h, ca2), timeout=5)
    h.wait_log(r"TLS certificate reload failed .*keeping the previous certificates")


def test_mutual_tls_requires_client_certificate(start_host, pki):
    h = start_host(grpc={"tls": {"cert": str(pki / "server1.crt"),
                                 "key": str(pki / "server1.key"),
                                 "client_ca": str(pki / "ca1.crt")}}, wait=False)
    ca1 = (pki / "ca1.crt").read_bytes()
    client = ((pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes())
    r = wait_tls_ready(h, secure_channel(h, ca1, client))
    assert r.status == h.pb.health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError):
        health_ok(h, secure_channel(h, ca1), timeout=3)  # no client certificate


def test_unreadable_certificate_stops_start(start_host, pki):
    h = start_host(grpc={"tls": {"cert": str(pki / "missing.crt"),
                                 "key": str(pki / "server1.key")}}, wait=False)
    assert h.wait_exit(timeout=15) == 1
    assert "missing.crt" in h.log()
