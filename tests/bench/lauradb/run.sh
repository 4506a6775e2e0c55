#!/bin/bash
# run.sh — LauraDB benchmark: the document engine against SQLite on the same workloads,
# and LauraDB end-to-end over gRPC. Run on demand (`make bench-lauradb`, `make bench`),
# never from `make check`: about 1.5 minutes, and the figures depend on the machine, its
# disk's fsync and whatever else runs on it.
#
# How the comparison is kept fair: both engines are driven in-process by the same C
# program (ldb_bench.c), from the same threads, building the same documents, with a
# durable commit each (LauraDB's defaults: fsync per group commit; SQLite: WAL with
# synchronous=FULL) and the same secondary index on k (SQLite: an expression index on
# json_extract). Neither pays for a client library or a wire protocol, so the ratio is
# engine against engine. Driving SQLite from Python while LauraDB sits behind gRPC would
# compare Python's sqlite3 module with grpcio instead.
#
# The gRPC column is extra, not part of the ratio: the same workloads (grpc_load.py) sent
# to marchproxy with the lauradb plugin by 8 Python client processes. On a 2-core machine
# those clients take much of the CPU the server could use, so it is a floor for what the
# service does over the wire; the server's own CPU per phase is printed beside it.
#
# Workloads: bulk load (DOCS documents in batches of 1000, one client; docs/s), single-
# document inserts with a durable commit from 8 concurrent clients, point lookups on the
# indexed k, range queries on k sorted by k with limit 20, and a $group (SQLite: GROUP BY)
# over all DOCS documents; each timed workload runs BENCH_SECS seconds (default 4).
# Every answer is checked; a wrong one fails the run.
#
# Installs nothing (scripts/install-deps.sh has libsqlite3-dev, python3-grpcio and
# python3-bson). Everything it starts is stopped on exit; files go to a tmp dir (kept with
# BENCH_KEEP=1). Exit 0 when every run counted, 1 when one failed, 2 when something needed
# is missing.

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRCDIR=${MP_SRCDIR:-$(cd "$HERE/../../.." && pwd)}
BUILDDIR=${MP_BUILDDIR:-$SRCDIR/build}
SECS=${BENCH_SECS:-4}
CLIENTS=${BENCH_CLIENTS:-8}
DOCS=${BENCH_DOCS:-100000}
BATCH=1000
PY=/usr/bin/python3
PROTOC=${MP_PROTOC:-protoc}
GRPC_PY_PLUGIN=${MP_GRPC_PYTHON_PLUGIN:-/usr/bin/grpc_python_plugin}
PB_INCLUDE=${MP_PROTOBUF_INCLUDE:-/usr/include}
MP=$BUILDDIR/marchproxy
LDB_SO=$BUILDDIR/plugins/lauradb/.libs/lauradb.so
LDB_BENCH=$BUILDDIR/tests/bench/lauradb/ldb_bench

say() { printf '%s\n' "$*" >&2; }
need() { say "run.sh: $*"; exit 2; }

# ---------------------------------------------------------------- what must be there

[ -x "$MP" ] || need "$MP not built: make -C $BUILDDIR"
[ -f "$LDB_SO" ] || need "$LDB_SO not built: make -C $BUILDDIR"
[ -x "$LDB_BENCH" ] ||
    need "$LDB_BENCH not built: make -C $BUILDDIR tests/bench/lauradb/ldb_bench"
command -v "$PROTOC" >/dev/null || need "$PROTOC not found: apt-get install protobuf-compiler"
[ -x "$GRPC_PY_PLUGIN" ] ||
    need "$GRPC_PY_PLUGIN not found: apt-get install protobuf-compiler-grpc"
$PY -c 'import grpc, google.protobuf, bson' 2>/dev/null ||
    need "python3 grpc/bson missing: apt-get install python3-grpcio python3-protobuf python3-bson"

# ---------------------------------------------------------------- processes and cleanup

TMP=$(mktemp -d /tmp/mpbench-ldb.XXXXXX)
# shellcheck disable=SC2034  # filled and emptied by lib.sh's start and cleanup
PIDS=()

# shellcheck source=tests/bench/lib.sh
. "$HERE/../lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- engine against engine

# Other work on the machine skews every figure; the table says how busy it was.
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
say "run.sh: LauraDB engine vs SQLite in-process ($CLIENTS threads, ${SECS} s per workload)"
mkdir -p "$TMP/engines"
if ! "$LDB_BENCH" "$TMP/engines" -t "$CLIENTS" -d "$SECS" -n "$DOCS" -b "$BATCH" \
    >"$TMP/engines.out" 2>"$TMP/engines.err"; then
    cat "$TMP/engines.out" "$TMP/engines.err" >&2
    say "run.sh: ldb_bench failed"
    exit 1
fi
grep '^plan ' "$TMP/engines.out" >&2 || true
rm -rf "$TMP/engines" # a few hundred MiB of data and WAL

# ---------------------------------------------------------------- LauraDB over gRPC

mkdir -p "$TMP/stubs" "$TMP/mp/plugins" "$TMP/mp/state" "$TMP/mp/data"
"$PROTOC" -I "$SRCDIR/proto" -I "$PB_INCLUDE" --python_out="$TMP/stubs" \
    --grpc_python_out="$TMP/stubs" --plugin=protoc-gen-grpc_python="$GRPC_PY_PLUGIN" \
    "$SRCDIR"/proto/lauradb/common.proto "$SRCDIR"/proto/lauradb/routing.proto
touch "$TMP/stubs/lauradb/__init__.py"
chmod 0755 "$TMP/mp/plugins"
chmod 0700 "$TMP/mp/state"
cp "$LDB_SO" "$TMP/mp/plugins/lauradb.so"
read -r GRPC_PORT <<<"$(free_ports 1)"
# The same index as ldb_bench's, made by the plugin's `indexes` setting when it opens.
cat >"$TMP/mp/marchproxy.conf" <<EOF
# written by tests/bench/lauradb/run.sh
host: {
  workers = 1;
  log_level = "warn";
  plugin_dir = "$TMP/mp/plugins";
  state_dir = "$TMP/mp/state";
};
grpc: {
  address = "127.0.0.1:$GRPC_PORT";
};
instances: {
  ldb: {
    plugin = "lauradb";
    settings: {
      data_dir = "$TMP/mp/data";
      threads = 8;
      indexes = (
        { ns = "bench.docs"; keys = "{\"k\": 1}"; },
        { ns = "bench.single"; keys = "{\"k\": 1}"; }
      );
    };
  };
};
EOF
start_marchproxy "$TMP/mp/marchproxy.conf"
wait_listening "$GRPC_PORT" marchproxy

say "run.sh: LauraDB over gRPC ($CLIENTS Python client processes, ${SECS} s per workload)"
if ! $PY "$HERE/grpc_load.py" "$TMP/stubs" "127.0.0.1:$GRPC_PORT" "$MP_PID" -p "$CLIENTS" \
    -d "$SECS" -n "$DOCS" -b "$BATCH" >"$TMP/grpc.out" 2>"$TMP/grpc.err"; then
    cat "$TMP/grpc.out" "$TMP/grpc.err" >&2
    say "---- marchproxy log (last 30 lines) ----"
    tail -n 30 "$TMP/marchproxy.log" >&2 || true
    say "run.sh: grpc_load.py failed"
    exit 1
fi

# ---------------------------------------------------------------- the table

# fig ENGINE WORKLOAD: operations (documents for bulk) per second, or "-".
fig() {
    awk -v e="$1" -v w="$2" '$1 == "RESULT" && $2 == e && $3 == w && $5 > 0 {
        printf "%.0f", $4 / $5; found = 1 } END { if (!found) printf "-" }' \
        "$TMP/engines.out" "$TMP/grpc.out"
}
# srv_cpu WORKLOAD: the server's CPU during the gRPC phase, in % of one core.
srv_cpu() {
    awk -v w="$1" '$1 == "RESULT" && $3 == w && $5 > 0 { printf "%.0f%%", 100 * $6 / $5 }' \
        "$TMP/grpc.out"
}

echo
echo "LauraDB vs SQLite ($(nproc) CPUs; $DOCS documents; $CLIENTS clients; ${SECS} s per workload)"
printf '%-38s %10s %10s %8s %10s %8s\n' "workload (ops/s)" "LauraDB" "SQLite" \
    "LDB/SQL" "LDB gRPC" "srv CPU"
for w in bulk insert point range group; do
    case $w in
    bulk) label="bulk insert, batches of $BATCH (docs/s)" ;;
    insert) label="single inserts, durable, $CLIENTS clients" ;;
    point) label="indexed point lookups" ;;
    range) label="range on k, sort k, limit 20" ;;
    group) label="\$group over $DOCS docs" ;;
    esac
    l=$(fig lauradb $w)
    s=$(fig sqlite $w)
    printf '%-38s %10s %10s %8s %10s %8s\n' "$label" "$l" "$s" "$(ratio "$l" "$s")" \
        "$(fig grpc $w)" "$(srv_cpu $w)"
done
echo "LauraDB/SQLite: both engines in-process from the same C threads (ldb_bench)."
echo "LDB gRPC: marchproxy + lauradb plugin, Python grpcio clients on the same CPUs."
echo "Load average (1 min) before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1 /proc/loadavg)."
