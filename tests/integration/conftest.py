# conftest.py — fixtures of the integration suite: Python stubs built from the spec and
# from the repo's protos, `start_host`, which runs the real marchproxy binary, and
# `nginx_backends`, real nginx servers to proxy to (mp_nginx.py).
# The machinery lives in mphelpers.py; this file only decides scopes and cleanup.
#
# Environment: MP_SRCDIR / MP_BUILDDIR (default: this checkout), MP_VALGRIND=1 to run the
# host under valgrind, MP_PROTOC / MP_GRPC_PYTHON_PLUGIN / MP_PROTOBUF_INCLUDE for tools.

import signal

import pytest

import mp_alb
import mp_nginx
import mphelpers


@pytest.fixture(scope="session")
def spec_stubs(tmp_path_factory):
    """Stubs generated from tests/spec/*.md (via spec2proto) plus grpc.health.v1, imported:
    spec_stubs.module_pb2, .module_pb2_grpc, .nlb_pb2, .types_pb2, .cluster_pb2, ...,
    .health_pb2, .health_pb2_grpc. These are what the tests talk to the host with."""
    return mphelpers.build_spec_stubs(tmp_path_factory.mktemp("spec_stubs"),
                                      import_modules=True)


@pytest.fixture(scope="session")
def repo_stubs(tmp_path_factory):
    """Stubs generated from $MP_SRCDIR/proto. Descriptors only (.files, .pool,
    .message_class()): see mphelpers.StubSet for why they are not imported."""
    return mphelpers.build_repo_stubs(tmp_path_factory.mktemp("repo_stubs"))


@pytest.fixture
def start_host(spec_stubs, tmp_path):
    """Factory that starts marchproxy processes for one test; returns mphelpers.Host.

    start_host(config=None, *, plugins=(), host=None, grpc=None, instances=None,
               extra=None, args=(), env=None, wait=True) -> Host

      config     complete libconfig text; {plugin_dir} {state_dir} {grpc_address}
                 {grpc_port} {host_dir} are filled in. Excludes host/grpc/instances/extra.
      plugins    .so paths (or (path, name) pairs) copied into plugin_dir, mode 0644.
      host, grpc dicts merged into the default host{} / grpc{} groups (None drops a key).
      instances  dict rendered as the instances{} group, e.g.
                 {"echo": {"plugin": "mptest", "settings": {"greeting": "hi"}}}.
      extra      more top-level settings: a dict (rendered, e.g. {"routes": [{...}]}) or
                 raw libconfig text (placeholders filled in).
      args       extra command-line arguments for marchproxy.
      env        extra environment variables for the host.
      wait       wait (15 s; 60 s under valgrind) for Health/Check("") == SERVING. With
                 wait=False, e.g. for a host expected to refuse its config, use
                 host.wait_exit() to collect the exit code.

    At teardown every host still running gets SIGTERM and must exit 0 within 10 s. A
    host that ended on its own without the test collecting its exit code (stop() or
    wait_exit()) fails the test too, since it means a crash nobody looked at.
    """
    hosts = []

    def _start(config=None, *, plugins=(), host=None, grpc=None, instances=None,
               extra=None, args=(), env=None, wait=True):
        directory = tmp_path / f"host{len(hosts)}"
        h = mphelpers.launch_host(directory, spec_stubs, config=config, plugins=plugins,
                                  host=host, grpc=grpc, instances=instances, extra=extra,
                                  args=args, env=env)
        hosts.append(h)
        if wait:
            h.wait_serving()
        return h

    yield _start

    problems = []
    try:
        for h in hosts:
            problems += _stop_at_teardown(h)
    finally:
        # Whatever went wrong above (even ^C), no host outlives its test.
        for h in hosts:
            h.kill()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def _stop_at_teardown(h):
    """Stops one host at the end of a test; returns what was wrong with how it ended."""
    if h.exit_seen:
        return []
    if not h.running:
        h.exit_seen = True
        return [f"host pid {h.pid} ended during the test and nobody looked: "
                f"{mphelpers.describe_exit(h.proc.returncode)}; log tail:\n{h.log_tail()}"]
    try:
        code = h.stop(signal.SIGTERM, timeout=10)
    except pytest.fail.Exception as e:
        return [f"host pid {h.pid} did not stop on SIGTERM: {e}"]
    if code != 0:
        return [f"host pid {h.pid} stopped with {mphelpers.describe_exit(code)} after "
                f"SIGTERM; log tail:\n{h.log_tail()}"]
    return []


@pytest.fixture
def nginx_backends(tmp_path):
    """Factory that starts real nginx backends on loopback for one test:
    nginx_backends(name, **options) -> mp_nginx.Nginx (options: see mp_nginx.start_nginx).

    At teardown each one still running is stopped (SIGTERM, exit 0 expected). One that
    ended during the test without the test stopping it fails the test."""
    started = []

    def _start(name, **options):
        n = mp_nginx.start_nginx(tmp_path, name, **options)
        started.append(n)
        return n

    yield _start

    problems = []
    try:
        for n in started:
            if n.stopped:
                continue
            if not n.running:
                problems.append(f"nginx {n.name} ended during the test "
                                f"({mphelpers.describe_exit(n.proc.returncode)}); error log "
                                f"tail:\n{n.error_log_text()[-1500:]}")
                continue
            code = n.stop()
            if code != 0:
                problems.append(f"nginx {n.name} stopped with "
                                f"{mphelpers.describe_exit(code)}")
    finally:
        for n in started:
            n.kill()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def alb_so():
    """Path of the alb.so this build produced."""
    return mp_alb.alb_so_path()
