# test_lauradb_crash.py — LauraDB's durability promise under a crash: a write the
# RouterService acknowledged is on disk. Rounds of: 4 client threads inserting documents
# over gRPC with unique ids and recording which inserts were acknowledged; SIGKILL of the
# host mid-stream; a restart on the same data directory; then every acknowledged document
# must be there and intact, every document present must be one that was sent, byte for
# byte (a checksum field guards against a half-written one), and an unacknowledged one is
# either wholly there or absent. The collection has a secondary index from the plugin's
# `indexes` setting; after each restart a query through that index must return what a
# full collection scan finds.

import hashlib
import random
import signal
import threading
import time

import bson
import grpc

from test_lauradb_router import (INSTANCE, Ldb, T, lauradb_plugin,  # noqa: F401 — fixtures
                                 ldb_start, rpc_error)

ROUNDS = 5
WRITERS = 4
COLL = "crash"
INDEX_KEYS = '{"g": 1, "n": -1}'


def make_doc(rnd, doc_id, n):
    """A document whose "sum" covers every other field, so a torn one shows."""
    g = n % 7
    pad = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randrange(20, 3000)))
    digest = hashlib.sha256(f"{doc_id}|{g}|{n}|{pad}".encode()).hexdigest()
    return {"_id": doc_id, "g": g, "n": n, "pad": pad, "sum": digest}


def intact(d):
    want = hashlib.sha256(f"{d['_id']}|{d['g']}|{d['n']}|{d['pad']}".encode()).hexdigest()
    return d.get("sum") == want and set(d) == {"_id", "g", "n", "pad", "sum"}


class Writer(threading.Thread):
    """Inserts one or a few documents per call on its own channel until a call fails
    (the host was killed). sent: every document put on the wire; acked: the ids of
    those whose call returned success."""

    def __init__(self, host, rnd_seed, prefix):
        super().__init__(daemon=True)
        self.ldb = Ldb(host)
        self.ldb.router = host.pb.routing_pb2_grpc.RouterServiceStub(host.connect())
        self.rnd = random.Random(rnd_seed)
        self.prefix = prefix
        self.sent, self.acked = {}, set()
        self.failure = None

    def run(self):
        n = 0
        deadline = time.monotonic() + 30  # bounded even if the kill never comes
        while time.monotonic() < deadline:
            batch = []
            for _ in range(1 if self.rnd.random() < 0.7 else self.rnd.randrange(2, 6)):
                d = make_doc(self.rnd, f"{self.prefix}-{n}", n)
                self.sent[d["_id"]] = d
                batch.append(d)
                n += 1
            try:
                r = self.ldb.insert(batch, coll=COLL)
            except (grpc.RpcError, ValueError) as e:  # killed; ValueError: channel closed
                self.failure = e
                return
            assert r.inserted_count == len(batch) and not r.errors, r
            self.acked.update(d["_id"] for d in batch)


def check_round(db, sent, acked, rnd_no):
    docs, _ = db.find_all({}, coll=COLL)
    by_id = {d["_id"]: d for d in docs}
    assert len(by_id) == len(docs), "a document is listed twice"
    lost = acked - set(by_id)
    assert not lost, (f"round {rnd_no}: {len(lost)} acknowledged inserts lost, "
                      f"e.g. {sorted(lost)[:3]}")
    for doc_id, d in by_id.items():
        assert doc_id in sent, f"round {rnd_no}: a document nobody sent: {doc_id}"
        assert intact(d), f"round {rnd_no}: document {doc_id} is torn"
        assert d == sent[doc_id], f"round {rnd_no}: document {doc_id} differs from what was sent"
    # The index (g asc, n desc) against the collection scan: every g value, and a sorted
    # range that the index serves in its own order.
    for g in range(7):
        r = db.query({"g": g}, coll=COLL, limit=0)
        via_index, _ = db.find_all({"g": g}, coll=COLL)
        want = sorted((d for d in docs if d["g"] == g), key=lambda d: d["_id"])
        assert sorted(via_index, key=lambda d: d["_id"]) == want, f"round {rnd_no}: g={g}"
        # Served by the index: only the matching documents were read (a scan reads all).
        if want and len(docs) > 2 * len(want):
            assert r.stats.documents_examined <= len(want), (g, r.stats, len(want))
    ranged, _ = db.find_all({"g": {"$gte": 2, "$lte": 4}}, coll=COLL,
                            sort=bson.encode({"g": 1, "n": -1}))
    want = sorted((d for d in docs if 2 <= d["g"] <= 4), key=lambda d: (d["g"], -d["n"]))
    assert [(d["g"], d["n"]) for d in ranged] == [(d["g"], d["n"]) for d in want]
    assert {d["_id"] for d in ranged} == {d["_id"] for d in want}
    return len(docs)


def test_acknowledged_inserts_survive_sigkill(ldb_start, tmp_path):
    settings = {"data_dir": str(tmp_path / "crashdata"), "threads": 8,
                "indexes": [{"ns": f"t.{COLL}", "keys": INDEX_KEYS}]}
    db = ldb_start(settings)
    h = db.h
    rnd = random.Random(20261122)
    sent, acked = {}, set()
    totals = []
    t_start = time.monotonic()
    for rnd_no in range(ROUNDS):
        writers = [Writer(h, rnd.random(), f"r{rnd_no}w{w}") for w in range(WRITERS)]
        for w in writers:
            w.start()
        # Let the writers get going, then crash the host in the middle of their calls.
        time.sleep(rnd.uniform(0.5, 2.5))
        h.restart(sig=signal.SIGKILL)
        for w in writers:
            w.join(30)
            assert not w.is_alive(), "a writer did not stop after the kill"
            assert w.failure is not None, "a writer ran out of time instead of being killed"
            sent.update(w.sent)
            acked |= w.acked
        round_acked = sum(len(w.acked) for w in writers)
        assert round_acked > 0, f"round {rnd_no}: nothing was acknowledged before the kill"
        db = Ldb(h)
        totals.append(check_round(db, sent, acked, rnd_no))
        assert totals[-1] >= len(acked)
    # After the last crash the host keeps working, and a clean restart changes nothing.
    assert db.insert([{"_id": "after", "g": 0, "n": -1}], coll=COLL).inserted_count == 1
    h.restart(sig=signal.SIGTERM)
    db = Ldb(h)
    docs, _ = db.find_all({}, coll=COLL)
    assert len(docs) == totals[-1] + 1
    m, t = h.pb.module_pb2, h.pb.types_pb2
    hc = h.module.HealthCheck(m.HealthCheckRequest(instance_id=INSTANCE), timeout=T)
    assert hc.status == t.HEALTH_STATUS_HEALTHY
    print(f"{ROUNDS} crashes: {len(acked)} acknowledged of {len(sent)} sent, "
          f"{totals[-1]} present; {time.monotonic() - t_start:.1f} s")


def test_indexes_setting_is_checked(ldb_start):
    """The `indexes` setting is validated with FILE:LINE, like every other setting."""
    db = ldb_start()
    m, t = db.h.pb.module_pb2, db.h.pb.types_pb2
    cases = (
        (b'indexes = ( { ns = "t.c"; } );\n', "needs ns"),
        (b'indexes = ( { ns = "nodot"; keys = "{\\"a\\": 1}"; } );\n', "db.collection"),
        (b'indexes = ( { ns = "t.c"; keys = "{\\"a\\": 2}"; } );\n', "1 or -1"),
        (b'indexes = ( { ns = "t.c"; keys = "not json"; } );\n', "not JSON"),
        (b'indexes = ( { ns = "t.c"; keys = "{}"; } );\n', "1 to 32"),
        (b'indexes = ( { ns = "t.c"; keys = "{\\"a\\": 1}"; bogus = 1; } );\n', "bogus"),
        (b'indexes = ( { ns = "t.c"; keys = "{\\"a\\": 1}"; unique = 3; } );\n', "unique"),
        (b'indexes = "a";\n', "list"),
    )
    for text, word in cases:
        r = db.h.module.UpdateConfig(m.UpdateConfigRequest(
            instance_id=INSTANCE, validate_only=True,
            config=t.ConfigUpdate(config_data=text)), timeout=T)
        assert not r.validation_passed, text
        err = r.validation_errors[0]
        assert word in err and ":" in err.split(word)[0], (text, err)  # FILE:LINE: first


def test_unique_index_setting_refuses_duplicates(ldb_start, tmp_path):
    """A unique index from the settings is enforced over gRPC; a new generation whose
    unique index the existing data violates does not serve, and says why."""
    data = tmp_path / "uniq"
    db = ldb_start({"data_dir": str(data),
                    "indexes": [{"ns": "t.u", "keys": '{"email": 1}', "unique": True,
                                 "name": "by_email"}]})
    assert db.insert([{"_id": 1, "email": "a@x"}], coll="u").inserted_count == 1
    r = db.insert([{"_id": 2, "email": "a@x"}, {"_id": 3, "email": "b@x"}], coll="u")
    assert r.inserted_count == 1 and len(r.errors) == 1
    assert r.errors[0].index == 0 and "by_email" in r.errors[0].error, r.errors[0].error
    docs, _ = db.find_all({}, coll="u")
    assert [d["_id"] for d in docs] == [1, 3]

    # New settings asking for a unique index on a field with duplicates: the new
    # generation cannot build it, so its store stays closed and calls say why.
    assert db.insert([{"_id": 4, "email": "c@x", "team": "red"},
                      {"_id": 5, "email": "d@x", "team": "red"}],
                     coll="u").inserted_count == 2
    m, t = db.h.pb.module_pb2, db.h.pb.types_pb2
    bad = (f'data_dir = "{data}";\n'
           'indexes = ( { ns = "t.u"; keys = "{\\"team\\": 1}"; unique = true; } );\n')
    mark = db.h.log_mark()
    u = db.h.module.UpdateConfig(m.UpdateConfigRequest(
        instance_id=INSTANCE, config=t.ConfigUpdate(config_data=bad.encode())), timeout=T)
    # The host builds the new generation while the old one still holds the directory,
    # so the new one opens the store (and builds the index) in the background.
    assert u.success, u.message
    db.h.wait_log(r"generation \S+ destroyed", since=mark)
    e = rpc_error(db.query, {}, coll="u")
    assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    assert "team" in e.details() and "duplicate" in e.details(), e.details()
    hc = db.h.module.HealthCheck(m.HealthCheckRequest(instance_id=INSTANCE), timeout=T)
    assert hc.status == t.HEALTH_STATUS_UNHEALTHY and "duplicate" in hc.message, hc
    # Settings without that index bring it back, data intact.
    good = f'data_dir = "{data}";\n'.encode()
    u = db.h.module.UpdateConfig(m.UpdateConfigRequest(
        instance_id=INSTANCE, config=t.ConfigUpdate(config_data=good)), timeout=T)
    assert u.success, u.message
    deadline = time.monotonic() + 15
    while True:
        try:
            docs, _ = db.find_all({}, coll="u")
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, e
            time.sleep(0.1)
    assert [d["_id"] for d in docs] == [1, 3, 4, 5]
