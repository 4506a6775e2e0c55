#!/bin/bash
# capture-sniff-fixtures.sh — recaptures every fixture in tests/unit/fixtures/sniff/
# from the real clients, over loopback only, with capture-first-bytes.py standing in
# for the server. Run it after a client upgrade to see whether what they send changed;
# the README there records the versions the committed files came from.
#
#   tests/tools/capture-sniff-fixtures.sh [OUTDIR]
#
# Needs (Debian): curl openssl postgresql-client redis-tools ffmpeg python3-pymongo.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../unit/fixtures/sniff}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tool="/usr/bin/python3 $here/capture-first-bytes.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for bin in curl openssl psql redis-cli ffmpeg; do
    command -v "$bin" >/dev/null || { echo "missing $bin" >&2; exit 1; }
done
/usr/bin/python3 -c 'import pymongo' || { echo "missing python3-pymongo" >&2; exit 1; }

# capture NAME [capture-first-bytes options...] -- client argv with @PORT@ in it.
# The client is given a few seconds and then killed: most of them wait forever for a
# server that never answers, and only what they sent first matters.
capture() {
    local name=$1; shift
    local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    local pf="$work/$name.port"
    rm -f "$pf"
    $tool --out "$out/$name" --port-file "$pf" "${opts[@]}" &
    local cap=$!
    for _ in $(seq 100); do [ -s "$pf" ] && break; sleep 0.05; done
    local port
    port=$(cat "$pf")
    local argv=()
    for a in "$@"; do argv+=("${a//@PORT@/$port}"); done
    timeout -s KILL 8 "${argv[@]}" </dev/null >/dev/null 2>&1 || true
    wait "$cap"
}

capture http1_curl.bin -- \
    curl -s http://127.0.0.1:@PORT@/path -H 'Host: example.test'
capture http2_prior_knowledge_curl.bin -- \
    curl -s --http2-prior-knowledge http://127.0.0.1:@PORT@/
capture tls_clienthello_openssl.bin -- \
    openssl s_client -connect 127.0.0.1:@PORT@ -servername api.example.test -alpn h2,http/1.1
capture tls_clienthello_curl.bin -- \
    curl -sk https://api.example.test:@PORT@/ --resolve api.example.test:@PORT@:127.0.0.1
capture pg_startup_psql.bin -- \
    psql -X -w "host=127.0.0.1 port=@PORT@ user=alice dbname=shop sslmode=disable" -c 'select 1'
capture pg_sslrequest_psql.bin -- \
    psql -X -w "host=127.0.0.1 port=@PORT@ user=alice dbname=shop sslmode=require" -c 'select 1'
capture resp_rediscli.bin -- \
    redis-cli -h 127.0.0.1 -p @PORT@ PING
# ffmpeg sends C0+C1 (1537 bytes) and waits for S0+S1+S2.
capture rtmp_c0c1_ffmpeg.bin --min 1537 -- \
    ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc=size=64x64:rate=1 -t 1 \
        -f flv rtmp://127.0.0.1:@PORT@/live/x
capture mongodb_hello_pymongo.bin -- \
    /usr/bin/python3 -c 'import sys, pymongo
pymongo.MongoClient("mongodb://127.0.0.1:" + sys.argv[1] + "/", serverSelectionTimeoutMS=500,
                    directConnection=True).admin.command("ping")' @PORT@
# The OP_MSG pymongo sends once its isMaster handshake has been answered.
capture mongodb_opmsg_ping_pymongo.bin --mongo-second-message -- \
    /usr/bin/python3 -c 'import sys, pymongo
pymongo.MongoClient("mongodb://127.0.0.1:" + sys.argv[1] + "/", serverSelectionTimeoutMS=3000,
                    directConnection=True).admin.command("ping")' @PORT@

ls -l "$out"/*.bin
