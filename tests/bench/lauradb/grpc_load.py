#!/usr/bin/python3
# grpc_load.py — the benchmark's gRPC end-to-end half: the same workloads as ldb_bench.c,
# sent to a running marchproxy with the lauradb plugin as lauradb.cluster.RouterService
# calls. Python's grpcio costs far more CPU per call than the server spends on it, so the
# concurrent workloads run in PROCS separate client processes (not threads: the GIL would
# make them one); on a small machine the clients still compete with the server for the
# CPUs, which is why run.sh also prints the server's own CPU use per phase.
#
#   grpc_load.py STUBDIR GRPC_ADDR SERVER_PID [-p PROCS] [-d SECONDS] [-n DOCS] [-b BATCH]
#
# Documents, namespaces and checks are ldb_bench.c's: {_id, k, g, v, pad} with k unique,
# an index on k (run.sh's `indexes` setting), one document per lookup, 20 sorted ones per
# range, 100 groups with known counts and sums. A wrong answer or a failed call stops the
# run (exit 1). Output: "RESULT grpc WORKLOAD OPS SECONDS SERVER_CPU_SECONDS" lines.

import argparse
import multiprocessing as mp
import os
import sys
import time

NS_DB, NS_COLL, NS_SINGLE = "bench", "docs", "single"
RANGE_SPAN, RANGE_LIMIT, GROUPS = 2000, 20, 100
CALL_TIMEOUT = 60
OPTIONS = [("grpc.enable_http_proxy", 0),
           ("grpc.initial_reconnect_backoff_ms", 100),
           ("grpc.max_reconnect_backoff_ms", 250)]


def doc_k(i, n):
    return (i * 7919) % n * 10


def doc(i, k):
    pad = "".join(chr(ord("a") + (i * 31 + j) % 26) for j in range(64))
    return {"_id": i, "k": k, "g": i % GROUPS, "v": float(i % 1000), "pad": pad}


def cpu_seconds(pid):
    """User + system CPU of process pid so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    def __init__(self, stubdir, addr):
        sys.path.insert(0, stubdir)
        import bson
        import grpc
        from lauradb import routing_pb2, routing_pb2_grpc
        self.bson, self.grpc, self.pb = bson, grpc, routing_pb2
        self.ch = grpc.insecure_channel(addr, options=OPTIONS)
        grpc.channel_ready_future(self.ch).result(timeout=15)
        self.router = routing_pb2_grpc.RouterServiceStub(self.ch)

    def insert(self, coll, encoded):
        r = self.router.Insert(self.pb.InsertRequest(
            request_id="b", database=NS_DB, collection=coll, documents=encoded,
            ordered=True), timeout=CALL_TIMEOUT)
        if r.inserted_count != len(encoded) or len(r.errors):
            raise RuntimeError(f"insert: {r.inserted_count} of {len(encoded)}: "
                               f"{[e.error for e in r.errors][:3]}")

    def point(self, k):
        r = self.router.Query(self.pb.QueryRequest(
            request_id="p", database=NS_DB, collection=NS_COLL,
            query=self.bson.encode({"k": k})), timeout=CALL_TIMEOUT)
        if len(r.documents) != 1 or self.bson.decode(r.documents[0])["k"] != k:
            raise RuntimeError(f"point k={k}: {len(r.documents)} documents")

    def range(self, lo):
        r = self.router.Query(self.pb.QueryRequest(
            request_id="r", database=NS_DB, collection=NS_COLL,
            query=self.bson.encode({"k": {"$gte": lo, "$lt": lo + RANGE_SPAN}}),
            sort=self.bson.encode({"k": 1}), limit=RANGE_LIMIT), timeout=CALL_TIMEOUT)
        ks = [self.bson.decode(d)["k"] for d in r.documents]
        if len(ks) != RANGE_LIMIT or ks != sorted(ks) or r.more_available:
            raise RuntimeError(f"range from {lo}: {len(ks)} documents")

    def group(self, n_docs):
        stage = {"$group": {"_id": "$g", "n": {"$sum": 1}, "tot": {"$sum": "$v"}}}
        r = self.router.Aggregate(self.pb.AggregationRequest(
            request_id="g", database=NS_DB, collection=NS_COLL,
            pipeline=[self.bson.encode(stage)]), timeout=CALL_TIMEOUT)
        got = {d["_id"]: (d["n"], d["tot"]) for d in map(self.bson.decode, r.results)}
        want = {g: (n_docs // GROUPS, float(sum(i % 1000 for i in range(g, n_docs, GROUPS))))
                for g in range(GROUPS)}
        if got != want:
            raise RuntimeError(f"group: {len(got)} groups, not the expected {GROUPS}")


def worker(args, idx, work, barrier, go, deadline_box, out):
    """One client process: connects, waits for the others, runs until the deadline."""
    import random
    try:
        c = Client(args.stubdir, args.addr)
    except Exception as e:  # noqa: BLE001 — reported by the parent
        barrier.abort()
        out.put((idx, 0, f"connect: {e}"))
        return
    rnd = random.Random(idx + 1)
    next_id = (idx + 1) * 1_000_000_000  # ids of single inserts: a block per process
    ops, err = 0, None
    try:
        barrier.wait()
        go.wait()
        deadline = deadline_box.value
        while time.monotonic() < deadline:
            if work == "insert":
                c.insert(NS_SINGLE, [c.bson.encode(doc(next_id, next_id))])
                next_id += 1
            elif work == "point":
                c.point(doc_k(rnd.randrange(args.docs), args.docs))
            elif work == "range":
                c.range(rnd.randrange(args.docs * 10 - RANGE_SPAN * 4))
            else:
                c.group(args.docs)
            ops += 1
    except Exception as e:  # noqa: BLE001 — reported by the parent
        err = f"{type(e).__name__}: {e}"
    out.put((idx, ops, err))


def measure(args, work):
    # Spawned, not forked: a process forked from one that has used gRPC inherits its
    # threads' state, which grpcio does not support.
    ctx = mp.get_context("spawn")
    barrier, go = ctx.Barrier(args.procs + 1), ctx.Event()
    deadline_box = ctx.Value("d", 0.0)
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(args, i, work, barrier, go, deadline_box, out))
             for i in range(args.procs)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=60)  # every client connected
    except Exception:  # noqa: BLE001 — a client failed to connect: its report says why
        pass
    cpu0, t0 = cpu_seconds(args.server_pid), time.monotonic()
    deadline_box.value = t0 + args.secs
    go.set()
    results = [out.get(timeout=args.secs + CALL_TIMEOUT + 30) for _ in procs]
    secs = time.monotonic() - t0
    cpu = cpu_seconds(args.server_pid) - cpu0
    for p in procs:
        p.join(10)
    errors = [r[2] for r in results if r[2]]
    if errors:
        raise RuntimeError(f"{work}: {errors[0]}")
    print(f"RESULT grpc {work} {sum(r[1] for r in results)} {secs:.3f} {cpu:.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stubdir")
    ap.add_argument("addr")
    ap.add_argument("server_pid", type=int)
    ap.add_argument("-p", dest="procs", type=int, default=8)
    ap.add_argument("-d", dest="secs", type=float, default=4)
    ap.add_argument("-n", dest="docs", type=int, default=100000)
    ap.add_argument("-b", dest="batch", type=int, default=1000)
    args = ap.parse_args()
    if args.docs % 7919 == 0 or args.docs % GROUPS:
        ap.error("DOCS must be a multiple of 100 and not of 7919")

    # The bulk load from this process, as ldb_bench does it from one thread. The batches
    # are encoded first so that the clock sees the calls, not Python building documents.
    c = Client(args.stubdir, args.addr)
    batches = [[c.bson.encode(doc(i, doc_k(i, args.docs)))
                for i in range(lo, min(lo + args.batch, args.docs))]
               for lo in range(0, args.docs, args.batch)]
    cpu0, t0 = cpu_seconds(args.server_pid), time.monotonic()
    for b in batches:
        c.insert(NS_COLL, b)
    secs = time.monotonic() - t0
    cpu = cpu_seconds(args.server_pid) - cpu0
    print(f"RESULT grpc bulk {args.docs} {secs:.3f} {cpu:.2f}", flush=True)
    # The plugin made the k index from its settings: a lookup examines one document.
    k = doc_k(7, args.docs)
    r = c.router.Query(c.pb.QueryRequest(request_id="x", database=NS_DB, collection=NS_COLL,
                                         query=c.bson.encode({"k": k})), timeout=CALL_TIMEOUT)
    if len(r.documents) != 1 or r.stats.documents_examined != 1:
        raise RuntimeError(f"a lookup by k examined {r.stats.documents_examined} documents: "
                           f"the `indexes` setting did not make the k index")
    c.ch.close()
    for work in ("insert", "point", "range", "group"):
        measure(args, work)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 — one line for run.sh, not a traceback
        sys.stderr.write(f"grpc_load: {e}\n")
        sys.exit(1)
