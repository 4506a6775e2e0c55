# test_lauradb_router.py — the LauraDB plugin (plugins/lauradb) serving
# lauradb.cluster.RouterService over the host's gRPC server, through stubs generated from
# the spec: write/read round trips, MongoDB-style errors, sort/skip/limit/projection,
# server-side cursors (paging, expiry), bad input, concurrent writers, durability across
# a restart and a new generation, GetShardMap, Aggregate and the host's statistics.
#
# Paging protocol (see plugins/lauradb/ldb_router.c): a follow-up QueryRequest on the
# same collection with query = {"$getMore": cursor_id}; its limit bounds that batch.
#
# BSON comes from Debian's python3-bson (pymongo's bson package).

import threading
import time

import bson
import grpc
import pytest

from mphelpers import BUILDDIR

T = 20  # seconds per call
INSTANCE = "ldb"


@pytest.fixture(scope="session")
def lauradb_plugin():
    so = BUILDDIR / "plugins" / "lauradb" / ".libs" / "lauradb.so"
    assert so.is_file(), f"{so} missing: build it with `make` first"
    return so


class Ldb:
    """A host running the lauradb plugin and a RouterService client."""

    def __init__(self, host):
        self.h = host
        self.pb = host.pb.routing_pb2
        self.router = host.pb.routing_pb2_grpc.RouterServiceStub(host.channel)

    def insert(self, docs, coll="c", db="t", ordered=False):
        return self.router.Insert(self.pb.InsertRequest(
            request_id="ins", database=db, collection=coll,
            documents=[bson.encode(d) for d in docs], ordered=ordered), timeout=T)

    def query(self, filt=None, coll="c", db="t", **kw):
        for key in ("projection", "sort"):
            if key in kw and isinstance(kw[key], dict):
                kw[key] = bson.encode(kw[key])
        return self.router.Query(self.pb.QueryRequest(
            request_id="q", database=db, collection=coll,
            query=bson.encode(filt) if filt is not None else b"", **kw), timeout=T)

    def get_more(self, cursor_id, coll="c", db="t", limit=0):
        return self.query({"$getMore": cursor_id}, coll=coll, db=db, limit=limit)

    def find_all(self, filt=None, coll="c", db="t", **kw):
        """Every result, following the cursor to its end; [(decoded docs), n_batches]."""
        r = self.query(filt, coll=coll, db=db, **kw)
        docs, batches = [bson.decode(d) for d in r.documents], 1
        while r.more_available:
            assert r.cursor_id
            r = self.get_more(r.cursor_id, coll=coll, db=db)
            docs += [bson.decode(d) for d in r.documents]
            batches += 1
            assert batches < 10000
        assert r.cursor_id == ""
        return docs, batches

    def update(self, filt, upd, coll="c", db="t", multi=False, upsert=False):
        return self.router.Update(self.pb.UpdateRequest(
            request_id="u", database=db, collection=coll, query=bson.encode(filt),
            update=bson.encode(upd), multi=multi, upsert=upsert), timeout=T)

    def delete(self, filt, coll="c", db="t", multi=False):
        return self.router.Delete(self.pb.DeleteRequest(
            request_id="d", database=db, collection=coll, query=bson.encode(filt),
            multi=multi), timeout=T)

    def stats(self):
        m = self.h.pb.module_pb2
        return self.h.module.GetStats(m.GetStatsRequest(instance_id=INSTANCE),
                                      timeout=T).stats


@pytest.fixture
def ldb_start(start_host, lauradb_plugin, tmp_path):
    """start_host for the lauradb plugin: ldb_start(settings=None, **start_host_kw) -> Ldb.
    data_dir defaults to a directory of the test's own (see test_default_data_dir)."""
    def _start(settings=None, **kw):
        s = {"data_dir": str(tmp_path / "ldbdata")}
        s.update(settings or {})
        s = {k: v for k, v in s.items() if v is not None}
        h = start_host(plugins=[lauradb_plugin],
                       instances={INSTANCE: {"plugin": "lauradb", "settings": s}}, **kw)
        m = h.pb.module_pb2
        st = h.module.GetStatus(m.GetStatusRequest(instance_id=INSTANCE), timeout=T)
        if st.details.get("last_error"):
            pytest.fail(f"lauradb did not start: {st.details['last_error']}", pytrace=False)
        return Ldb(h)
    return _start


def ordered(*pairs):
    """BSON for a document whose key order matters (a sort spec): pymongo moves "_id"
    first in a top-level document, but not in a nested one, so encode it nested."""
    outer = bson.encode({"d": bson.SON(pairs)})
    return outer[7:-1]  # int32 length, type 0x03, "d\0", the document, final 0x00


def rpc_error(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)
    return e.value


# ------------------------------------------------------------------ round trips

def test_insert_query_update_delete_round_trip(ldb_start):
    db = ldb_start()
    r = db.insert([{"_id": i, "name": f"n{i}", "qty": i * 10} for i in range(5)])
    assert r.inserted_count == 5 and list(r.errors) == [] and r.request_id == "ins"

    r = db.query({"qty": {"$gte": 20}})
    got = [bson.decode(d) for d in r.documents]
    assert [d["_id"] for d in got] == [2, 3, 4]
    assert got[0] == {"_id": 2, "name": "n2", "qty": 20}
    assert not r.more_available and r.cursor_id == ""
    assert r.stats.documents_returned == 3 and r.stats.documents_examined == 5

    r = db.update({"_id": 3}, {"$set": {"name": "three"}, "$inc": {"qty": 1}})
    assert (r.matched_count, r.modified_count, r.upserted_count) == (1, 1, 0)
    assert bson.decode(db.query({"_id": 3}).documents[0]) == {"_id": 3, "name": "three",
                                                              "qty": 31}
    r = db.update({"qty": {"$lt": 25}}, {"$set": {"low": True}}, multi=True)
    assert (r.matched_count, r.modified_count) == (3, 3)
    r = db.update({"qty": {"$lt": 25}}, {"$set": {"low": True}}, multi=True)
    assert (r.matched_count, r.modified_count) == (3, 0)  # already so: nothing modified
    r = db.update({"_id": 99}, {"$set": {"new": 1}}, upsert=True)
    assert (r.matched_count, r.modified_count, r.upserted_count) == (0, 0, 1)
    assert bson.decode(db.query({"_id": 99}).documents[0]) == {"_id": 99, "new": 1}

    assert db.delete({"low": True}, multi=False).deleted_count == 1
    assert db.delete({"low": True}, multi=True).deleted_count == 2
    assert db.delete({"low": True}, multi=True).deleted_count == 0
    ids = [bson.decode(d)["_id"] for d in db.query({}).documents]
    assert ids == [3, 4, 99]
    # A collection nobody wrote to is empty, not an error.
    assert list(db.query({}, coll="never").documents) == []


def test_generated_ids_and_duplicate_key_errors(ldb_start):
    db = ldb_start()
    r = db.insert([{"x": 1}, {"x": 2}])
    assert r.inserted_count == 2
    docs = [bson.decode(d) for d in db.query({}).documents]
    assert all(isinstance(d["_id"], bson.ObjectId) for d in docs)
    assert list(docs[0])[0] == "_id"  # the generated _id goes first

    assert db.insert([{"_id": "a"}]).inserted_count == 1
    # Unordered: every document is tried; the duplicates are listed by index.
    r = db.insert([{"_id": "b"}, {"_id": "a"}, {"_id": "c"}, {"_id": "b"}], ordered=False)
    assert r.inserted_count == 2
    assert [e.index for e in r.errors] == [1, 3]
    assert all("E11000 duplicate key" in e.error for e in r.errors), r.errors
    # Ordered: stops at the first failure.
    r = db.insert([{"_id": "d"}, {"_id": "a"}, {"_id": "e"}], ordered=True)
    assert r.inserted_count == 1 and [e.index for e in r.errors] == [1]
    ids = sorted(bson.decode(d)["_id"] for d in db.query({"x": {"$exists": False}}).documents)
    assert ids == ["a", "b", "c", "d"]
    # An upsert that would duplicate an _id fails the whole call.
    db.update({"_id": "zz"}, {"$set": {"v": 1}}, upsert=True)
    e = rpc_error(db.update, {"v": 2}, {"$set": {"_id": "a"}}, upsert=True)
    assert e.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT)


def test_sort_skip_limit_projection(ldb_start):
    db = ldb_start()
    people = [{"_id": i, "age": (i * 7) % 10, "name": f"p{i:02d}", "secret": "s"}
              for i in range(20)]
    assert db.insert(people).inserted_count == 20
    want = sorted(people, key=lambda p: (-p["age"], p["_id"]))
    r = db.query({}, sort=ordered(("age", -1), ("_id", 1)), skip=3, limit=5,
                 projection={"name": 1})
    got = [bson.decode(d) for d in r.documents]
    assert got == [{"_id": p["_id"], "name": p["name"]} for p in want[3:8]]
    assert not r.more_available
    # Exclusion projection, filter and limit together.
    r = db.query({"age": {"$in": [0, 1]}}, projection={"secret": 0, "name": 0}, limit=3)
    got = [bson.decode(d) for d in r.documents]
    expect = [{"_id": p["_id"], "age": p["age"]} for p in people if p["age"] in (0, 1)][:3]
    assert got == expect
    # skip past the end
    assert list(db.query({}, skip=50).documents) == []


# ------------------------------------------------------------------ cursors

def test_cursor_pages_1000_documents_exactly_once(ldb_start):
    db = ldb_start()
    for start in range(0, 1000, 250):
        assert db.insert([{"_id": i, "v": i % 7} for i in range(start, start + 250)]
                         ).inserted_count == 250
    r = db.query({})
    assert len(r.documents) == 101 and r.more_available and r.cursor_id
    cid = r.cursor_id
    seen = [bson.decode(d)["_id"] for d in r.documents]
    sizes = []
    while r.more_available:
        assert r.cursor_id == cid
        r = db.get_more(cid, limit=150)  # getMore's limit is the batch size
        sizes.append(len(r.documents))
        seen += [bson.decode(d)["_id"] for d in r.documents]
        assert len(sizes) < 100
    assert sizes == [150] * 5 + [149]
    assert seen == list(range(1000))
    # An exhausted cursor is gone.
    e = rpc_error(db.get_more, cid)
    assert e.code() == grpc.StatusCode.NOT_FOUND and "cursor" in e.details()

    # Sorted, filtered, with a total limit across batches.
    docs, batches = db.find_all({"v": {"$ne": 3}}, sort=ordered(("v", 1), ("_id", -1)),
                                limit=500)
    want = sorted((i for i in range(1000) if i % 7 != 3), key=lambda i: (i % 7, -i))[:500]
    assert [d["_id"] for d in docs] == want and batches == 2


def test_cursor_batches_are_bounded_by_bytes(ldb_start):
    db = ldb_start({"max_response_bytes": 65536, "batch_size": 1000,
                    "cursor_memory_mb": 0})  # no read-ahead kept: every batch re-reads
    pad = "x" * 1000
    assert db.insert([{"_id": i, "pad": pad} for i in range(1000)]).inserted_count == 1000
    r = db.query({})
    n = 0
    ids = []
    while True:
        size = sum(len(d) for d in r.documents)
        assert 0 < size <= 65536, size
        ids += [bson.decode(d)["_id"] for d in r.documents]
        n += 1
        if not r.more_available:
            break
        r = db.get_more(r.cursor_id)
    assert ids == list(range(1000))
    assert n >= 1000 * 1000 // 65536


def test_cursor_expiry_and_misuse(ldb_start):
    db = ldb_start({"cursor_timeout_ms": 1000, "batch_size": 2, "max_cursors": 2})
    db.insert([{"_id": i} for i in range(10)])
    r = db.query({})
    assert r.more_available
    # Another collection cannot use it.
    e = rpc_error(db.get_more, r.cursor_id, coll="other")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Used within the timeout it lives on, longer than the timeout in total...
    for _ in range(3):
        time.sleep(0.4)
        assert len(db.get_more(r.cursor_id, limit=2).documents) == 2
    # ...idle longer, it is gone.
    time.sleep(1.5)
    e = rpc_error(db.get_more, r.cursor_id)
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = rpc_error(db.get_more, "c0000000000000000")
    assert e.code() == grpc.StatusCode.NOT_FOUND
    # The open-cursor limit.
    a, b = db.query({}), db.query({})
    assert a.cursor_id and b.cursor_id and a.cursor_id != b.cursor_id
    e = rpc_error(db.query, {})
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_cursors" in e.details()
    assert len(db.query({}, limit=2).documents) == 2  # a query needing no cursor still runs
    time.sleep(2.5)  # both expire; the reaper (twice a second) frees their slots
    assert db.query({}).more_available
    s = db.stats()
    assert int(s.custom_stats["cursors_expired_total"]) >= 3


# ------------------------------------------------------------------ bad input

def test_bad_requests_are_invalid_argument_and_host_keeps_serving(ldb_start):
    db = ldb_start()
    raw = db.h.channel.unary_unary("/lauradb.cluster.RouterService/Query",
                                   request_serializer=None, response_deserializer=None)
    e = rpc_error(raw, b"\xff\xff\xff\xff", timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "QueryRequest" in e.details()

    good = bson.encode({"a": 1})
    truncated = good[:-3]
    corrupt = bytearray(bson.encode({"a": {"b": 1}}))
    corrupt[9] = 0x7f  # the nested document's length header now lies
    pb = db.pb
    cases = [
        (db.router.Query, pb.QueryRequest(database="t", collection="c", query=truncated),
         "query"),
        (db.router.Query, pb.QueryRequest(database="t", collection="c", query=bytes(corrupt)),
         "query"),
        (db.router.Query, pb.QueryRequest(database="t", collection="c", sort=b"\x05"),
         "sort"),
        (db.router.Query, pb.QueryRequest(database="t", collection="c",
                                          projection=truncated), "projection"),
        (db.router.Insert, pb.InsertRequest(database="t", collection="c",
                                            documents=[good, truncated]), "documents[1]"),
        (db.router.Update, pb.UpdateRequest(database="t", collection="c", query=good,
                                            update=truncated), "update"),
        (db.router.Update, pb.UpdateRequest(database="t", collection="c", query=good),
         "update"),
        (db.router.Delete, pb.DeleteRequest(database="t", collection="c", query=truncated),
         "query"),
        (db.router.Aggregate, pb.AggregationRequest(database="t", collection="c",
                                                    pipeline=[good, truncated]),
         "pipeline[1]"),
        (db.router.Query, pb.QueryRequest(database="", collection="c"), "database"),
        (db.router.Insert, pb.InsertRequest(database="t", collection="", documents=[good]),
         "collection"),
        (db.router.Delete, pb.DeleteRequest(database="a.b", collection="c"), "database"),
        (db.router.Insert, pb.InsertRequest(database="t", collection="c"), "documents"),
        (db.router.Query, pb.QueryRequest(database="t", collection="c", limit=-1), "limit"),
        (db.router.Query, pb.QueryRequest(database="t", collection="c",
                                          query=bson.encode({"a": {"$bogus": 1}})), "$bogus"),
    ]
    for method, req, word in cases:
        e = rpc_error(method, req, timeout=T)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, e.details())
        assert word in e.details(), (word, e.details())
    # Nothing was written by the failed insert, and the host still serves.
    assert db.insert([{"_id": 1}]).inserted_count == 1
    assert [bson.decode(d) for d in db.query({}).documents] == [{"_id": 1}]
    s = db.stats()
    assert int(s.custom_stats["requests_invalid"]) >= len(cases) + 1
    assert s.failed_requests >= len(cases) + 1


def test_settings_are_checked_with_file_and_line(ldb_start):
    db = ldb_start()
    m, t = db.h.pb.module_pb2, db.h.pb.types_pb2
    for text, word in ((b'threads = 4;\nbogus = 1;\n', "unknown key 'bogus'"),
                       (b'threads = 0;\n', "threads"),
                       (b'data_dir = "relative";\n', "absolute"),
                       (b'map_size_mb = "big";\n', "map_size_mb")):
        r = db.h.module.UpdateConfig(m.UpdateConfigRequest(
            instance_id=INSTANCE, validate_only=True,
            config=t.ConfigUpdate(config_data=text)), timeout=T)
        assert not r.validation_passed, text
        err = r.validation_errors[0]
        assert word in err and ":" in err.split(word)[0], err  # FILE:LINE: first


# ------------------------------------------------------------------ concurrency

def test_eight_concurrent_inserters(ldb_start):
    db = ldb_start({"threads": 8})
    per_thread, errors = 100, []

    def inserter(n):
        try:
            for i in range(per_thread):
                r = db.insert([{"_id": f"{n}-{i}", "n": n}])
                if r.inserted_count != 1:
                    errors.append(r)
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=inserter, args=(n,)) for n in range(8)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    elapsed = time.monotonic() - t0
    assert not errors, errors[:3]
    docs, _ = db.find_all({})
    assert len(docs) == 8 * per_thread
    assert {d["_id"] for d in docs} == {f"{n}-{i}" for n in range(8) for i in range(per_thread)}
    s = db.stats()
    assert int(s.custom_stats["ops_insert"]) == 8 * per_thread
    assert int(s.custom_stats["docs_inserted"]) == 8 * per_thread
    print(f"8 threads x {per_thread} single-document inserts: {elapsed:.2f} s "
          f"({8 * per_thread / elapsed:.0f}/s)")


def test_full_queue_is_resource_exhausted(ldb_start):
    db = ldb_start({"threads": 1, "queue_depth": 1})
    batch = [bson.encode({"pad": "y" * 200, "i": i}) for i in range(2000)]
    futures = [db.router.Insert.future(db.pb.InsertRequest(
        database="t", collection="q", documents=batch), timeout=60) for _ in range(40)]
    ok = rejected = 0
    for f in futures:
        try:
            assert f.result().inserted_count == 2000
            ok += 1
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            assert "queue_depth" in e.details()
            rejected += 1
    assert rejected > 0 and ok >= 2, (ok, rejected)
    s = db.stats()
    assert int(s.custom_stats["requests_rejected_queue_full"]) == rejected
    assert len(db.find_all({}, coll="q")[0]) == ok * 2000  # what was refused left no trace


# ------------------------------------------------------------------ durability

def test_data_survives_restart_and_new_generation(ldb_start, tmp_path):
    data = tmp_path / "ldbdata"
    settings = {"data_dir": str(data), "cursor_timeout_ms": 600000}
    db = ldb_start(settings)
    assert db.insert([{"_id": i, "v": "x" * 100} for i in range(300)]).inserted_count == 300
    assert db.h.stop() == 0

    db = ldb_start(settings)
    docs, _ = db.find_all({})
    assert [d["_id"] for d in docs] == list(range(300))
    r = db.query({})  # a cursor of the old generation...
    assert r.more_available

    # New settings: the plugin has no reconfigure, so the host makes a new generation,
    # which must wait for the old one to close the store, then find the same data.
    m, t = db.h.pb.module_pb2, db.h.pb.types_pb2
    mark = db.h.log_mark()
    new = f'data_dir = "{data}";\ncursor_timeout_ms = 500000;\n'.encode()
    u = db.h.module.UpdateConfig(m.UpdateConfigRequest(
        instance_id=INSTANCE, config=t.ConfigUpdate(config_data=new)), timeout=T)
    assert u.success, u.message
    db.h.wait_log(r"generation \S+ destroyed", since=mark)
    assert db.insert([{"_id": 300}]).inserted_count == 1
    docs, _ = db.find_all({})
    assert [d["_id"] for d in docs] == list(range(301))
    # ...did not survive the generation change (cursors are in memory).
    e = rpc_error(db.get_more, r.cursor_id)
    assert e.code() == grpc.StatusCode.NOT_FOUND
    hc = db.h.module.HealthCheck(m.HealthCheckRequest(instance_id=INSTANCE), timeout=T)
    assert hc.status == t.HEALTH_STATUS_HEALTHY

    # The same through the Reload RPC with a different plugin file (one more byte at the
    # end changes its hash, not its code), while a writer keeps going.
    changed = tmp_path / "lauradb.so"
    changed.write_bytes((db.h.plugin_dir / "lauradb.so").read_bytes() + b"\0")
    db.h.install_plugin(changed)
    stop, written, failures = threading.Event(), [], []

    def writer():
        i = 1000
        while not stop.is_set() and i < 1500:
            try:
                if db.insert([{"_id": i}]).inserted_count == 1:
                    written.append(i)
            except grpc.RpcError as exc:  # the only acceptable failure: none
                failures.append(exc)
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    mark = db.h.log_mark()
    try:
        time.sleep(0.1)
        r = db.h.module.Reload(m.ReloadRequest(instance_id=INSTANCE, graceful=True), timeout=T)
        assert r.success, r.message
        db.h.wait_log(r"generation \S+ destroyed", since=mark)
        time.sleep(0.1)
    finally:
        stop.set()
        th.join(30)
    assert not failures, failures[:3]
    docs, _ = db.find_all({"_id": {"$gte": 1000}})
    assert [d["_id"] for d in docs] == written and len(written) > 0
    assert len(db.find_all({"_id": {"$lt": 1000}})[0]) == 301


# ------------------------------------------------------------------ the rest

def test_get_shard_map_and_query_stats_name_this_node(ldb_start):
    db = ldb_start()
    r = db.router.GetShardMap(db.pb.GetShardMapRequest(database="t", collection="c"),
                              timeout=T)
    assert r.version == 1 and r.strategy == db.pb.UNKNOWN_STRATEGY
    assert len(r.shards) == 1
    s = r.shards[0]
    assert (s.node_id, s.host, s.port) == (INSTANCE, "127.0.0.1", 50051)
    assert s.shard_id == f"shard-{INSTANCE}"
    db.insert([{"_id": 1}])
    assert list(db.query({}).stats.shards_queried) == [INSTANCE]


def test_get_shard_map_from_settings(ldb_start):
    db = ldb_start({"node_id": "node-7", "shard_id": "s7",
                          "advertise_host": "db7.example", "advertise_port": 27017})
    r = db.router.GetShardMap(db.pb.GetShardMapRequest(), timeout=T)
    s = r.shards[0]
    assert (s.shard_id, s.node_id, s.host, s.port) == ("s7", "node-7", "db7.example", 27017)
    assert list(db.query({}).stats.shards_queried) == ["node-7"]


def test_aggregate(ldb_start):
    db = ldb_start()
    db.insert([{"_id": i, "k": i % 3, "v": i} for i in range(30)])
    pipeline = [bson.encode({"$match": {"v": {"$gte": 3}}}),
                bson.encode({"$group": {"_id": "$k", "total": {"$sum": "$v"}}}),
                bson.encode({"$sort": {"_id": 1}})]
    req = db.pb.AggregationRequest(request_id="agg", database="t", collection="c",
                                   pipeline=pipeline)
    try:
        r = db.router.Aggregate(req, timeout=T)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip(f"ldb_aggregate is not implemented yet: {e.details()}")
        raise
    got = [bson.decode(d) for d in r.results]
    want = [{"_id": k, "total": sum(v for v in range(3, 30) if v % 3 == k)} for k in range(3)]
    assert got == want and r.request_id == "agg"
    e = rpc_error(db.router.Aggregate, db.pb.AggregationRequest(
        database="t", collection="c", pipeline=[bson.encode({"$nosuchstage": {}})]),
        timeout=T)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_module_stats_and_metrics_count_router_calls(ldb_start):
    db = ldb_start()
    db.insert([{"_id": i} for i in range(10)], coll="a")
    db.insert([{"_id": i} for i in range(5)], coll="b")
    for _ in range(3):
        db.query({}, coll="a")
    db.delete({"_id": 0}, coll="b")
    rpc_error(db.query, {}, coll="")
    calls = 2 + 3 + 1 + 1

    deadline = time.monotonic() + 10
    while True:  # usage figures refresh twice a second
        s = db.stats()
        if s.custom_stats.get("documents") == "14" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    c = s.custom_stats
    assert c["documents"] == "14" and c["collections"] == "2", dict(c)
    assert int(c["data_bytes"]) > 0
    assert (c["ops_insert"], c["ops_query"], c["ops_delete"]) == ("2", "4", "1")
    assert c["ops_query_failed"] == "1" and c["docs_inserted"] == "15"
    assert c["docs_returned"] == "30" and c["docs_deleted"] == "1"
    assert int(c["latency_p50_us"]) <= int(c["latency_p95_us"]) <= int(c["latency_p99_us"])
    assert int(c["latency_p99_us"]) > 0
    assert s.total_requests == calls and s.failed_requests == 1
    assert s.successful_requests == calls - 1
    assert s.bytes_received > 0 and s.bytes_sent > 0

    m = db.h.pb.module_pb2
    r = db.h.module.GetMetrics(m.GetMetricsRequest(instance_id=INSTANCE), timeout=T)
    points = {p.name: p.value for p in r.metrics.metrics}
    assert points["requests_total"] == calls and points["requests_failed_total"] == 1
    st = db.h.module.GetStatus(m.GetStatusRequest(instance_id=INSTANCE), timeout=T)
    assert st is not None
    hc = db.h.module.HealthCheck(m.HealthCheckRequest(instance_id=INSTANCE), timeout=T)
    assert hc.status == db.h.pb.types_pb2.HEALTH_STATUS_HEALTHY


def test_default_data_dir_is_the_instance_state_dir(ldb_start):
    db = ldb_start({"data_dir": None})
    assert db.insert([{"_id": 1}]).inserted_count == 1
    assert (db.h.state_dir / "instances" / INSTANCE / "data.mdb").is_file()
