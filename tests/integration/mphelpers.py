# mphelpers.py — the integration suite's plumbing: where the trees are, building Python
# stubs (from the markdown spec and from the repo's proto/), writing libconfig files, and
# running the real marchproxy host as a subprocess. conftest.py turns these into fixtures.
#
# Nothing here writes into MP_SRCDIR: everything generated goes to pytest's tmp dirs.

import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
SRCDIR = Path(os.environ.get("MP_SRCDIR") or _REPO_ROOT).resolve()
BUILDDIR = Path(os.environ.get("MP_BUILDDIR") or _REPO_ROOT).resolve()

# Tool locations; the MP_ names let the build pass what configure found.
PROTOC = os.environ.get("MP_PROTOC") or shutil.which("protoc") or "/usr/bin/protoc"
GRPC_PYTHON_PLUGIN = (os.environ.get("MP_GRPC_PYTHON_PLUGIN")
                      or shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin")
PROTOBUF_INCLUDE = Path(os.environ.get("MP_PROTOBUF_INCLUDE") or "/usr/include")

SPEC2PROTO = SRCDIR / "tests" / "tools" / "spec2proto.py"
SPEC_FILES = sorted((SRCDIR / "tests" / "spec").glob("*.md"))
REPO_PROTO_DIR = SRCDIR / "proto"
# The standard health protocol is not part of the spec. It is compiled from its own
# directory so the Python module is `health_pb2`: under its repo path it would be
# `grpc.health.v1.health_pb2`, which grpcio's own `grpc` package would shadow.
HEALTH_PROTO = REPO_PROTO_DIR / "grpc" / "health" / "v1" / "health.proto"

VALGRIND = os.environ.get("MP_VALGRIND") == "1"
# Everything runs many times slower under valgrind; scale waits rather than guess per call.
SLOWDOWN = 6 if VALGRIND else 1
STARTUP_TIMEOUT = 60 if VALGRIND else 15


def free_port():
    """A loopback TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plugin_path(name="mptest"):
    """Path of a test-only plugin built by `make check` (tests/plugins/)."""
    path = BUILDDIR / "tests" / "plugins" / ".libs" / f"{name}.so"
    if not path.is_file():
        pytest.fail(f"test plugin {path} does not exist; it is built by `make check` "
                    f"(MP_BUILDDIR={BUILDDIR})", pytrace=False)
    return path


# Not a test, despite the name pytest would otherwise collect it by.
test_plugin_path.__test__ = False


def host_binary():
    path = BUILDDIR / "marchproxy"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"host binary {path} not built (run make; MP_BUILDDIR={BUILDDIR})",
                    pytrace=False)
    return path


# ------------------------------------------------------------------ stubs

def run_tool(cmd, what):
    """Runs a build tool; on failure the test fails with the tool's own output."""
    try:
        res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.fail(f"{what}: {cmd[0]} not found", pytrace=False)
    if res.returncode != 0:
        pytest.fail(f"{what} failed (exit {res.returncode}):\n$ {' '.join(map(str, cmd))}\n"
                    f"{res.stdout}{res.stderr}", pytrace=False)
    return res


def spec_to_protos(spec_files, outdir):
    """Runs tests/tools/spec2proto.py; returns the .proto files it wrote."""
    run_tool([sys.executable, SPEC2PROTO, *spec_files, "-o", outdir], "spec2proto")
    return sorted(Path(outdir).rglob("*.proto"))


class StubSet:
    """Python stubs for one set of .proto files.

    Attributes named after the files (`types_pb2`, `module_pb2_grpc`, `health_pb2`...)
    are the imported modules when the set was built with import_modules=True.

    `files` maps each proto file name (e.g. "marchproxy/types.proto") to its
    FileDescriptor in `pool`, a DescriptorPool private to this set. Comparisons use the
    private pools because protobuf keeps one process-wide pool for imported modules, and
    two differing definitions of "marchproxy/types.proto" cannot both be imported.
    """

    def __init__(self, label, outdir, pool, files, modules):
        self.label, self.outdir, self.pool, self.files = label, outdir, pool, files
        self._modules = modules
        self._module_names = set()
        for proto in files:
            stem = Path(proto).stem
            self._module_names |= {f"{stem}_pb2", f"{stem}_pb2_grpc"}

    def __getattr__(self, name):
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        if name in self.__dict__.get("_module_names", ()):
            raise AttributeError(
                f"{self.label}: module {name} is not imported into this process (only one "
                f"set of generated stubs can be, see StubSet); use .pool/.files/.message_class"
                f" here, or run the code in {self.outdir} in a subprocess")
        raise AttributeError(name)

    def message_class(self, full_name):
        """A working message class from this set's private pool (no import needed)."""
        from google.protobuf import message_factory
        desc = self.pool.FindMessageTypeByName(full_name)
        return message_factory.MessageFactory(self.pool).GetPrototype(desc)


def _load_descriptor_sets(paths):
    from google.protobuf import descriptor_pb2, descriptor_pool
    pool, seen = descriptor_pool.DescriptorPool(), set()
    for path in paths:
        fds = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
        # protoc lists dependencies before dependents, so adding in order always resolves.
        for fdp in fds.file:
            if fdp.name not in seen:
                seen.add(fdp.name)
                pool.Add(fdp)
    return pool


def build_stubs(label, units, outdir, import_modules=False):
    """Compiles proto files to Python (+gRPC) stubs in outdir and returns a StubSet.

    units: [(include_dir, [proto files under it]), ...] — one protoc run each, so files
    can be given a module path independent of where they sit in the repo.
    """
    outdir = Path(outdir)
    pydir = outdir / "py"
    pydir.mkdir(parents=True, exist_ok=True)
    set_paths, names = [], []
    for i, (include_dir, protos) in enumerate(units):
        include_dir = Path(include_dir)
        if not protos:
            pytest.fail(f"{label}: no .proto files under {include_dir}", pytrace=False)
        desc_set = outdir / f"descriptors{i}.pb"
        run_tool([PROTOC, f"-I{include_dir}", f"-I{PROTOBUF_INCLUDE}",
                  f"--python_out={pydir}", f"--grpc_python_out={pydir}",
                  f"--plugin=protoc-gen-grpc_python={GRPC_PYTHON_PLUGIN}",
                  f"--descriptor_set_out={desc_set}", "--include_imports",
                  *[Path(p).resolve() for p in protos]], f"protoc ({label})")
        set_paths.append(desc_set)
        names += [Path(p).resolve().relative_to(include_dir.resolve()).as_posix() for p in protos]

    # Regular packages (not namespace ones) so a stray `marchproxy` directory elsewhere
    # on sys.path can never be merged into ours.
    for d in pydir.rglob("*"):
        if d.is_dir():
            (d / "__init__.py").touch()

    pool = _load_descriptor_sets(set_paths)
    files = {name: pool.FindFileByName(name) for name in names}

    modules = None
    if import_modules:
        modules = {}
        sys.path.insert(0, str(pydir))
        importlib.invalidate_caches()
        for name in names:
            dotted = name[:-len(".proto")].replace("/", ".")
            stem = Path(name).stem
            for suffix in ("_pb2", "_pb2_grpc"):
                attr = stem + suffix
                if attr in modules:
                    pytest.fail(f"{label}: two proto files both give module name {attr}",
                                pytrace=False)
                mod = importlib.import_module(dotted + suffix)
                if not Path(mod.__file__).resolve().is_relative_to(pydir.resolve()):
                    pytest.fail(f"{label}: {dotted + suffix} was imported from {mod.__file__}, "
                                f"not from the generated {pydir}", pytrace=False)
                modules[attr] = mod
    return StubSet(label, pydir, pool, files, modules)


def build_spec_stubs(workdir, spec_files=None, import_modules=False):
    """Stubs from the markdown spec (via spec2proto) plus the repo's health.proto."""
    workdir = Path(workdir)
    protos = spec_to_protos(spec_files or SPEC_FILES, workdir / "proto")
    units = [(workdir / "proto", protos), (HEALTH_PROTO.parent, [HEALTH_PROTO])]
    return build_stubs("spec stubs", units, workdir, import_modules)


def build_repo_stubs(workdir):
    """Stubs from the hand-written $MP_SRCDIR/proto tree (never imported; see StubSet)."""
    protos = [p for p in sorted(REPO_PROTO_DIR.rglob("*.proto")) if p != HEALTH_PROTO]
    units = [(REPO_PROTO_DIR, protos), (HEALTH_PROTO.parent, [HEALTH_PROTO])]
    return build_stubs("repo stubs", units, workdir, import_modules=False)


# ------------------------------------------------------------------ libconfig

class Raw(str):
    """Text put into a generated config verbatim (e.g. Raw("( )") for an empty list)."""


_LC_NAME = re.compile(r"^[A-Za-z*][-A-Za-z0-9_*]*$")


def _lc_string(s):
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def lc_value(value, indent=0):
    """Renders a Python value as libconfig: dict -> group, list of dicts -> list,
    other list -> array, and scalars. An empty Python list renders as an empty array."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # libconfig reads integers as 32-bit unless told they are 64-bit.
        return str(value) if -2**31 <= value < 2**31 else f"{value}L"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"libconfig has no way to write {value}")
        return repr(value)
    if isinstance(value, (str, Path)):
        return _lc_string(str(value))
    if isinstance(value, dict):
        if not value:
            return "{ }"
        return "{\n" + lc_settings(value, indent + 1) + pad + "}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            items = [inner + lc_value(v, indent + 1) for v in value]
            return "(\n" + ",\n".join(items) + "\n" + pad + ")"
        if any(isinstance(v, (dict, list, tuple)) for v in value):
            raise ValueError(f"cannot tell whether {value!r} is a libconfig list or array; "
                             f"use Raw(...)")
        return "[ " + ", ".join(lc_value(v) for v in value) + " ]" if value else "[ ]"
    raise TypeError(f"no libconfig form for {type(value).__name__}: {value!r}")


def lc_settings(settings, indent=0):
    """Renders a dict as libconfig settings, one `name = value;` line each."""
    pad, lines = "  " * indent, []
    for name, value in settings.items():
        if not _LC_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid libconfig setting name")
        sep = ":" if isinstance(value, dict) else " ="
        lines.append(f"{pad}{name}{sep} {lc_value(value, indent)};\n")
    return "".join(lines)


_PLACEHOLDER = re.compile(r"\{(plugin_dir|state_dir|grpc_address|grpc_port|host_dir)\}")


def fill_placeholders(text, values):
    """Replaces only the known {name} placeholders, so libconfig's own braces survive."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


# ------------------------------------------------------------------ the host

# The test client should notice the host coming up (or back) within ~0.1 s, not after
# gRPC's default reconnect backoff of up to two minutes; and never use a proxy.
CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}" + (" (valgrind found errors)" if VALGRIND and code == 99 else "")


class Host:
    """One running marchproxy process and a gRPC client connected to it."""

    def __init__(self, directory, port, pb, config_path, proc, log_path):
        self.dir = directory
        self.plugin_dir = directory / "plugins"
        self.state_dir = directory / "state"
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.pb = pb
        self.config_path = config_path
        self.log_path = log_path
        self.proc = proc
        self.pid = proc.pid
        self.exit_seen = False      # set once the test has looked at the exit code
        self._channels = []
        self.channel = self.connect()
        self.module = pb.module_pb2_grpc.ModuleServiceStub(self.channel)
        self.nlb = pb.nlb_pb2_grpc.NLBServiceStub(self.channel)
        self.health = pb.health_pb2_grpc.HealthStub(self.channel)

    def connect(self, options=()):
        """A further channel to the host (closed at teardown); options override ours."""
        merged = dict(CHANNEL_OPTIONS)
        merged.update(dict(options))
        ch = grpc.insecure_channel(self.address, options=list(merged.items()))
        self._channels.append(ch)
        return ch

    # --- the log
    def log(self, since=0):
        """The host's stdout+stderr so far (from byte offset `since`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self):
        """Current end of the log, to pass as `since` to log()/wait_log()."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines=60):
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_log(self, pattern, timeout=10, since=0):
        """Waits until the log (after `since`) matches regex `pattern`; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout * SLOWDOWN
        while True:
            exited = self.proc.poll() is not None   # before reading, so no last words are lost
            m = rx.search(self.log(since))
            if m:
                return m
            if exited:
                self.exit_seen = True
                pytest.fail(f"host {describe_exit(self.proc.returncode)} before logging "
                            f"/{pattern}/; log tail:\n{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"/{pattern}/ not in the host log after {timeout * SLOWDOWN}s; "
                            f"log tail:\n{self.log_tail()}", pytrace=False)
            time.sleep(0.05)

    # --- the process
    @property
    def running(self):
        return self.proc.poll() is None

    def wait_serving(self, timeout=None):
        """Waits until grpc.health.v1.Health/Check("") says SERVING."""
        timeout = STARTUP_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        req = self.pb.health_pb2.HealthCheckRequest(service="")
        serving = self.pb.health_pb2.HealthCheckResponse.SERVING
        last = "no answer: nothing accepted the connection"
        while True:
            if self.proc.poll() is not None:
                self.exit_seen = True
                pytest.fail(f"host {describe_exit(self.proc.returncode)} while starting "
                            f"({last}); log tail:\n{self.log_tail()}", pytrace=False)
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                self.exit_seen = True
                pytest.fail(f"host not SERVING on {self.address} after {timeout}s ({last}); "
                            f"log tail:\n{self.log_tail()}", pytrace=False)
            status_name = self.pb.health_pb2.HealthCheckResponse.ServingStatus.Name
            try:
                # wait_for_ready keeps the call open while the channel reconnects: a
                # client-only gRPC process only drives its reconnect timers while a call
                # is in flight, so fail-fast calls would keep seeing a stale failure.
                resp = self.health.Check(req, timeout=min(max(left, 0.1), 0.5 * SLOWDOWN),
                                         wait_for_ready=True)
                if resp.status == serving:
                    return
                last = f"Health/Check says {status_name(resp.status)}"
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue    # not connected yet: the call itself did the waiting
                last = f"Health/Check: {e.code().name}: {e.details()}"
            time.sleep(0.1)

    def reload_sighup(self):
        """Asks the host to reload (SIGHUP). Returns at once; use wait_log to see it done."""
        os.kill(self.pid, signal.SIGHUP)

    def wait_exit(self, timeout=10):
        """Waits for the process to end on its own; returns its exit code (<0: signal)."""
        try:
            code = self.proc.wait(timeout * SLOWDOWN)
        except subprocess.TimeoutExpired:
            self.kill()
            self.exit_seen = True
            pytest.fail(f"host still running after {timeout * SLOWDOWN}s; killed. Log tail:\n"
                        f"{self.log_tail()}", pytrace=False)
        self.exit_seen = True
        self._close_channels()
        return code

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Sends `sig` and waits for the exit; returns the exit code (<0: killed by signal).
        A host that does not exit in time is killed and the test fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self):
        """SIGKILL if still running, and close the channels (no exit-code check)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_channels()

    def _close_channels(self):
        for ch in self._channels:
            ch.close()
        self._channels.clear()

    def install_plugin(self, src, name=None):
        """Puts a plugin into plugin_dir atomically (mode 0644), e.g. to replace it."""
        return install_plugin(self.plugin_dir, src, name)

    def restart(self, sig=signal.SIGTERM, args=(), env=None):
        """Stops the process (sig; SIGKILL simulates a crash) and starts a new one on the
        same directory, config and port; waits until it is SERVING."""
        if sig == signal.SIGKILL:
            self.kill()
        else:
            self.stop(sig)
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(host_command(self.config_path, args),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir, env=full_env)
        self.pid = self.proc.pid
        self.exit_seen = False
        self.channel = self.connect()
        self.module = self.pb.module_pb2_grpc.ModuleServiceStub(self.channel)
        self.nlb = self.pb.nlb_pb2_grpc.NLBServiceStub(self.channel)
        self.health = self.pb.health_pb2_grpc.HealthStub(self.channel)
        self.wait_serving()


def install_plugin(plugin_dir, src, name=None):
    # Copy then rename, so the host never sees a half-written .so.
    dest = Path(plugin_dir) / (name or Path(src).name)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def host_command(config_path, args=()):
    binary = host_binary()
    cmd = [str(binary), "-c", str(config_path), *map(str, args)]
    if VALGRIND:
        vg = ["valgrind", "--error-exitcode=99", "--leak-check=full",
              "--errors-for-leak-kinds=definite"]
        with open(binary, "rb") as f:
            is_script = f.read(2) == b"#!"
        # A libtool wrapper script must be run through libtool, or valgrind checks /bin/sh.
        prefix = [str(BUILDDIR / "libtool"), "--mode=execute"] if is_script else []
        cmd = prefix + vg + cmd
    return cmd


def render_config(directory, port, *, config=None, host=None, grpc=None, instances=None,
                  extra=None):
    """The libconfig text for start_host (see conftest.start_host for the parameters)."""
    values = {
        "plugin_dir": directory / "plugins",
        "state_dir": directory / "state",
        "grpc_address": f"127.0.0.1:{port}",
        "grpc_port": port,
        "host_dir": directory,
    }
    if config is not None:
        if host or grpc or instances or extra:
            raise ValueError("start_host: pass either config text or host/grpc/instances/extra")
        return fill_placeholders(config, values)
    host_settings = {
        "plugin_dir": values["plugin_dir"],
        "state_dir": values["state_dir"],
        "log_level": "debug",
        "autoload": True,
        "workers": 1,
    }
    grpc_settings = {"address": values["grpc_address"]}
    for base, override in ((host_settings, host), (grpc_settings, grpc)):
        for k, v in (override or {}).items():
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
    top = {"host": host_settings, "grpc": grpc_settings}
    if instances is not None:
        top["instances"] = instances
    text = "# written by the integration suite (tests/integration/mphelpers.py)\n"
    text += lc_settings(top)
    if isinstance(extra, dict):
        text += lc_settings(extra)
    elif extra:
        text += fill_placeholders(extra, values) + "\n"
    return text


def launch_host(directory, pb, *, config=None, plugins=(), host=None, grpc=None,
                instances=None, extra=None, args=(), env=None):
    """Prepares a host directory, writes the config and starts the process (no waiting)."""
    directory = Path(directory)
    directory.mkdir(parents=True)
    plugin_dir, state_dir = directory / "plugins", directory / "state"
    plugin_dir.mkdir()
    os.chmod(plugin_dir, 0o755)
    state_dir.mkdir()
    os.chmod(state_dir, 0o700)
    for p in plugins:
        src, name = (p if isinstance(p, (tuple, list)) else (p, None))
        install_plugin(plugin_dir, src, name)

    port = free_port()
    config_path = directory / "marchproxy.conf"
    config_path.write_text(render_config(directory, port, config=config, host=host,
                                         grpc=grpc, instances=instances, extra=extra))
    log_path = directory / "host.log"
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(host_command(config_path, args), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=directory,
                                env=full_env)
    try:
        return Host(directory, port, pb, config_path, proc, log_path)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
