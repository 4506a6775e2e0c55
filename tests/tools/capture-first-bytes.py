#!/usr/bin/python3
"""capture-first-bytes.py — records the first bytes a real client sends to a server.

It owns one job: stand in for a server on 127.0.0.1 long enough for a real client
(curl, psql, ffmpeg, ...) to speak, and save exactly what arrived. The sniffer's
fixtures in tests/unit/fixtures/sniff/ are made with it by capture-sniff-fixtures.sh.

It listens on a free loopback port (written to --port-file once listening, so a script
can start the client), accepts one connection, optionally writes a greeting, then
reads until the client pauses (--pause-ms), --max bytes have arrived, or the client
closes. Only loopback is ever bound.

--mongo-second-message is for the one fixture a driver never sends first: pymongo
3.11 opens every connection with a legacy OP_QUERY isMaster, and its OP_MSG only
follows a handshake reply. In that mode every connection's isMaster is answered with
a minimal OP_REPLY (a 4.2 standalone), and the first OP_MSG any connection sends is
the one saved.
"""

import argparse
import os
import select
import socket
import struct
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="file to write the captured bytes to")
    p.add_argument("--port-file", help="write the listening port here once ready")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    p.add_argument("--max", type=int, default=65536, help="stop after this many bytes")
    p.add_argument("--min", type=int, default=1,
                   help="keep reading past pauses until at least this many bytes")
    p.add_argument("--pause-ms", type=int, default=300,
                   help="the client has finished once it is silent this long")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="give up (exit 1) if nothing arrives within this many seconds")
    p.add_argument("--greeting-hex", default="",
                   help="bytes to send right after accepting, for clients that wait")
    p.add_argument("--mongo-second-message", action="store_true",
                   help="answer isMaster handshakes and save the first OP_MSG")
    return p.parse_args()


def write_port(path, port):
    # Written to a temporary name and renamed, so a reader never sees a partial number.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def read_until_pause(conn, args, deadline):
    data = bytearray()
    while len(data) < args.max:
        if data and len(data) >= args.min:
            wait = args.pause_ms / 1000.0
        else:
            wait = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([conn], [], [], wait)
        if not ready:
            break
        chunk = conn.recv(args.max - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def save(path, data):
    with open(path, "wb") as f:
        f.write(data)


def recv_exact(conn, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([conn], [], [], left)
        if not ready:
            return None
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def bson_doc(items):
    """Encodes a flat document of int32/bool/double/string values: all a handshake
    reply needs, so the tool does not depend on the bson module's API version."""
    body = bytearray()
    for key, val in items:
        k = key.encode() + b"\0"
        if isinstance(val, bool):
            body += b"\x08" + k + (b"\x01" if val else b"\x00")
        elif isinstance(val, int):
            body += b"\x10" + k + struct.pack("<i", val)
        elif isinstance(val, float):
            body += b"\x01" + k + struct.pack("<d", val)
        else:
            s = val.encode() + b"\0"
            body += b"\x02" + k + struct.pack("<i", len(s)) + s
    return struct.pack("<i", len(body) + 5) + bytes(body) + b"\0"


def mongo_ismaster_reply(request_id):
    doc = bson_doc([
        ("ismaster", True), ("maxBsonObjectSize", 16777216),
        ("maxMessageSizeBytes", 48000000), ("maxWriteBatchSize", 100000),
        ("localTime", 0.0), ("minWireVersion", 0), ("maxWireVersion", 8),
        ("readOnly", False), ("ok", 1.0),
    ])
    # OP_REPLY: responseFlags, cursorID, startingFrom, numberReturned, documents.
    body = struct.pack("<iqii", 0, 0, 0, 1) + doc
    header = struct.pack("<iiii", 16 + len(body), 1, request_id, 1)
    return header + body


def mongo_serve(conn, args, deadline, result, done):
    try:
        while not done.is_set():
            head = recv_exact(conn, 16, deadline)
            if head is None:
                return
            length, request_id, _, opcode = struct.unpack("<iiii", head)
            if length < 16 or length > 48000000:
                return
            rest = recv_exact(conn, length - 16, deadline)
            if rest is None:
                return
            if opcode == 2013:
                if not done.is_set():
                    result.append(head + rest)
                    done.set()
                return
            if opcode == 2004:
                conn.sendall(mongo_ismaster_reply(request_id))
    finally:
        conn.close()


def main():
    args = parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(8)
    port = srv.getsockname()[1]
    if args.port_file:
        write_port(args.port_file, port)
    else:
        print(port, flush=True)
    deadline = time.monotonic() + args.timeout

    if args.mongo_second_message:
        result, done, threads = [], threading.Event(), []
        while not done.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([srv], [], [], 0.1)
            if not ready:
                continue
            conn, _ = srv.accept()
            t = threading.Thread(target=mongo_serve,
                                 args=(conn, args, deadline, result, done), daemon=True)
            t.start()
            threads.append(t)
        srv.close()
        if not result:
            print("capture-first-bytes: no OP_MSG arrived", file=sys.stderr)
            return 1
        save(args.out, result[0])
        print("captured %d bytes to %s" % (len(result[0]), args.out), file=sys.stderr)
        return 0

    ready, _, _ = select.select([srv], [], [], args.timeout)
    if not ready:
        print("capture-first-bytes: no connection", file=sys.stderr)
        return 1
    conn, _ = srv.accept()
    srv.close()
    if args.greeting_hex:
        conn.sendall(bytes.fromhex(args.greeting_hex))
    data = read_until_pause(conn, args, deadline)
    conn.close()
    if not data:
        print("capture-first-bytes: the client sent nothing", file=sys.stderr)
        return 1
    save(args.out, data)
    print("captured %d bytes to %s" % (len(data), args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
