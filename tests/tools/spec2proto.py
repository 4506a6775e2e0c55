#!/usr/bin/python3
# spec2proto.py — turns the markdown wire contract (tests/spec/*-wire.md) into .proto
# files. It deliberately shares nothing with the hand-written proto/ tree: the
# integration suite compiles both and compares them, so this is the independent reading
# of the contract. Anything it does not understand is an error, never a guess.
#
# Usage: spec2proto.py SPEC.md... -o OUTDIR
#   writes OUTDIR/<prefix>/<name>.proto for every "## name.proto (package `pkg`)"
#   section, where <prefix> is the first component of pkg (marchproxy, lauradb).

import argparse
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = IDENT + r"(?:\." + IDENT + r")*"

SCALARS = frozenset({
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
})
# protobuf allows any integral or string type as a map key, nothing else.
MAP_KEYS = SCALARS - {"double", "float", "bytes"}

# Types that live outside the spec, and the spec-level import that brings each in.
EXTERNAL_TYPES = {"google.protobuf.Timestamp": "timestamp.proto"}
EXTERNAL_IMPORTS = {"timestamp.proto": "google/protobuf/timestamp.proto"}

# Field numbers protobuf refuses: above 2^29-1, and the range reserved for itself.
MAX_FIELD = (1 << 29) - 1
RESERVED_FIELDS = range(19000, 20000)

RE_SECTION = re.compile(r"^## (" + IDENT + r")\.proto \(package `(" + DOTTED + r")`\)$", re.A)
RE_IMPORTS = re.compile(r"^imports: (.+)$")
RE_MESSAGE = re.compile(r"^- message \*\*(" + IDENT + r")\*\*: (.+)$", re.A)
RE_ENUM = re.compile(r"^- enum \*\*(" + IDENT + r")\*\*: (.+)$", re.A)
RE_SERVICE = re.compile(r"^- service \*\*(" + IDENT + r")\*\*:$", re.A)
RE_METHOD = re.compile(
    r"^  - (" + IDENT + r"): (" + DOTTED + r") -> (stream )?(" + DOTTED + r")$", re.A)
RE_FIELD = re.compile(r"^([0-9]+) (" + IDENT + r"): (.+)$", re.A)
RE_MAP = re.compile(r"^map<\s*(" + IDENT + r")\s*,\s*(" + DOTTED + r")\s*>$", re.A)
RE_REPEATED = re.compile(r"^repeated (" + DOTTED + r")$", re.A)
RE_PLAIN_TYPE = re.compile(r"^(" + DOTTED + r")$", re.A)
RE_ENUM_VALUE = re.compile(r"^(-?[0-9]+) (" + IDENT + r")$", re.A)


class SpecError(Exception):
    """A problem tied to one line of one spec file."""

    def __init__(self, path, lineno, line, reason):
        super().__init__(f"{path}:{lineno}: {reason}\n    {line}")


class Where:
    """Source position kept on every parsed item so late checks can still name the line."""

    def __init__(self, path, lineno, line):
        self.path, self.lineno, self.line = path, lineno, line

    def error(self, reason):
        return SpecError(self.path, self.lineno, self.line, reason)


class Field:
    def __init__(self, number, name, kind, type_name, key_type, where):
        # kind: "single", "repeated" or "map"; key_type only for maps.
        self.number, self.name, self.kind = number, name, kind
        self.type_name, self.key_type, self.where = type_name, key_type, where

    def proto_type(self):
        if self.kind == "map":
            return f"map<{self.key_type}, {self.type_name}>"
        if self.kind == "repeated":
            return f"repeated {self.type_name}"
        return self.type_name


class Message:
    def __init__(self, name, fields, where):
        self.name, self.fields, self.where = name, fields, where


class Enum:
    def __init__(self, name, values, where):
        self.name, self.values, self.where = name, values, where


class Method:
    def __init__(self, name, request, response, server_streaming, where):
        self.name, self.request, self.response = name, request, response
        self.server_streaming, self.where = server_streaming, where


class Service:
    def __init__(self, name, where):
        self.name, self.methods, self.where = name, [], where


class ProtoFile:
    def __init__(self, name, package, where):
        self.name, self.package, self.where = name, package, where
        self.prefix = package.split(".")[0]
        self.imports = []          # spec-level names, e.g. "types.proto"
        self.imports_where = None
        self.items = []            # Message / Enum / Service in spec order

    @property
    def out_path(self):
        return f"{self.prefix}/{self.name}.proto"


def parse_fields(body, where):
    if body == "(no fields)":
        return []
    fields, numbers, names = [], set(), set()
    for piece in body.split(";"):
        piece = piece.strip()
        if not piece:
            raise where.error("empty field entry (stray ';'?)")
        m = RE_FIELD.match(piece)
        if not m:
            raise where.error(f"cannot parse field {piece!r}; expected 'NUMBER name: type'")
        number, name, type_text = int(m.group(1)), m.group(2), m.group(3).strip()
        if number < 1 or number > MAX_FIELD or number in RESERVED_FIELDS:
            raise where.error(f"field {name!r} has number {number}, which protobuf does not allow")
        if number in numbers:
            raise where.error(f"field number {number} used twice")
        if name in names:
            raise where.error(f"field name {name!r} used twice")
        numbers.add(number)
        names.add(name)
        m_map = RE_MAP.match(type_text)
        m_rep = RE_REPEATED.match(type_text)
        m_plain = RE_PLAIN_TYPE.match(type_text)
        if m_map:
            key, value = m_map.group(1), m_map.group(2)
            if key not in MAP_KEYS:
                raise where.error(f"field {name!r}: {key!r} cannot be a map key")
            fields.append(Field(number, name, "map", value, key, where))
        elif m_rep:
            fields.append(Field(number, name, "repeated", m_rep.group(1), None, where))
        elif m_plain:
            fields.append(Field(number, name, "single", m_plain.group(1), None, where))
        else:
            raise where.error(f"field {name!r}: cannot parse type {type_text!r}")
    return fields


def parse_enum_values(body, where):
    values, numbers, names = [], set(), set()
    for piece in body.split(","):
        piece = piece.strip()
        m = RE_ENUM_VALUE.match(piece)
        if not m:
            raise where.error(f"cannot parse enum value {piece!r}; expected 'NUMBER NAME'")
        number, name = int(m.group(1)), m.group(2)
        if number in numbers:
            raise where.error(f"enum number {number} used twice")
        if name in names:
            raise where.error(f"enum value {name!r} used twice")
        numbers.add(number)
        names.add(name)
        values.append((name, number))
    if values[0][1] != 0:
        raise where.error("a proto3 enum's first value must be 0")
    return values


def parse_spec(path):
    """Returns the ProtoFiles of one markdown spec, in order."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SystemExit(f"spec2proto: cannot read {path}: {e.strerror}")

    files, current, service = [], None, None
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip()
        where = Where(path, lineno, line)
        if not line:
            continue
        if line.startswith("## "):
            m = RE_SECTION.match(line)
            if not m:
                raise where.error("section heading not of the form '## name.proto (package `pkg`)'")
            current = ProtoFile(m.group(1), m.group(2), where)
            files.append(current)
            service = None
            continue
        if current is None:
            # Free prose before the first section is the document's preamble, but a
            # definition there would silently belong to no file.
            if line.startswith(("- ", "  - ", "imports:")):
                raise where.error("definition before the first '## name.proto' section")
            continue

        if line.startswith("  - "):
            if service is None:
                raise where.error("method line outside a '- service' block")
            m = RE_METHOD.match(line)
            if not m:
                raise where.error("cannot parse method; expected "
                                  "'  - Name: Request -> [stream] Response'")
            names = {x.name for x in service.methods}
            if m.group(1) in names:
                raise where.error(f"method {m.group(1)!r} declared twice")
            service.methods.append(
                Method(m.group(1), m.group(2), m.group(4), bool(m.group(3)), where))
            continue
        service = None

        m = RE_IMPORTS.match(line)
        if m:
            if current.imports_where is not None:
                raise where.error("second 'imports:' line in one section")
            current.imports_where = where
            for name in (x.strip() for x in m.group(1).split(",")):
                if not re.fullmatch(IDENT + r"\.proto", name, re.A):
                    raise where.error(f"cannot parse import {name!r}")
                if name in current.imports:
                    raise where.error(f"{name} imported twice")
                current.imports.append(name)
            continue
        m = RE_MESSAGE.match(line)
        if m:
            fields = parse_fields(m.group(2).strip(), where)
            current.items.append(Message(m.group(1), fields, where))
            continue
        m = RE_ENUM.match(line)
        if m:
            current.items.append(Enum(m.group(1), parse_enum_values(m.group(2), where), where))
            continue
        m = RE_SERVICE.match(line)
        if m:
            service = Service(m.group(1), where)
            current.items.append(service)
            continue
        raise where.error("not a message, enum, service, method or imports line")

    for pf in files:
        if not pf.items:
            raise pf.where.error("section defines nothing")
        for item in pf.items:
            if isinstance(item, Service) and not item.methods:
                raise item.where.error(f"service {item.name} has no methods")
    return files


def resolve(files):
    """Cross-file checks: imports exist, every type is defined and reachable."""
    by_out, defs = {}, {}   # out_path -> ProtoFile; full type name -> (kind, ProtoFile, Where)
    for pf in files:
        if pf.out_path in by_out:
            raise pf.where.error(f"{pf.out_path} is defined by two sections")
        by_out[pf.out_path] = pf
        for item in pf.items:
            full = f"{pf.package}.{item.name}"
            if full in defs:
                raise item.where.error(f"{full} is already defined at "
                                       f"{defs[full][2].path}:{defs[full][2].lineno}")
            kind = {Message: "message", Enum: "enum", Service: "service"}[type(item)]
            defs[full] = (kind, pf, item.where)

    resolved_imports = {}
    for pf in files:
        targets = []
        for name in pf.imports:
            if name in EXTERNAL_IMPORTS:
                targets.append(EXTERNAL_IMPORTS[name])
                continue
            target = f"{pf.prefix}/{name}"
            if target not in by_out:
                raise pf.imports_where.error(f"import {name}: no section '## {name} (package ...)' "
                                             f"under {pf.prefix}/")
            if target == pf.out_path:
                raise pf.imports_where.error(f"{name} imports itself")
            targets.append(target)
        resolved_imports[pf.out_path] = targets

    def check_type(pf, type_name, where, allowed_kinds):
        if type_name in SCALARS:
            if "scalar" not in allowed_kinds:
                raise where.error(f"{type_name} is a scalar; a message type is needed here")
            return
        if type_name in EXTERNAL_TYPES:
            need = EXTERNAL_TYPES[type_name]
            if need not in pf.imports:
                raise where.error(f"{type_name} used but '{need}' is not in this section's imports")
            return
        full = type_name if "." in type_name else f"{pf.package}.{type_name}"
        if full not in defs or defs[full][0] == "service":
            raise where.error(f"unknown type {type_name!r}")
        kind, owner, _ = defs[full]
        if kind not in allowed_kinds:
            raise where.error(f"{type_name} is a {kind} type; not allowed here")
        if owner is not pf and owner.out_path not in resolved_imports[pf.out_path]:
            raise where.error(f"{type_name} is defined in {owner.name}.proto, "
                              f"which this section does not import")

    for pf in files:
        for item in pf.items:
            if isinstance(item, Message):
                for fld in item.fields:
                    check_type(pf, fld.type_name, fld.where, {"scalar", "message", "enum"})
            elif isinstance(item, Service):
                for meth in item.methods:
                    check_type(pf, meth.request, meth.where, {"message"})
                    check_type(pf, meth.response, meth.where, {"message"})
    return resolved_imports


def render(pf, imports, spec_name):
    out = [
        f"// Generated by tests/tools/spec2proto.py from {spec_name} (section {pf.name}.proto).",
        "// Do not edit: change the spec and regenerate.",
        'syntax = "proto3";',
        "",
        f"package {pf.package};",
        "",
    ]
    if imports:
        out += [f'import "{imp}";' for imp in imports] + [""]
    for item in pf.items:
        if isinstance(item, Message):
            if not item.fields:
                out.append(f"message {item.name} {{}}")
            else:
                out.append(f"message {item.name} {{")
                out += [f"  {f.proto_type()} {f.name} = {f.number};" for f in item.fields]
                out.append("}")
        elif isinstance(item, Enum):
            out.append(f"enum {item.name} {{")
            out += [f"  {name} = {number};" for name, number in item.values]
            out.append("}")
        else:
            out.append(f"service {item.name} {{")
            for m in item.methods:
                stream = "stream " if m.server_streaming else ""
                out.append(f"  rpc {m.name}({m.request}) returns ({stream}{m.response});")
            out.append("}")
        out.append("")
    return "\n".join(out)


def convert(spec_paths, outdir):
    """Parses every spec, checks them together, writes the .proto files; returns their paths."""
    files, origin = [], {}
    for path in spec_paths:
        for pf in parse_spec(path):
            files.append(pf)
            origin[pf.out_path] = os.path.basename(path)
    if not files:
        raise SystemExit("spec2proto: no '## name.proto (package `pkg`)' sections found")
    imports = resolve(files)
    written = []
    for pf in files:
        dest = os.path.join(outdir, pf.out_path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w", encoding="utf-8") as f:
            f.write(render(pf, imports[pf.out_path], origin[pf.out_path]))
        written.append(dest)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert the markdown wire contract to .proto files.")
    ap.add_argument("specs", nargs="+", metavar="SPEC.md")
    ap.add_argument("-o", "--outdir", required=True)
    args = ap.parse_args(argv)
    try:
        convert(args.specs, args.outdir)
    except SpecError as e:
        print(f"spec2proto: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
