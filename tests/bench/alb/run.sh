#!/bin/bash
# run.sh — HTTP/1.1 reverse-proxy benchmark: the same wrk load through each L7 proxy in
# turn, on loopback, against the same nginx backend, and a table of the figures and of
# marchproxy's ratios to nginx and haproxy. Run on demand (`make bench-alb`, `make bench`),
# never from `make check`: about seven minutes, and the numbers depend on the machine and on
# whatever else runs on it.
#
#   direct:     wrk -> backend
#   nginx:      wrk -> nginx (1 worker, proxy_pass, upstream keepalive 64) -> backend
#   haproxy:    wrk -> haproxy (mode http, nbthread 1, http-reuse always) -> backend
#   marchproxy: wrk -> marchproxy (workers = 1, a listener bound to protocol http, routed
#               to an instance of the ALB plugin) -> backend
# and the same three proxies terminating TLS (wrk -> https) with the same certificate;
# marchproxy's TLS listener is bound to protocol https and routed to the same ALB
# instance, whose tls { certificates } names that certificate.
#
# The backend is nginx answering every request with the same 1 KiB body (1 worker,
# keep-alive, access_log off). Load: wrk, BENCH_THREADS threads, BENCH_CONNS keep-alive
# connections, BENCH_WARMUP s uncounted then BENCH_SECS s counted, --latency for the
# percentiles. The setups take turns, BENCH_ROUNDS rounds of all of them, and the table
# gives each setup's median over its rounds (a machine this small swings by 10 % from one
# run to the next; taking turns spreads that over all setups alike). A run only counts
# when wrk saw no non-2xx/3xx answer and no socket error, and every setup must first
# return the backend's exact body to curl.
#
# Installs nothing (scripts/install-deps.sh has nginx, haproxy, wrk). Everything it starts
# is stopped on exit; files go to a tmp dir (kept with BENCH_KEEP=1). Exit 0 when every
# run counted, 1 when one failed or was flagged, 2 when something needed is missing.

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRCDIR=${MP_SRCDIR:-$(cd "$HERE/../../.." && pwd)}
BUILDDIR=${MP_BUILDDIR:-$SRCDIR/build}
SECS=${BENCH_SECS:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-5}
BODY_BYTES=1024
PY=/usr/bin/python3
MP=$BUILDDIR/marchproxy
ALB_SO=$BUILDDIR/plugins/alb/.libs/alb.so
PLAIN_SETUPS="direct nginx haproxy marchproxy"
TLS_SETUPS="nginx haproxy marchproxy"

say() { printf '%s\n' "$*" >&2; }
need() { say "run.sh: $*"; exit 2; }

# ---------------------------------------------------------------- what must be there

tool() { # tool NAME: its path (PATH or /usr/sbin), or empty
    command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true
}
NGINX=$(tool nginx)
HAPROXY=$(tool haproxy)
WRK=$(tool wrk)
[ -n "$NGINX" ] || need "nginx not found: apt-get install nginx"
[ -n "$HAPROXY" ] || need "haproxy not found: apt-get install haproxy"
[ -n "$WRK" ] || need "wrk not found: apt-get install wrk"
command -v curl >/dev/null || need "curl not found: apt-get install curl"
command -v openssl >/dev/null || need "openssl not found: apt-get install openssl"
[ -x "$MP" ] || need "$MP not built: make -C $BUILDDIR"
[ -f "$ALB_SO" ] || need "$ALB_SO not built: make -C $BUILDDIR"

# ---------------------------------------------------------------- processes and cleanup

TMP=$(mktemp -d /tmp/mpbench-alb.XXXXXX)
PIDS=()

# shellcheck source=tests/bench/lib.sh
. "$HERE/../lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r BE_PORT NG_PORT NG_TLS HA_PORT HA_TLS MP_PORT MP_TLS GRPC_PORT <<<"$(free_ports 8)"

# ---------------------------------------------------------------- nginx: backend and proxy

# A root master hands requests to workers running as `user` (nobody by default), which
# could not read the tmp dir; as an ordinary user the directive would only warn.
NGINX_USER=
if [ "$(id -u)" = 0 ]; then NGINX_USER="user root root;"; fi

# nginx_conf DIR HTTP-BLOCK-BODY: a complete config with everything under DIR.
nginx_conf() {
    mkdir -p "$1/tmp"
    cat >"$1/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 75s;
    # wrk's and the proxies' connections stay open for the whole run
    keepalive_requests 1000000;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
$2
}
EOF
    "$NGINX" -t -q -p "$1" -c "$1/nginx.conf" >"$1/check.log" 2>&1 || {
        cat "$1/check.log" >&2
        need "nginx rejects $1/nginx.conf"
    }
}

BODY=$(head -c $((BODY_BYTES - 1)) /dev/zero | tr '\0' 'x')
mkdir -p "$TMP/backend" "$TMP/nginx" "$TMP/tls"
nginx_conf "$TMP/backend" "    server {
        listen 127.0.0.1:$BE_PORT;
        location / { return 200 \"$BODY\\n\"; }
    }"

# One certificate for every TLS setup: ECDSA P-256, self-signed, for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 ||
    { cat "$TMP/tls/openssl.log" >&2; need "openssl could not make a test certificate"; }
cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" >"$TMP/tls/both.pem"

nginx_conf "$TMP/nginx" "    upstream backend {
        server 127.0.0.1:$BE_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NG_PORT;
        listen 127.0.0.1:$NG_TLS ssl;
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"

start backend "$NGINX" -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g "daemon off;"
BE_PID=$LAST_PID
start nginx "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g "daemon off;"
NG_PID=$LAST_PID

# ---------------------------------------------------------------- haproxy

# No `log` line: haproxy logs nothing. Timeouts long enough never to cut a run.
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always

frontend web
    bind 127.0.0.1:$HA_PORT
    bind 127.0.0.1:$HA_TLS ssl crt $TMP/tls/both.pem
    default_backend backend

backend backend
    server b1 127.0.0.1:$BE_PORT
EOF
"$HAPROXY" -c -q -f "$TMP/haproxy.cfg" || need "haproxy rejects $TMP/haproxy.cfg"
start haproxy "$HAPROXY" -f "$TMP/haproxy.cfg" -db
HA_PID=$LAST_PID

# ---------------------------------------------------------------- marchproxy

mkdir -p "$TMP/mp/plugins" "$TMP/mp/state"
chmod 0755 "$TMP/mp/plugins"
chmod 0700 "$TMP/mp/state"
install -m 0644 "$ALB_SO" "$TMP/mp/plugins/alb.so"
cat >"$TMP/mp/marchproxy.conf" <<EOF
# written by tests/bench/alb/run.sh
host: {
  workers = 1;
  log_level = "warn";
  plugin_dir = "$TMP/mp/plugins";
  state_dir = "$TMP/mp/state";
  autoload = false;
  drain_timeout_ms = 1000;
};
grpc: {
  address = "127.0.0.1:$GRPC_PORT";
};
listeners = (
  { name = "http"; address = "127.0.0.1:$MP_PORT"; protocol = "http"; },
  { name = "https"; address = "127.0.0.1:$MP_TLS"; protocol = "https"; }
);
routes = (
  { id = "all-http"; protocol = "http"; target = "alb"; },
  { id = "all-https"; protocol = "https"; target = "alb"; }
);
instances: {
  alb: {
    plugin = "alb";
    settings: {
      upstreams: {
        backend: { servers = [ "127.0.0.1:$BE_PORT" ]; balance = "round-robin"; };
      };
      routes = ( { upstream = "backend"; } );
      tls: {
        certificates = ( { cert = "$TMP/tls/cert.pem"; key = "$TMP/tls/key.pem"; } );
      };
    };
  };
};
EOF
start_marchproxy "$TMP/mp/marchproxy.conf"

wait_listening "$BE_PORT" backend
wait_listening "$NG_PORT" nginx
wait_listening "$HA_PORT" haproxy
wait_listening "$MP_PORT" marchproxy
wait_listening "$MP_TLS" marchproxy-tls

declare -A URL=(
    [direct]=http://127.0.0.1:$BE_PORT/ [nginx]=http://127.0.0.1:$NG_PORT/
    [haproxy]=http://127.0.0.1:$HA_PORT/ [marchproxy]=http://127.0.0.1:$MP_PORT/
    [nginx-tls]=https://127.0.0.1:$NG_TLS/ [haproxy-tls]=https://127.0.0.1:$HA_TLS/
    [marchproxy-tls]=https://127.0.0.1:$MP_TLS/
)
declare -A PROXY_PID=([direct]="" [nginx]=$NG_PID [haproxy]=$HA_PID [marchproxy]=$MP_PID
    [nginx-tls]=$NG_PID [haproxy-tls]=$HA_PID [marchproxy-tls]=$MP_PID)
declare -A LOGNAME=([nginx]=nginx/error.log [haproxy]=haproxy.log [marchproxy]=marchproxy.log)

show_log() { # show_log SETUP: the tail of the proxy's log, when it has one
    local f=${LOGNAME[${1%-tls}]:-}
    if [ -n "$f" ] && [ -s "$TMP/$f" ]; then
        say "---- $1: last 20 lines of $TMP/$f ----"
        tail -n 20 "$TMP/$f" >&2
        say "----"
    fi
}

# ---------------------------------------------------------------- measuring

RUNS=""
for s in $PLAIN_SETUPS; do RUNS="$RUNS $s"; done
for s in $TLS_SETUPS; do RUNS="$RUNS $s-tls"; done

STATUS=0
TICK=$(getconf CLK_TCK)
EXPECT=$(printf '%s\n' "$BODY" | sha256sum | cut -d' ' -f1)
declare -A R

# A setup that does not return the backend's exact body is reported as broken, never as
# a (suspiciously fast) figure.
probe() {
    local got
    got=$(curl -sS --noproxy '*' -k --max-time 5 -o - "${URL[$1]}" 2>"$TMP/probe-$1.err" |
        sha256sum | cut -d' ' -f1)
    [ "$got" = "$EXPECT" ]
}

# ms VALUE-WITH-UNIT: wrk's "812.00us" / "1.52ms" / "1.01s" / "2.00m" in milliseconds.
ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
        if (f < 0 || v == "") printf "?"; else printf "%.3f", n * f }'
}

# measure RUN ROUND: warm-up, then the counted wrk run; keeps its figures and CPU shares
# in R[RUN.KEY.ROUND] (the report takes the medians over the rounds).
measure() {
    local run=$1 k=$2 pid=${PROXY_PID[$1]} c0=0 c1=0 b0 b1 m0 m1 t0 t1 rc=0 out err
    out=$TMP/wrk-$run-$k.out
    err=$TMP/wrk-$run-$k.err
    say "run.sh: round $k: $run ..."
    "$WRK" -t "$THREADS" -c "$CONNS" -d "${WARMUP}s" --timeout 5s "${URL[$run]}" \
        >"$TMP/warmup-$run-$k.out" 2>&1 || true
    if [ -n "$pid" ]; then c0=$(cpu_ticks "$pid"); fi
    b0=$(cpu_ticks "$BE_PID")
    m0=$(sys_busy_ticks)
    t0=$(date +%s.%N)
    # bash's `time` gives wrk's own CPU use (user and system seconds) on stderr.
    {
        TIMEFORMAT='WRKCPU %U %S'
        time "$WRK" -t "$THREADS" -c "$CONNS" -d "${SECS}s" --timeout 5s --latency \
            "${URL[$run]}" >"$out" 2>"$err"
    } 2>"$TMP/wrk-$run-$k.time" || rc=$?
    t1=$(date +%s.%N)
    m1=$(sys_busy_ticks)
    b1=$(cpu_ticks "$BE_PID")
    if [ -n "$pid" ]; then c1=$(cpu_ticks "$pid"); fi

    local rps p50 p99 requests non2xx sockerr wall cl
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    requests=$(awk '/requests in/ { print $1 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    non2xx=${non2xx:-0}
    # "Socket errors: connect 0, read 0, write 0, timeout 0" appears only when one is not 0
    sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    sockerr=${sockerr:-0}
    R[$run.rps.$k]=$rps
    R[$run.p50.$k]=$p50
    R[$run.p99.$k]=$p99
    R[$run.non2xx]=$((${R[$run.non2xx]:-0} + non2xx))
    wall=$(awk -v x="$t0" -v y="$t1" 'BEGIN { print y - x }')
    cl=$(awk '/^WRKCPU/ { print $2 + $3 }' "$TMP/wrk-$run-$k.time")
    R[$run.cpu.$k]=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v w="$wall" \
        'BEGIN { printf "%.0f", 100 * (b - a) / t / w }')
    # The proxy's CPU time per request: what decides its rate once it has a core to
    # itself, whatever else shares this machine's cores.
    R[$run.uspr.$k]=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="${requests:-0}" \
        'BEGIN { if (n > 0) printf "%.1f", 1e6 * (b - a) / t / n; else printf "?" }')
    R[$run.becpu.$k]=$(awk -v a="$b0" -v b="$b1" -v t="$TICK" -v w="$wall" \
        'BEGIN { printf "%.0f", 100 * (b - a) / t / w }')
    R[$run.clcpu.$k]=$(awk -v c="${cl:-0}" -v w="$wall" 'BEGIN { printf "%.0f", 100 * c / w }')
    # Everything busy that was not the proxy, the backend or wrk: other processes.
    R[$run.other.$k]=$(awk -v m="$((m1 - m0))" -v p="$((c1 - c0))" -v b="$((b1 - b0))" \
        -v c="${cl:-0}" -v t="$TICK" -v w="$wall" \
        'BEGIN { o = 100 * ((m - p - b) / t - c) / w; if (o < 0) o = 0; printf "%.0f", o }')

    local why=""
    if [ "$rc" -ne 0 ]; then
        why="wrk exit $rc: $(head -c 300 "$err")"
    elif [ -z "$rps" ]; then
        why="no Requests/sec in wrk's output"
    elif [ "$non2xx" != 0 ]; then
        why="$non2xx non-2xx/3xx answers"
    elif [ "$sockerr" != 0 ]; then
        why="socket errors: $(grep 'Socket errors' "$out" | sed 's/^ *//')"
    elif [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        why="the proxy process is gone"
    fi
    if [ -n "$why" ]; then
        R[$run.flag]="INVALID (round $k): $why"
        STATUS=1
        say "run.sh: $run does not count: $why"
        show_log "$run"
    fi
    sleep 1
}

# median V...: the middle value as it was written (the mean of the middle two for an
# even count); "-" when none is a number.
median() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{ v[n++] = $1 }
        END {
            if (!n) print "-"
            else if (n % 2) print v[(n - 1) / 2]
            else printf "%.3f\n", (v[n / 2 - 1] + v[n / 2]) / 2 }'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for run in $RUNS; do
    if ! probe "$run"; then
        R[$run.flag]="FAILED: curl did not get the backend's body ($(head -c 200 \
            "$TMP/probe-$run.err"))"
        STATUS=1
        say "run.sh: $run: ${R[$run.flag]}"
        show_log "$run"
    fi
done
for k in $(seq "$ROUNDS"); do
    for run in $RUNS; do
        if [ -z "${R[$run.flag]:-}" ]; then measure "$run" "$k"; fi
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The medians the table and the ratios use; each round's req/s are listed too.
for run in $RUNS; do
    for key in rps p50 p99 cpu uspr becpu clcpu other; do
        vals=()
        for k in $(seq "$ROUNDS"); do vals+=("${R[$run.$key.$k]:-}"); done
        R[$run.$key]=$(median "${vals[@]}")
    done
    for key in cpu becpu clcpu other; do
        if [ "${R[$run.$key]}" != - ]; then R[$run.$key]="${R[$run.$key]}%"; fi
    done
    R[$run.rounds]=$(for k in $(seq "$ROUNDS"); do printf '%s ' "${R[$run.rps.$k]:--}"; done)
    if [ -z "${PROXY_PID[$run]}" ]; then R[$run.cpu]=-; R[$run.uspr]=-; fi
done

# ---------------------------------------------------------------- the report

# A figure that did not count is not used in a ratio.
fig() { if [ -z "${R[$1.flag]:-}" ]; then echo "${R[$1.$2]:-}"; fi; }

GIT=$(git -C "$SRCDIR" rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(git -C "$SRCDIR" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    GIT="$GIT (+ uncommitted changes)"
fi
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

echo
echo "== ALB (HTTP/1.1 reverse proxy) benchmark ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
echo "machine:    nproc=$(nproc)  kernel=$(uname -r)  cpu=$CPU_MODEL"
echo "load avg:   before $LOAD_BEFORE, after $LOAD_AFTER (other work skews all figures)"
echo "marchproxy: $MP (source $SRCDIR, git $GIT)"
echo "            workers = 1, listener protocol http -> ALB plugin $ALB_SO"
echo "            binary built $(date -u -r "$MP" '+%Y-%m-%d %H:%M:%S UTC'), sha256" \
    "$(sha256sum "$MP" | cut -c1-16)"
grep -E '^(CFLAGS|AM_CFLAGS|WARN_CFLAGS|SANITIZER_CFLAGS) =' "$BUILDDIR/Makefile" |
    sed 's/^/            /'
if grep -Eq '^SANITIZER_CFLAGS = .*sanitize' "$BUILDDIR/Makefile"; then
    echo "            WARNING: a sanitizer build; its figures say nothing about a release"
fi
echo "nginx:      $("$NGINX" -v 2>&1 | sed 's/.*version: //') (Debian package), 1 worker," \
    "proxy_pass, upstream keepalive 64"
echo "haproxy:    $("$HAPROXY" -v | head -n1 | awk '{ print $3 }') (Debian package)," \
    "mode http, nbthread 1, http-reuse always"
echo "backend:    nginx, 1 worker, ${BODY_BYTES} B body, keep-alive, access_log off"
echo "load:       $("$WRK" -v 2>&1 | head -n1 | awk '{ print $1, $2 }'), $THREADS threads," \
    "$CONNS keep-alive connections, ${WARMUP} s warm-up + ${SECS} s counted;" \
    "$ROUNDS rounds taking turns, medians shown"
echo "TLS:        ECDSA P-256 self-signed, wrk's OpenSSL defaults (TLS 1.3); connections"
echo "            are kept, so the figures are mostly record encryption, not handshakes"
echo "CPU:        CPU time / wall time, 100% = one of the $(nproc) cores; other = the machine's"
echo "            busy time minus proxy, backend and wrk (other processes, kernel threads);"
echo "            us/req = the proxy's CPU time per request"
echo

printf '%-16s %10s %9s %9s %6s %6s %7s %7s %6s %6s  %s\n' "setup" "req/s" "p50 ms" \
    "p99 ms" "non2xx" "proxy" "us/req" "backend" "wrk" "other" "req/s per round"
for run in $RUNS; do
    printf '%-16s %10s %9s %9s %6s %6s %7s %7s %6s %6s  %s\n' "$run" "${R[$run.rps]:--}" \
        "${R[$run.p50]:--}" "${R[$run.p99]:--}" "${R[$run.non2xx]:--}" \
        "${R[$run.cpu]:--}" "${R[$run.uspr]:--}" "${R[$run.becpu]:--}" \
        "${R[$run.clcpu]:--}" "${R[$run.other]:--}" "${R[$run.flag]:-${R[$run.rounds]}}"
done
echo
printf '%-26s %8s %8s %8s %8s\n' "ratio (plain HTTP)" "req/s" "p50" "p99" "us/req"
for b in nginx haproxy direct; do
    printf '%-26s %8s %8s %8s %8s\n' "marchproxy/$b" \
        "$(ratio "$(fig marchproxy rps)" "$(fig $b rps)")" \
        "$(ratio "$(fig marchproxy p50)" "$(fig $b p50)")" \
        "$(ratio "$(fig marchproxy p99)" "$(fig $b p99)")" \
        "$(ratio "$(fig marchproxy uspr)" "$(fig $b uspr)")"
done
printf '%-26s %8s %8s %8s %8s\n' "ratio (TLS)" "req/s" "p50" "p99" "us/req"
for b in nginx haproxy; do
    printf '%-26s %8s %8s %8s %8s\n' "marchproxy-tls/$b-tls" \
        "$(ratio "$(fig marchproxy-tls rps)" "$(fig $b-tls rps)")" \
        "$(ratio "$(fig marchproxy-tls p50)" "$(fig $b-tls p50)")" \
        "$(ratio "$(fig marchproxy-tls p99)" "$(fig $b-tls p99)")" \
        "$(ratio "$(fig marchproxy-tls uspr)" "$(fig $b-tls uspr)")"
done
echo "(req/s above 1 is better for marchproxy; latency and us/req below 1 are)"

for run in $RUNS; do
    o=${R[$run.other]:-0%}
    o=${o%\%}
    if [ "$o" != - ] && [ "$o" -gt 25 ]; then
        echo "warning: $run ran beside ${o}% of a core of other work; rerun on a quiet machine"
    fi
done
if [ -s "$TMP/marchproxy.log" ]; then
    echo
    echo "marchproxy logged (log_level warn) $(wc -l <"$TMP/marchproxy.log") line(s); last 10:"
    tail -n 10 "$TMP/marchproxy.log"
fi
exit $STATUS
