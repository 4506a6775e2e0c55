# test_wire_contract.py — the hand-written proto/ tree must say exactly what the user's
# wire contract (tests/spec/*.md) says. Both are compiled by protoc and compared by
# descriptor; a negative test proves the comparison notices a single renumbered field,
# and spec2proto's strictness is checked on broken specs. Needs no host.

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

import mphelpers

_TYPE_NAMES = descriptor_pb2.FieldDescriptorProto.Type.Name
_LABEL_NAMES = descriptor_pb2.FieldDescriptorProto.Label.Name


def _contract_files(stubs):
    """The proto files that the spec governs: everything but imports from outside."""
    return {name: fd for name, fd in stubs.files.items()
            if not name.startswith("google/") and name != "health.proto"}


def _is_map_entry(desc):
    return desc is not None and desc.GetOptions().map_entry


def _type_of(field):
    """What a field is on the wire, written the way a .proto would: "int32",
    "marchproxy.Route", "map<string, marchproxy.HealthStatus>"."""
    if field.message_type is not None and _is_map_entry(field.message_type):
        entry = field.message_type
        return (f"map<{_type_of(entry.fields_by_name['key'])}, "
                f"{_type_of(entry.fields_by_name['value'])}>")
    ref = field.message_type or field.enum_type
    if ref is not None:
        return ref.full_name
    return _TYPE_NAMES(field.type)[len("TYPE_"):].lower()


def _field_summary(field):
    opts = field.GetOptions()
    oneof = field.containing_oneof
    return {
        "number": field.number,
        "type": _type_of(field),
        "label": _LABEL_NAMES(field.label)[len("LABEL_"):].lower(),
        # proto3 `optional` shows up as a synthetic oneof; it changes presence semantics.
        "oneof": oneof.name if oneof is not None else None,
        "packed": opts.packed if opts.HasField("packed") else None,
    }


def _compare_named(what, a_items, b_items, diffs, compare):
    """Reports names on one side only, then compares the pairs present on both."""
    for name in sorted(set(a_items) - set(b_items)):
        diffs.append(f"{what} {name}: in the spec, missing from proto/")
    for name in sorted(set(b_items) - set(a_items)):
        diffs.append(f"{what} {name}: in proto/, not in the spec")
    for name in sorted(set(a_items) & set(b_items)):
        compare(a_items[name], b_items[name], diffs)


def _compare_enum(a, b, diffs):
    a_vals = {v.name: v.number for v in a.values}
    b_vals = {v.name: v.number for v in b.values}
    for name in sorted(set(a_vals) - set(b_vals)):
        diffs.append(f"enum value {a.full_name}.{name} (= {a_vals[name]}): missing from proto/")
    for name in sorted(set(b_vals) - set(a_vals)):
        diffs.append(f"enum value {b.full_name}.{name} (= {b_vals[name]}): not in the spec")
    for name in sorted(set(a_vals) & set(b_vals)):
        if a_vals[name] != b_vals[name]:
            diffs.append(f"enum value {a.full_name}.{name}: number spec={a_vals[name]} "
                         f"proto/={b_vals[name]}")


def _compare_message(a, b, diffs):
    for name in sorted(set(a.fields_by_name) - set(b.fields_by_name)):
        diffs.append(f"field {a.full_name}.{name}: in the spec, missing from proto/")
    for name in sorted(set(b.fields_by_name) - set(a.fields_by_name)):
        diffs.append(f"field {b.full_name}.{name}: in proto/, not in the spec")
    for name in sorted(set(a.fields_by_name) & set(b.fields_by_name)):
        fa, fb = _field_summary(a.fields_by_name[name]), _field_summary(b.fields_by_name[name])
        for key in fa:
            if fa[key] != fb[key]:
                diffs.append(f"field {a.full_name}.{name}: {key} spec={fa[key]} proto/={fb[key]}")
    # Map entries are covered by their field's type; anything else nested is compared.
    nested = lambda d: {t.name: t for t in d.nested_types if not _is_map_entry(t)}  # noqa: E731
    _compare_named("message", nested(a), nested(b), diffs, _compare_message)
    _compare_named("enum", {e.name: e for e in a.enum_types},
                   {e.name: e for e in b.enum_types}, diffs, _compare_enum)


def _compare_service(a, b, diffs):
    def cmp_method(ma, mb, d):
        for attr in ("input_type", "output_type"):
            x, y = getattr(ma, attr).full_name, getattr(mb, attr).full_name
            if x != y:
                d.append(f"method {ma.full_name}: {attr} spec={x} proto/={y}")
        for attr in ("client_streaming", "server_streaming"):
            x, y = getattr(ma, attr), getattr(mb, attr)
            if x != y:
                d.append(f"method {ma.full_name}: {attr} spec={x} proto/={y}")

    _compare_named("method", {m.full_name: m for m in a.methods},
                   {m.full_name: m for m in b.methods}, diffs, cmp_method)


def contract_differences(spec, repo):
    """Every way the repo's StubSet departs from the spec's, as readable lines."""
    diffs = []
    a_files, b_files = _contract_files(spec), _contract_files(repo)

    def cmp_file(fa, fb, d):
        if fa.package != fb.package:
            d.append(f"file {fa.name}: package spec={fa.package} proto/={fb.package}")
        full = lambda items: {x.full_name: x for x in items}  # noqa: E731
        _compare_named("message", full(fa.message_types_by_name.values()),
                       full(fb.message_types_by_name.values()), d, _compare_message)
        _compare_named("enum", full(fa.enum_types_by_name.values()),
                       full(fb.enum_types_by_name.values()), d, _compare_enum)
        _compare_named("service", full(fa.services_by_name.values()),
                       full(fb.services_by_name.values()), d, _compare_service)

    _compare_named("file", a_files, b_files, diffs, cmp_file)
    return diffs


def _count_spec_lines(spec_files):
    """Independent of spec2proto: how many definitions the markdown has, by kind."""
    counts = {"message": 0, "enum": 0, "service": 0, "method": 0}
    for path in spec_files:
        for line in Path(path).read_text().splitlines():
            m = re.match(r"^- (message|enum|service) \*\*", line)
            if m:
                counts[m.group(1)] += 1
            elif line.startswith("  - "):
                counts["method"] += 1
    return counts


# ------------------------------------------------------------------ the contract

def test_spec_files_found():
    names = sorted(p.name for p in mphelpers.SPEC_FILES)
    assert names == ["lauradb-wire.md", "marchproxy-wire.md"], names


def test_spec2proto_read_every_definition(spec_stubs):
    want = _count_spec_lines(mphelpers.SPEC_FILES)
    got = {"message": 0, "enum": 0, "service": 0, "method": 0}
    for fd in _contract_files(spec_stubs).values():
        got["message"] += len(fd.message_types_by_name)
        got["enum"] += len(fd.enum_types_by_name)
        got["service"] += len(fd.services_by_name)
        got["method"] += sum(len(s.methods) for s in fd.services_by_name.values())
    assert got == want


def test_repo_protos_declare_spec_packages(spec_stubs, repo_stubs):
    spec_files, repo_files = _contract_files(spec_stubs), _contract_files(repo_stubs)
    expected = {
        "marchproxy/types.proto": "marchproxy",
        "marchproxy/module.proto": "marchproxy",
        "marchproxy/nlb.proto": "marchproxy",
        "lauradb/common.proto": "lauradb.cluster",
        "lauradb/cluster.proto": "lauradb.cluster",
        "lauradb/replication.proto": "lauradb.cluster",
        "lauradb/routing.proto": "lauradb.cluster",
        "lauradb/transaction.proto": "lauradb.cluster",
    }
    assert {n: fd.package for n, fd in spec_files.items()} == expected
    assert {n: fd.package for n, fd in repo_files.items()} == expected


def test_repo_protos_match_spec(spec_stubs, repo_stubs):
    diffs = contract_differences(spec_stubs, repo_stubs)
    assert not diffs, ("proto/ departs from the wire contract:\n  " + "\n  ".join(diffs))


def test_imported_spec_modules_are_the_compared_ones(spec_stubs):
    # Tests talk to the host through the imported modules; make sure those carry exactly
    # the descriptors that were checked against proto/ above.
    for name, fd in _contract_files(spec_stubs).items():
        module = getattr(spec_stubs, Path(name).stem + "_pb2")
        a, b = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(a)
        fd.CopyToProto(b)
        # protoc fills in json_name only in descriptor sets, not in generated modules.
        assert _without_json_names(a) == _without_json_names(b), name


def _without_json_names(fdp):
    def strip(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)
    strip(fdp.message_type)
    return fdp


def test_health_stubs_present(spec_stubs):
    assert spec_stubs.health_pb2.HealthCheckResponse.SERVING == 1
    assert hasattr(spec_stubs.health_pb2_grpc, "HealthStub")


def test_repo_stubs_message_classes_work(repo_stubs):
    route_cls = repo_stubs.message_class("marchproxy.Route")
    route = route_cls(route_id="r1", priority=3)
    route.headers["host"] = "example"
    assert route_cls.FromString(route.SerializeToString()) == route


# ------------------------------------------------------------------ the check can fail

def test_comparison_catches_renumbered_field(tmp_path, repo_stubs):
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    for src in mphelpers.SPEC_FILES:
        text = src.read_text()
        if src.name == "marchproxy-wire.md":
            # Route.protocol moves from 2 to 11 (Route has fields 1..10).
            text, n = re.subn(r"(- message \*\*Route\*\*: .*?; )2 (protocol: Protocol;)",
                              r"\g<1>11 \2", text)
            assert n == 1, "the spec no longer has Route.protocol = 2; update this test"
        (spec_dir / src.name).write_text(text)
    mutated = mphelpers.build_spec_stubs(tmp_path / "stubs", sorted(spec_dir.glob("*.md")))
    diffs = contract_differences(mutated, repo_stubs)
    assert diffs == ["field marchproxy.Route.protocol: number spec=11 proto/=2"]


def test_comparison_catches_missing_method_and_enum_value(tmp_path, repo_stubs):
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    for src in mphelpers.SPEC_FILES:
        text = src.read_text()
        if src.name == "lauradb-wire.md":
            text = text.replace("  - AppendOplog: OplogEntry -> AppendOplogResponse\n", "")
            text = text.replace(", 3 COMPOUND", "")
        (spec_dir / src.name).write_text(text)
    mutated = mphelpers.build_spec_stubs(tmp_path / "stubs", sorted(spec_dir.glob("*.md")))
    diffs = contract_differences(mutated, repo_stubs)
    assert sorted(diffs) == [
        "enum value lauradb.cluster.ShardingStrategy.COMPOUND (= 3): not in the spec",
        "method lauradb.cluster.ReplicationService.AppendOplog: in proto/, not in the spec",
    ]


# ------------------------------------------------------------------ spec2proto strictness

_GOOD_HEAD = "# t\n\n## a.proto (package `pk`)\n\n"


@pytest.mark.parametrize("body, bad_line, reason", [
    ("- mesage **X**: 1 a: string\n", "- mesage **X**: 1 a: string", "not a message"),
    ("- message **X**: 1 a: strng\n", "- message **X**: 1 a: strng", "unknown type"),
    ("- message **X**: 1 a: string; 1 b: int32\n", "- message **X**: 1 a: string; 1 b: int32",
     "used twice"),
    ("- message **X**: 1 a: string;\n", "- message **X**: 1 a: string;", "empty field"),
    ("- message **X**: 1 a: google.protobuf.Timestamp\n",
     "- message **X**: 1 a: google.protobuf.Timestamp", "not in this section's imports"),
    ("- message **X**: 1 a: map<double, string>\n", "- message **X**: 1 a: map<double, string>",
     "map key"),
    ("- enum **E**: 1 A, 2 B\n", "- enum **E**: 1 A, 2 B", "must be 0"),
    ("- service **S**:\n  - M: X -> Y\n- message **X**: (no fields)\n", "  - M: X -> Y",
     "unknown type 'Y'"),
    ("- message **X**: (no fields)\n  - M: X -> X\n", "  - M: X -> X", "outside"),
    ("- message **X**: (no fields)\nimports: nothere.proto\n", "imports: nothere.proto",
     "no section"),
    ("- message **X**: (no fields)\nsome prose\n", "some prose", "not a message"),
], ids=["typo-keyword", "unknown-type", "dup-number", "stray-semicolon", "missing-import",
        "bad-map-key", "enum-not-zero", "unknown-response", "method-outside-service",
        "unknown-import", "prose-in-section"])
def test_spec2proto_rejects(tmp_path, body, bad_line, reason):
    spec = tmp_path / "bad.md"
    spec.write_text(_GOOD_HEAD + body)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, mphelpers.SPEC2PROTO, spec, "-o", out],
                         capture_output=True, text=True)
    assert res.returncode == 1, res.stdout + res.stderr
    # spec2proto prints "file:line: reason" and then the offending line, indented.
    assert "    " + bad_line in res.stderr.splitlines(), res.stderr
    assert reason in res.stderr
    assert not out.exists(), "nothing may be written from a spec that failed"


def test_spec2proto_rejects_definition_before_section(tmp_path):
    spec = tmp_path / "bad.md"
    spec.write_text("# t\n- message **X**: (no fields)\n" + _GOOD_HEAD
                    + "- message **Y**: (no fields)\n")
    res = subprocess.run([sys.executable, mphelpers.SPEC2PROTO, spec, "-o", tmp_path / "o"],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "bad.md:2:" in res.stderr


def test_spec2proto_output_shape(tmp_path):
    spec = tmp_path / "ok.md"
    spec.write_text(
        "# t\n\n## a.proto (package `pk.sub`)\n\nimports: timestamp.proto\n\n"
        "- message **X**: 1 t: google.protobuf.Timestamp; 2 m: map<string, Y>; 3 r: repeated Y\n"
        "- enum **Y**: 0 Y_ZERO, 1 Y_ONE\n"
        "- message **Z**: (no fields)\n"
        "- service **S**:\n  - Get: X -> Z\n  - Watch: Z -> stream X\n")
    res = subprocess.run([sys.executable, mphelpers.SPEC2PROTO, spec, "-o", tmp_path / "o"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "o" / "pk" / "a.proto").read_text()
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("//")]
    assert body == [
        'syntax = "proto3";', "package pk.sub;", 'import "google/protobuf/timestamp.proto";',
        "message X {", "  google.protobuf.Timestamp t = 1;", "  map<string, Y> m = 2;",
        "  repeated Y r = 3;", "}",
        "enum Y {", "  Y_ZERO = 0;", "  Y_ONE = 1;", "}",
        "message Z {}",
        "service S {", "  rpc Get(X) returns (Z);", "  rpc Watch(Z) returns (stream X);", "}",
    ]
