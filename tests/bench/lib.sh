# lib.sh — shell helpers the benchmark scripts share (sourced, not run): starting and
# stopping the processes a run needs, waiting for a port, picking free ports, and reading
# CPU time from /proc. The script sourcing it sets TMP (its tmp dir), PY (a python3),
# PIDS=() and say(); `trap cleanup EXIT` is the script's to install.

# cleanup: every process started with `start` gets SIGTERM, then up to 5 s, then SIGKILL;
# TMP is removed unless BENCH_KEEP=1.
# shellcheck disable=SC2317  # called through the script's trap
cleanup() {
    local pid _
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "run.sh: files kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}

# start NAME CMD...: runs CMD in the background, output in $TMP/NAME.log; pid in LAST_PID.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    # shellcheck disable=SC2034  # read by the sourcing script
    LAST_PID=$!
}

# wait_listening PORT NAME: up to 10 s for something to accept on 127.0.0.1:PORT; exits
# the script (1) with the tail of $TMP/NAME.log when nothing does.
wait_listening() {
    local _
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    say "run.sh: $2 not accepting on 127.0.0.1:$1 after 10 s:"
    tail -n 20 "$TMP/$2.log" >&2 || true
    exit 1
}

# free_ports N: N loopback ports that were free, all held open together so they differ.
free_ports() {
    $PY - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# cpu_ticks PID: CPU time (user + system, clock ticks) of a process and its direct
# children (nginx works in a worker under its master); 0 once it is gone.
cpu_ticks() {
    local p sum=0 t
    for p in "$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
        t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}

# sys_busy_ticks: busy clock ticks of the whole machine (all CPUs, steal included). With
# the run's own processes taken out, what is left shows how much other work competed.
sys_busy_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# ratio A B: A/B with two decimals, or n/a when either is not a number or B is 0.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b
        else printf "n/a" }'
}

# start_marchproxy CONF: checks CONF with `$MP -t` (exit 2 with its reasons when it is
# refused), then starts $MP on it; its pid in MP_PID.
start_marchproxy() {
    "$MP" -t -c "$1" >"$TMP/mp-check.log" 2>&1 || {
        cat "$TMP/mp-check.log" >&2
        need "marchproxy rejects $1"
    }
    start marchproxy "$MP" -c "$1"
    # shellcheck disable=SC2034  # read by the sourcing script
    MP_PID=$LAST_PID
}
