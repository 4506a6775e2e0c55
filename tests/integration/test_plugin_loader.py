# test_plugin_loader.py — the plugin loader, generations and blue/green, driven the way
# an operator does: drop .so files into plugin_dir, call Reload (or send SIGHUP), and
# look at the result over gRPC and in the process's own memory map.

import os
import re
import shutil
import threading
import time

import grpc
import pytest

from mphelpers import test_plugin_path

T = 10


def maps_of(host):
    with open(f"/proc/{host.pid}/maps") as f:
        return f.read()


def loaded_copies(host, expect=None, timeout=5):
    """Private plugin copies currently mapped into the host. With `expect`, wait (bounded)
    until that many remain: a retired generation is unloaded once the workers have
    moved to the next routing snapshot and its last call or connection ended."""
    deadline = time.monotonic() + timeout
    while True:
        copies = sorted({line.split()[-1] for line in maps_of(host).splitlines()
                         if "/plugin-cache/" in line})
        if expect is None or len(copies) == expect or time.monotonic() > deadline:
            return copies
        time.sleep(0.05)


def reload(host, instance_id=""):
    m = host.pb.module_pb2
    return host.module.Reload(m.ReloadRequest(instance_id=instance_id), timeout=T)


def active(host, iid="echo"):
    return host.module.GetActiveVersion(
        host.pb.module_pb2.GetActiveVersionRequest(instance_id=iid), timeout=T)


def version_call(host):
    return host.channel.unary_unary("/mptest.Echo/Version", request_serializer=None,
                                    response_deserializer=None)(b"", timeout=T)


def one_instance(start_host, **kw):
    return start_host(plugins=[test_plugin_path()],
                      instances={"echo": {"plugin": "mptest", "settings": {}}}, **kw)


def test_dropped_in_plugin_is_loaded_by_reload(start_host):
    h = start_host()  # empty plugin_dir, autoload on
    n = h.pb.nlb_pb2
    assert not h.nlb.ListModules(n.ListModulesRequest(), timeout=T).modules
    h.install_plugin(test_plugin_path(), "mptest.so")
    r = reload(h)
    assert r.success, r.message
    mods = h.nlb.ListModules(n.ListModulesRequest(), timeout=T).modules
    assert [x.instance_id for x in mods] == ["mptest"]  # autoload names it after the plugin
    assert mods[0].metadata["autoloaded"] == "true"
    assert version_call(h) == b"1.0.0 "


def test_changed_plugin_becomes_new_generation(start_host):
    h = one_instance(start_host)
    v1 = active(h).active_version
    assert v1.startswith("1.0.0+") and version_call(h) == b"1.0.0 "
    h.install_plugin(test_plugin_path("mptest_v2"), "mptest.so")
    r = reload(h, "echo")
    assert r.success, r.message
    a = active(h)
    assert a.active_version.startswith("2.0.0+") and version_call(h) == b"2.0.0 "
    # the old generation had nothing in flight: it is gone, code and all
    assert dict(a.version_weights) == {a.active_version: 100}
    assert len(loaded_copies(h, expect=1)) == 1
    # reloading the same bytes again is not a new generation
    r = reload(h, "echo")
    assert r.success and active(h).active_version == a.active_version


def test_broken_plugins_are_refused_old_keeps_serving(start_host):
    h = one_instance(start_host)
    v1 = active(h).active_version
    for variant, expect in [("mptest_badabi", "plugin built for ABI 99."),
                            ("mptest_nosym", "no mp_plugin_entry symbol")]:
        h.install_plugin(test_plugin_path(variant), "mptest.so")
        r = reload(h, "echo")
        assert not r.success
        assert expect in r.message, r.message
        if variant == "mptest_badabi":  # both versions are named
            assert re.search(r"ABI 99\.\d+, this host provides ABI 1\.\d+", r.message)
        assert r.error.message
        assert active(h).active_version == v1 and version_call(h) == b"1.0.0 "
    # garbage bytes that are not an ELF file at all
    (h.plugin_dir / "mptest.so").write_bytes(b"\x7fELF but not really" * 10)
    r = reload(h)
    assert not r.success and "cannot load" in r.message
    assert version_call(h) == b"1.0.0 "
    h.module.GetStatus(h.pb.module_pb2.GetStatusRequest(instance_id="echo"), timeout=T)


def test_failing_create_does_not_take_down_the_host(start_host):
    h = start_host(plugins=[(test_plugin_path("mptest_failcreate"), "mptest.so")],
                   instances={"echo": {"plugin": "mptest", "settings": {}}})
    m, t = h.pb.module_pb2, h.pb.types_pb2
    st = h.module.GetStatus(m.GetStatusRequest(instance_id="echo"), timeout=T)
    assert st.status == t.HEALTH_STATUS_UNHEALTHY
    assert "simulated create failure" in st.details["last_error"]
    # a good build dropped in later recovers it
    h.install_plugin(test_plugin_path(), "mptest.so")
    r = reload(h)
    assert r.success, r.message
    st = h.module.GetStatus(m.GetStatusRequest(instance_id="echo"), timeout=T)
    assert st.status == t.HEALTH_STATUS_HEALTHY


CONFIG = """
host: { plugin_dir = "{plugin_dir}"; state_dir = "{state_dir}"; log_level = "debug"; };
grpc: { address = "{grpc_address}"; };
instances: {
  echo: {
    plugin = "mptest";
    settings: {
      greeting = "one";
    };
  };
};
"""


def test_settings_rejected_by_plugin_keep_old_generation(start_host):
    h = start_host(CONFIG, plugins=[test_plugin_path()])
    assert version_call(h) == b"1.0.0 one"
    text = h.config_path.read_text()
    h.config_path.write_text(text.replace('greeting = "one";',
                                          'greeting = "two";\n      reject = true;'))
    r = reload(h)
    assert not r.success and "settings rejected on request" in r.message
    line = h.config_path.read_text().splitlines().index("      reject = true;") + 1
    assert f"{h.config_path.name}:{line}:" in r.message  # FILE:LINE via the plugin's cfg_error
    assert version_call(h) == b"1.0.0 one"
    # a config that does not parse keeps everything too, and says where
    h.config_path.write_text(text.replace('greeting = "one";', 'greeting = ;'))
    r = reload(h)
    assert not r.success and f"{h.config_path.name}:8" in r.message
    assert version_call(h) == b"1.0.0 one"
    # a good edit goes through reconfigure (same image, no new generation)
    before = active(h).active_version
    h.config_path.write_text(text.replace('greeting = "one";', 'greeting = "three";'))
    r = reload(h)
    assert r.success and version_call(h) == b"1.0.0 three"
    assert active(h).active_version == before


def test_world_writable_plugin_is_refused(start_host):
    h = start_host()
    dst = h.install_plugin(test_plugin_path(), "mptest.so")
    os.chmod(h.plugin_dir / "mptest.so", 0o666)
    r = reload(h)
    assert not r.success and "writable by group or others" in r.message
    assert not h.nlb.ListModules(h.pb.nlb_pb2.ListModulesRequest(), timeout=T).modules
    del dst


def test_sighup_reloads(start_host):
    h = one_instance(start_host)
    mark = h.log_mark()
    h.install_plugin(test_plugin_path("mptest_v2"), "mptest.so")
    h.reload_sighup()
    h.wait_log(r"reload: .*echo: 1\.0\.0\+\w+ -> 2\.0\.0\+", since=mark)
    assert version_call(h) == b"2.0.0 "


def test_in_flight_call_finishes_on_old_generation(start_host):
    h = one_instance(start_host)
    slow = h.channel.unary_unary("/mptest.Echo/Slow", request_serializer=None,
                                 response_deserializer=None)
    result = {}

    def call():
        result["reply"] = slow(b"1500", timeout=T)

    th = threading.Thread(target=call)
    th.start()
    time.sleep(0.3)
    h.install_plugin(test_plugin_path("mptest_v2"), "mptest.so")
    assert reload(h).success
    # a third build retires the 1.0.0 generation while its call is still running
    v2_bytes = test_plugin_path("mptest_v2").read_bytes()
    third = h.dir / "mptest_v3.so"
    third.write_bytes(v2_bytes + b"\0extra")  # different hash, same code
    os.chmod(third, 0o644)
    shutil.move(str(third), str(h.plugin_dir / "mptest.so"))
    assert reload(h).success
    th.join()
    assert result["reply"] == b"done"
    # the 1.0.0 code stayed mapped while its call ran; now only the newest build is
    deadline = time.monotonic() + 5
    while len(loaded_copies(h)) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(loaded_copies(h)) == 1


def test_blue_green_weights_promote_rollback(start_host):
    h = one_instance(start_host)
    m, t = h.pb.module_pb2, h.pb.types_pb2
    v1 = active(h).active_version
    # only one version: a split has nowhere to send the rest
    r = h.module.SetTrafficWeight(m.SetTrafficWeightRequest(instance_id="echo", version=v1,
                                                            weight=50), timeout=T)
    assert not r.success
    h.install_plugin(test_plugin_path("mptest_v2"), "mptest.so")
    assert reload(h).success
    v2 = active(h).active_version
    assert len(loaded_copies(h, expect=1)) == 1  # v1 unloaded, its copy kept on disk
    # canary: v2 at 10 %, v1 (reloaded from the kept copy) at 90 %; v1 answers RPCs as
    # the heavier side
    r = h.module.SetTrafficWeight(m.SetTrafficWeightRequest(instance_id="echo", version=v2,
                                                            weight=10), timeout=T)
    assert r.success, r.message
    assert len(loaded_copies(h)) == 2
    a = active(h)
    assert a.version_weights[v2] == 10 and a.version_weights[v1] == 90
    assert a.config.canary_enabled and a.config.canary_percent in (10, 90)
    assert a.active_version == v1 and version_call(h) == b"1.0.0 "
    # rollback during the canary: back to the stable side, canary over
    r = h.module.Rollback(m.RollbackRequest(instance_id="echo"), timeout=T)
    assert r.success, r.message
    a = active(h)
    assert not a.config.canary_enabled
    assert r.current_version == a.active_version
    # promote v2 immediately
    r = h.module.PromoteVersion(m.PromoteVersionRequest(instance_id="echo", version=v2,
                                                        immediate=True), timeout=T)
    assert r.success and r.promoted_version == v2
    a = active(h)
    assert a.active_version == v2 and a.version_weights[v2] == 100
    assert version_call(h) == b"2.0.0 "
    # rollback without a target goes to the previous stable version
    r = h.module.Rollback(m.RollbackRequest(instance_id="echo"), timeout=T)
    assert r.success and r.previous_version == v2 and r.current_version == v1
    assert version_call(h) == b"1.0.0 "
    # unknown versions are named
    r = h.module.PromoteVersion(m.PromoteVersionRequest(instance_id="echo", version="9.9"),
                                timeout=T)
    assert not r.success and v1 in r.message and r.error.code == t.STATUS_CODE_NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        h.module.SetTrafficWeight(m.SetTrafficWeightRequest(instance_id="echo", version=v1,
                                                            weight=101), timeout=T)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stepwise_promotion(start_host):
    h = one_instance(start_host)
    m = h.pb.module_pb2
    v1 = active(h).active_version
    h.install_plugin(test_plugin_path("mptest_v2"), "mptest.so")
    assert reload(h).success
    v2 = active(h).active_version
    assert h.module.SetTrafficWeight(m.SetTrafficWeightRequest(
        instance_id="echo", version=v2, weight=0), timeout=T).success
    r = h.module.PromoteVersion(m.PromoteVersionRequest(instance_id="echo", version=v2,
                                                        promotion_rate=40), timeout=T)
    assert r.success
    seen = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        w = active(h).version_weights[v2]
        if not seen or seen[-1] != w:
            seen.append(w)
        if w == 100:
            break
        time.sleep(0.2)
    assert seen[-1] == 100 and 40 in seen and 80 in seen, seen
    a = active(h)
    assert a.active_version == v2 and v1 not in a.version_weights  # drained away
    assert not a.config.canary_enabled


def test_config_check_flag(tmp_path):
    import subprocess
    from mphelpers import host_binary
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    shutil.copy(test_plugin_path(), plugins / "mptest.so")
    os.chmod(plugins / "mptest.so", 0o644)
    good = tmp_path / "good.conf"
    good.write_text(f'host: {{ plugin_dir = "{plugins}"; state_dir = "{tmp_path}/s"; }};\n'
                    'instances: { echo: { plugin = "mptest"; settings: { greeting = "x"; }; }; };\n')
    r = subprocess.run([str(host_binary()), "-t", "-c", str(good)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text(f'host: {{ plugin_dir = "{plugins}"; state_dir = "{tmp_path}/s"; }};\n'
                   'instances: {\n  echo: {\n    plugin = "mptest";\n'
                   '    settings: { greeting = 5; };\n  };\n};\n')
    r = subprocess.run([str(host_binary()), "-t", "-c", str(bad)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert f"{bad}:5: greeting must be a string" in r.stderr
    typo = tmp_path / "typo.conf"
    typo.write_text("host: {\n  workers = 1;\n  plugn_dir = \"x\";\n};\n")
    r = subprocess.run([str(host_binary()), "-t", "-c", str(typo)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and f"{typo}:3:" in r.stderr and "plugn_dir" in r.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
