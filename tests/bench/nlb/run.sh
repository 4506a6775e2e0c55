#!/bin/bash
# run.sh — L4 forwarding benchmark: the same load against three setups, one after the
# other, on loopback, and a table of the figures and ratios. Run on demand (`make bench`),
# never from `make check`: it takes about two minutes and its numbers depend on the
# machine and on whatever else is running on it.
#
#   direct:     tcp_load -> tcp_backend
#   haproxy:    tcp_load -> haproxy (mode tcp, nbthread 1, no logging) -> tcp_backend
#   marchproxy: tcp_load -> marchproxy (workers = 1; a tcp listener whose connections go
#               to an external module registered over NLBService) -> tcp_backend
#
# Workloads (the same for every setup):
#   short connections: BENCH_CONC concurrent connections, each connect, send BENCH_SIZE
#       bytes, read the echo, close; BENCH_WARMUP s uncounted, then BENCH_SECS s counted.
#   bulk stream: one connection, client -> backend only, 256 KiB writes for BENCH_SECS s;
#       the backend discards and at EOF reports how many bytes it got (see tcp_load.c).
#
# Every setup gets its own pair of backends (own ports), so TIME_WAIT sockets left by one
# setup's hundreds of thousands of connections never share a 4-tuple space with the next.
# Installs nothing. Everything it starts is stopped on exit (trap); files go to a tmp dir
# (kept with BENCH_KEEP=1). Exit 0 when every run completed without errors, 1 otherwise,
# 2 when something needed is missing. The product goals are reported, not enforced.

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRCDIR=${MP_SRCDIR:-$(cd "$HERE/../../.." && pwd)}
BUILDDIR=${MP_BUILDDIR:-$SRCDIR/build}
SECS=${BENCH_SECS:-10}
WARMUP=${BENCH_WARMUP:-1}
CONC=${BENCH_CONC:-64}
SIZE=${BENCH_SIZE:-64}
NSRC=${BENCH_SOURCES:-16}
WRITE_BYTES=$((256 * 1024))
CC=${BENCH_CC:-cc}
PY=/usr/bin/python3
# The same MP_ names the integration suite gets from the build (tests/Makefile.inc).
PROTOC=${MP_PROTOC:-protoc}
GRPC_PY_PLUGIN=${MP_GRPC_PYTHON_PLUGIN:-/usr/bin/grpc_python_plugin}
PB_INCLUDE=${MP_PROTOBUF_INCLUDE:-/usr/include}
MP=$BUILDDIR/marchproxy
SETUPS="direct haproxy marchproxy"

say() { printf '%s\n' "$*" >&2; }
need() { say "run.sh: $*"; exit 2; }

# ---------------------------------------------------------------- what must be there

HAPROXY=$(command -v haproxy || true)
[ -z "$HAPROXY" ] && [ -x /usr/sbin/haproxy ] && HAPROXY=/usr/sbin/haproxy
[ -n "$HAPROXY" ] || need "haproxy not found: apt-get install haproxy"
[ -x "$MP" ] || need "$MP not built: make -C $BUILDDIR"
command -v "$CC" >/dev/null || need "no C compiler ($CC)"
command -v "$PROTOC" >/dev/null || need "$PROTOC not found: apt-get install protobuf-compiler"
[ -x "$GRPC_PY_PLUGIN" ] ||
    need "$GRPC_PY_PLUGIN not found: apt-get install protobuf-compiler-grpc"
$PY -c 'import grpc, google.protobuf' 2>/dev/null ||
    need "python3 grpc not importable: apt-get install python3-grpcio python3-protobuf"

# ---------------------------------------------------------------- processes and cleanup

TMP=$(mktemp -d /tmp/mpbench.XXXXXX)
PIDS=()
MP_PID=
HA_PID=

# cleanup, start, wait_listening, free_ports, cpu_ticks, sys_busy_ticks
. "$HERE/../lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM


# wait_for FILE REGEX: up to 10 s for a line in FILE; prints the line.
wait_for() {
    local _
    for _ in $(seq 100); do
        if grep -m1 -E "$2" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    say "run.sh: /$2/ did not appear in $1 after 10 s:"
    tail -n 20 "$1" >&2 || true
    return 1
}





mp_log_tail() {
    say "---- marchproxy log (last 40 lines of $TMP/marchproxy.log) ----"
    tail -n 40 "$TMP/marchproxy.log" >&2 || true
    say "----"
}

# ---------------------------------------------------------------- build the tools

say "run.sh: building the load tools into $TMP"
$CC -O2 -Wall -Wextra -o "$TMP/tcp_backend" "$SRCDIR/tests/bench/tcp_backend.c" -lpthread
$CC -O2 -Wall -Wextra -o "$TMP/tcp_load" "$SRCDIR/tests/bench/tcp_load.c"

mkdir -p "$TMP/stubs"
"$PROTOC" -I "$SRCDIR/proto" -I "$PB_INCLUDE" --python_out="$TMP/stubs" \
    --grpc_python_out="$TMP/stubs" --plugin=protoc-gen-grpc_python="$GRPC_PY_PLUGIN" \
    "$SRCDIR"/proto/marchproxy/*.proto
# A regular package, so no other `marchproxy` directory on sys.path can merge into it.
touch "$TMP/stubs/marchproxy/__init__.py"

# ---------------------------------------------------------------- backends

declare -A ECHO_PORT SINK_PORT BE_PID
for s in $SETUPS; do
    for m in echo sink; do
        start "backend-$m-$s" "$TMP/tcp_backend" "$m" -p 0
        BE_PID[$m-$s]=$LAST_PID
        line=$(wait_for "$TMP/backend-$m-$s.log" '^ready ')
        port=$(echo "$line" | awk '{ print $4 }')
        if [ "$m" = echo ]; then ECHO_PORT[$s]=$port; else SINK_PORT[$s]=$port; fi
    done
done

read -r HA_ECHO HA_SINK MP_PORT GRPC_PORT <<<"$(free_ports 4)"

# ---------------------------------------------------------------- haproxy

# No `log` line anywhere: haproxy logs nothing. Timeouts generous enough never to cut a
# benchmark connection, short enough that a stuck one does not linger.
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

listen echo
    bind 127.0.0.1:$HA_ECHO
    server echo 127.0.0.1:${ECHO_PORT[haproxy]}

listen sink
    bind 127.0.0.1:$HA_SINK
    server sink 127.0.0.1:${SINK_PORT[haproxy]}
EOF
"$HAPROXY" -c -q -f "$TMP/haproxy.cfg" || need "haproxy rejects $TMP/haproxy.cfg"
start haproxy "$HAPROXY" -f "$TMP/haproxy.cfg" -db
HA_PID=$LAST_PID
wait_listening "$HA_ECHO" haproxy
wait_listening "$HA_SINK" haproxy

# ---------------------------------------------------------------- marchproxy

mkdir -p "$TMP/mp/plugins" "$TMP/mp/state"
chmod 0755 "$TMP/mp/plugins"
chmod 0700 "$TMP/mp/state"
cat >"$TMP/mp/marchproxy.conf" <<EOF
# written by tests/bench/nlb/run.sh
host: {
  workers = 1;
  log_level = "warn";
  plugin_dir = "$TMP/mp/plugins";
  state_dir = "$TMP/mp/state";
  drain_timeout_ms = 1000;
};
grpc: {
  address = "127.0.0.1:$GRPC_PORT";
};
listeners = (
  { name = "l4"; address = "127.0.0.1:$MP_PORT"; protocol = "tcp"; }
);
EOF
"$MP" -t -c "$TMP/mp/marchproxy.conf" >"$TMP/mp-check.log" 2>&1 || {
    cat "$TMP/mp-check.log" >&2
    need "marchproxy rejects $TMP/mp/marchproxy.conf"
}
start marchproxy "$MP" -c "$TMP/mp/marchproxy.conf"
MP_PID=$LAST_PID
wait_listening "$MP_PORT" marchproxy

# mp_register ADDR: points the external module at a backend; the host picks it up with
# the next routing snapshot, hence the pause. Returns 1 (logs shown) when that fails.
mp_register() {
    if ! $PY "$HERE/mpctl.py" "$TMP/stubs" "127.0.0.1:$GRPC_PORT" register backend "$1" \
        >>"$TMP/mpctl.log" 2>&1; then
        cat "$TMP/mpctl.log" >&2
        mp_log_tail
        return 1
    fi
    sleep 0.3
}
mp_register "127.0.0.1:${ECHO_PORT[marchproxy]}" || exit 1

declare -A TARGET_ECHO=([direct]=${ECHO_PORT[direct]} [haproxy]=$HA_ECHO [marchproxy]=$MP_PORT)
declare -A TARGET_SINK=([direct]=${SINK_PORT[direct]} [haproxy]=$HA_SINK [marchproxy]=$MP_PORT)
declare -A PROXY_PID=([direct]="" [haproxy]=$HA_PID [marchproxy]=$MP_PID)

# A quick correctness probe of every echo path before measuring anything: a setup that
# does not work at all is reported as such instead of as a zero.
for s in $SETUPS; do
    if ! "$TMP/tcp_load" conn -p "${TARGET_ECHO[$s]}" -c 4 -d 0.3 -w 0 -n "$NSRC" \
        >"$TMP/probe-$s.log" 2>&1; then
        say "run.sh: $s does not echo:"
        cat "$TMP/probe-$s.log" >&2
        if [ "$s" = marchproxy ]; then mp_log_tail; fi
        exit 1
    fi
done

# ---------------------------------------------------------------- measuring

STATUS=0
TICK=$(getconf CLK_TCK)
declare -A R GONE

# measure SETUP WORKLOAD CMD...: runs the load, keeps its RESULT line and the proxy's CPU.
measure() {
    local s=$1 w=$2 pid=${PROXY_PID[$1]} be c0=0 c1=0 b0 b1 m0 m1 t0 t1 rc=0
    shift 2
    if [ "$w" = conn ]; then be=${BE_PID[echo-$s]}; else be=${BE_PID[sink-$s]}; fi
    say "run.sh: $w -> $s ..."
    if [ -n "$pid" ]; then c0=$(cpu_ticks "$pid"); fi
    b0=$(cpu_ticks "$be")
    m0=$(sys_busy_ticks)
    t0=$(date +%s.%N)
    "$@" >"$TMP/$w-$s.out" 2>"$TMP/$w-$s.err" || rc=$?
    t1=$(date +%s.%N)
    m1=$(sys_busy_ticks)
    b1=$(cpu_ticks "$be")
    # A process that is gone has no CPU figure (its ticks would read as 0).
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then c1=$(cpu_ticks "$pid"); else c1=$c0; fi
    R[$s.$w.result]=$(grep -m1 '^RESULT ' "$TMP/$w-$s.out" || echo "RESULT none")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        R[$s.$w.cpu]=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v x="$t0" -v y="$t1" \
            'BEGIN { printf "%.0f%%", 100 * (b - a) / t / (y - x) }')
    else
        R[$s.$w.cpu]=-
    fi
    R[$s.$w.becpu]=$(awk -v a="$b0" -v b="$b1" -v t="$TICK" -v x="$t0" -v y="$t1" \
        'BEGIN { printf "%.0f%%", 100 * (b - a) / t / (y - x) }')
    # Everything busy that was not the proxy, the backend or the client.
    R[$s.$w.other]=$(awk -v m="$((m1 - m0))" -v p="$((c1 - c0))" -v b="$((b1 - b0))" \
        -v t="$TICK" -v x="$t0" -v y="$t1" -v c="$(field "$s.$w" client_cpu_pct)" \
        'BEGIN { o = 100 * (m - p - b) / t / (y - x) - c; if (o < 0) o = 0
                 printf "%.0f%%", o }')
    if [ "$rc" -ne 0 ]; then
        STATUS=1
        R[$s.$w.failed]=1
        say "run.sh: $w -> $s FAILED (exit $rc):"
        cat "$TMP/$w-$s.err" >&2
        if [ "$s" = marchproxy ]; then mp_log_tail; fi
    elif [ -s "$TMP/$w-$s.err" ]; then
        cat "$TMP/$w-$s.err" >&2
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        local st=0
        wait "$pid" 2>/dev/null || st=$?
        if [ "$st" -gt 128 ]; then
            say "run.sh: the $s process died during $w: signal $((st - 128))"
        else
            say "run.sh: the $s process exited during $w with status $st"
        fi
        if [ "$s" = marchproxy ]; then mp_log_tail; fi
        GONE[$s]=1
        STATUS=1
    fi
    sleep 1
}

field() { # field SETUP.WORKLOAD KEY
    local v
    v=$(echo "${R[$1.result]}" | tr ' ' '\n' | sed -n "s/^$2=//p")
    echo "${v:-?}"
}

# skip SETUP WORKLOAD WHY: a run that cannot happen still gets its row in the table.
skip() {
    say "run.sh: $2 -> $1 skipped: $3"
    R[$1.$2.result]="RESULT none"
    R[$1.$2.failed]=1
    STATUS=1
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for s in $SETUPS; do
    if [ -n "${GONE[$s]:-}" ]; then
        skip "$s" conn "the process is gone"
        continue
    fi
    measure "$s" conn "$TMP/tcp_load" conn -p "${TARGET_ECHO[$s]}" -c "$CONC" -s "$SIZE" \
        -d "$SECS" -w "$WARMUP" -n "$NSRC"
done
if [ -z "${GONE[marchproxy]:-}" ] && ! mp_register "127.0.0.1:${SINK_PORT[marchproxy]}"; then
    GONE[marchproxy]=1
fi
for s in $SETUPS; do
    if [ -n "${GONE[$s]:-}" ]; then
        skip "$s" stream "the process is gone or the backend could not be registered"
        continue
    fi
    measure "$s" stream "$TMP/tcp_load" stream -p "${TARGET_SINK[$s]}" -d "$SECS" \
        -b "$WRITE_BYTES"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the report

ratio() { # ratio A B: A/B with two decimals, or n/a
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b
        else printf "n/a" }'
}
gb() { # bytes -> GB
    awk -v b="$1" 'BEGIN { if (b ~ /^[0-9]+$/) printf "%.2f", b / 1e9; else printf "?" }'
}
ms() { # microseconds -> milliseconds
    awk -v u="$1" 'BEGIN { if (u ~ /^[0-9]+$/) printf "%.3f", u / 1000; else printf "?" }'
}

GIT=$(git -C "$SRCDIR" rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(git -C "$SRCDIR" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    GIT="$GIT (+ uncommitted changes)"
fi

echo
echo "== L4 forwarding benchmark ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MP_BUILT=$(date -u -r "$MP" '+%Y-%m-%d %H:%M:%S UTC')
MP_SUM=$(sha256sum "$MP" | cut -c1-16)
HA_VERSION=$("$HAPROXY" -v | head -n1 | awk '{ print $3 }')
echo "machine:    nproc=$(nproc)  kernel=$(uname -r)  cpu=$CPU_MODEL"
echo "load avg:   before $LOAD_BEFORE, after $LOAD_AFTER (other work skews all figures)"
echo "marchproxy: $MP, git $GIT, workers = 1, external module over the byte pump"
echo "            binary built $MP_BUILT, sha256 $MP_SUM"
grep -E '^(CFLAGS|AM_CFLAGS|WARN_CFLAGS|SANITIZER_CFLAGS) =' "$BUILDDIR/Makefile" |
    sed 's/^/            /'
echo "haproxy:    $HA_VERSION, mode tcp, nbthread 1, no logging"
echo "short conn: $CONC concurrent, $SIZE B echoed, ${WARMUP} s warm-up + ${SECS} s counted,"
echo "            sources rotating over $NSRC loopback addresses"
echo "bulk:       1 connection for ${SECS} s, client -> backend (discarded),"
echo "            $((WRITE_BYTES / 1024)) KiB writes"
echo "CPU:        CPU time / wall time of each run, 100% = one of the $(nproc) cores; other ="
echo "            the machine's busy time minus proxy, backend and client (other processes,"
echo "            kernel threads such as ksoftirqd): high means the figures were squeezed"
echo

printf '%-20s %9s %8s %8s %8s %7s %7s %7s %7s %7s\n' "short connections" "conn/s" \
    "p50 ms" "p99 ms" "max ms" "errors" "proxy" "backend" "client" "other"
for s in $SETUPS; do
    k=$s.conn
    printf '%-20s %9s %8s %8s %8s %7s %7s %7s %7s %7s%s\n' "$s" "$(field "$k" conn_per_s)" \
        "$(ms "$(field "$k" p50_us)")" "$(ms "$(field "$k" p99_us)")" \
        "$(ms "$(field "$k" max_us)")" \
        "$(field "$k" errors)" "${R[$k.cpu]:--}" "${R[$k.becpu]:--}" \
        "$(field "$k" client_cpu_pct)%" "${R[$k.other]:--}" "${R[$k.failed]:+  FAILED}"
done
for b in haproxy direct; do
    printf '%-20s %9s %8s %8s\n' "marchproxy/$b" \
        "$(ratio "$(field marchproxy.conn conn_per_s)" "$(field $b.conn conn_per_s)")" \
        "$(ratio "$(field marchproxy.conn p50_us)" "$(field $b.conn p50_us)")" \
        "$(ratio "$(field marchproxy.conn p99_us)" "$(field $b.conn p99_us)")"
done
echo

printf '%-20s %9s %8s %7s %7s %7s %7s %7s\n' "bulk stream" "Gbit/s" "GB" "errors" "proxy" \
    "backend" "client" "other"
for s in $SETUPS; do
    k=$s.stream
    printf '%-20s %9s %8s %7s %7s %7s %7s %7s%s\n' "$s" "$(field "$k" gbit_s)" \
        "$(gb "$(field "$k" received)")" \
        "$(field "$k" errors)" "${R[$k.cpu]:--}" "${R[$k.becpu]:--}" \
        "$(field "$k" client_cpu_pct)%" "${R[$k.other]:--}" "${R[$k.failed]:+  FAILED}"
done
for b in haproxy direct; do
    printf '%-20s %9s\n' "marchproxy/$b" \
        "$(ratio "$(field marchproxy.stream gbit_s)" "$(field $b.stream gbit_s)")"
done
echo

goal() { # goal TEXT RATIO MIN
    awk -v t="$1" -v r="$2" -v m="$3" 'BEGIN {
        if (r == "n/a") v = "no figure"; else v = (r + 0 >= m + 0) ? "met" : "NOT met"
        printf "goal: %-44s %6s (need >= %s): %s\n", t, r, m, v }'
}
goal "marchproxy conn/s >= haproxy conn/s" \
    "$(ratio "$(field marchproxy.conn conn_per_s)" "$(field haproxy.conn conn_per_s)")" 1.00
goal "marchproxy bulk >= 90% of direct" \
    "$(ratio "$(field marchproxy.stream gbit_s)" "$(field direct.stream gbit_s)")" 0.90

# A run that had to share the machine is flagged, so its figures are not taken at face value.
for k in $(printf '%s\n' "${!R[@]}" | sed -n 's/\.other$//p' | sort); do
    o=${R[$k.other]%\%}
    if [ "$o" -gt 25 ]; then
        echo "warning: $k ran beside ${o}% of a core of other work; rerun on a quiet machine"
    fi
done

if [ -s "$TMP/marchproxy.log" ]; then
    echo
    echo "marchproxy logged (log_level warn) $(wc -l <"$TMP/marchproxy.log") line(s); last 20:"
    tail -n 20 "$TMP/marchproxy.log"
fi
if [ -s "$TMP/haproxy.log" ]; then
    echo
    echo "haproxy printed $(wc -l <"$TMP/haproxy.log") line(s); last 10:"
    tail -n 10 "$TMP/haproxy.log"
fi
exit $STATUS
