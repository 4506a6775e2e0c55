#!/bin/sh
# install-deps.sh — the Debian 12 packages MarchProxy builds, runs and tests with. One
# list, used by the README's commands and by CI. Run as root (or through sudo).
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: run as root (e.g. sudo $0)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    build-essential autoconf automake libtool pkg-config \
    libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev \
    libconfig-dev liburing-dev libssl-dev libbson-dev libpcre2-dev liblmdb-dev \
    protobuf-compiler protobuf-compiler-grpc \
    python3 python3-grpcio python3-protobuf python3-pytest python3-bson \
    ca-certificates curl openssl \
    nginx haproxy wrk libsqlite3-dev
