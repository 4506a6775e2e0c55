# test_lauradb_badinput.py — what test_lauradb_router.py's bad-input test does not reach:
# well-formed BSON that is a bad request (unknown query, update and pipeline operators,
# operands of the wrong type, updates that cannot apply to the stored document) and
# malformed BSON inside otherwise valid documents. Each must be INVALID_ARGUMENT with a
# message naming the culprit, must change nothing, and the host must keep serving.

import bson
import grpc
import pytest
from bson.regex import Regex

from test_lauradb_router import (INSTANCE, T, lauradb_plugin,  # noqa: F401 — fixtures
                                 ldb_start)

SEED = [{"_id": 1, "a": 5, "s": "text", "arr": [1, 2], "sub": {"x": 1}},
        {"_id": 2, "a": 7, "s": "more", "arr": [], "sub": {"x": 2}}]


# Updates that are wrong whatever they meet: MongoDB refuses them before matching.
PARSE_ERRORS = (
    ({"$foo": {"a": 1}}, ["$foo"]),
    ({"$inc": {"a": "x"}}, ["$inc"]),
    ({"$inc": 5}, ["$inc"]),
    ({"$set": {"a": 1}, "b": 2}, []),
    ({"$rename": {"a": 3}}, ["$rename"]),
    ({"$set": {"a": 1}, "$unset": {"a": ""}}, ["a"]),  # conflicting paths
)


def docs_now(db):
    return [bson.decode(d) for d in db.query({}).documents]


class Expect:
    """Collects every case that is not INVALID_ARGUMENT naming its words, so one run
    reports all of them rather than the first."""

    def __init__(self):
        self.problems = []
        self.count = 0

    def invalid(self, what, call, *words):
        self.count += 1
        try:
            call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                self.problems.append(f"{what}: {e.code().name}: {e.details()}")
            elif not all(w in e.details() for w in words):
                self.problems.append(f"{what}: message lacks {words}: {e.details()}")
            return
        self.problems.append(f"{what}: accepted")

    def check(self):
        assert not self.problems, "\n".join(self.problems)


def test_bad_operators_and_types_are_invalid_argument(ldb_start):
    db = ldb_start()
    assert db.insert(SEED).inserted_count == 2
    pb = db.pb
    enc = bson.encode
    x = Expect()

    # Queries: unknown operators at the top and inside a field, operands of wrong types.
    for filt, words in (
        ({"$foo": 1}, ["$foo"]),
        ({"a": {"$foo": 1}}, ["$foo"]),
        ({"a": {"$in": 5}}, ["$in"]),
        ({"a": {"$nin": "x"}}, ["$nin"]),
        ({"$and": 1}, ["$and"]),
        ({"$or": []}, ["$or"]),
        ({"a": {"$size": "x"}}, ["$size"]),
        ({"s": {"$regex": "("}}, ["regex"]),
        ({"a": {"$mod": [0, 1]}}, ["$mod"]),
    ):
        x.invalid(f"query {filt}", lambda f=filt: db.query(f), *words)
        x.invalid(f"delete {filt}", lambda f=filt: db.delete(f, multi=True), *words)
        x.invalid(f"update filter {filt}",
                  lambda f=filt: db.update(f, {"$set": {"z": 1}}, multi=True), *words)

    # Projections and sorts.
    x.invalid("mixed projection", lambda: db.query({}, projection={"a": 1, "s": 0}))
    x.invalid("sort 2", lambda: db.query({}, sort={"a": 2}), "sort")
    x.invalid("sort 'up'", lambda: db.query({}, sort={"a": "up"}), "sort")

    # Updates: unknown operators, operands of the wrong type, operators mixed with
    # replacement fields, and a modifier that cannot apply to the stored value.
    assert docs_now(db) == SEED, "a refused query/delete/update changed the data"
    for upd, words in PARSE_ERRORS + (
        ({"$push": {"a": 1}}, ["$push"]),   # a is a number, not an array
        ({"$inc": {"s": 1}}, ["$inc"]),     # s is a string
        ({"$set": {"arr.x": 1}}, []),       # a field of an array
        ({"$set": {"_id": 99}}, ["_id"]),   # _id is immutable
    ):
        x.invalid(f"update {upd}", lambda u=upd: db.update({"_id": 1}, u), *words)
        x.invalid(f"update multi {upd}", lambda u=upd: db.update({}, u, multi=True), *words)

    # Inserts: an _id that cannot be one (a $-prefixed field name elsewhere is allowed,
    # as in MongoDB 5.0 and later).
    r_or_e = None
    for bad_doc, words in (({"_id": [1, 2], "a": 1}, ["_id"]),
                           ({"_id": Regex("^x")}, ["_id"])):
        try:
            r_or_e = db.insert([bad_doc], ordered=True)
        except grpc.RpcError as e:
            r_or_e = e
        if isinstance(r_or_e, grpc.RpcError):
            assert r_or_e.code() == grpc.StatusCode.INVALID_ARGUMENT, r_or_e.details()
            text = r_or_e.details()
        else:  # refused per document, as MongoDB's writeErrors
            assert r_or_e.inserted_count == 0 and len(r_or_e.errors) == 1, r_or_e
            text = r_or_e.errors[0].error
        for w in words:
            assert w in text, (w, text)

    # Aggregation: unknown stage, unknown accumulator, a stage with two keys, wrong types.
    for stages, words in (
        ([{"$foo": {}}], ["$foo"]),
        ([{"$group": {"_id": "$a", "n": {"$bogus": 1}}}], ["$bogus"]),
        ([{"$group": {"n": {"$sum": 1}}}], ["_id"]),
        ([{"$match": {}, "$limit": 1}], []),
        ([{"$limit": -1}], ["$limit"]),
        ([{"$limit": "x"}], ["$limit"]),
        ([{"$skip": -5}], ["$skip"]),
        ([{"$sort": {"a": 0}}], ["$sort"]),
        ([{"$unwind": 5}], ["$unwind"]),
        ([{"$project": {"a": 1, "s": 0}}], []),
        ([{"$match": {"a": {"$foo": 1}}}], ["$foo"]),
    ):
        x.invalid(f"pipeline {stages}", lambda s=stages: db.router.Aggregate(
            pb.AggregationRequest(database="t", collection="c",
                                  pipeline=[enc(st) for st in s]), timeout=T), *words)

    x.check()
    # Nothing changed, and the host still serves reads and writes.
    assert docs_now(db) == SEED
    assert db.update({"_id": 1}, {"$inc": {"a": 1}}).modified_count == 1
    assert db.insert([{"_id": 3}]).inserted_count == 1
    assert [d["_id"] for d in docs_now(db)] == [1, 2, 3]
    m, t = db.h.pb.module_pb2, db.h.pb.types_pb2
    hc = db.h.module.HealthCheck(m.HealthCheckRequest(instance_id=INSTANCE), timeout=T)
    assert hc.status == t.HEALTH_STATUS_HEALTHY
    assert int(db.stats().custom_stats["requests_invalid"]) >= 60


def test_malformed_bson_inside_documents(ldb_start):
    db = ldb_start()
    pb = db.pb
    x = Expect()
    good = bson.encode({"a": {"b": "xy"}})
    # Each a valid outer length with bad contents: an embedded document whose length
    # runs past its parent, a string whose length runs past the end, an unknown type
    # byte, a missing terminating NUL.
    past = bytearray(good)
    past[8] = 0x40  # the embedded document's length
    strlen = bytearray(good)
    strlen[15] = 0x30  # the string's length
    badtype = bytearray(good)
    badtype[4] = 0x7e
    no_nul = bytearray(good)
    no_nul[-1] = 0x01
    for raw in (past, strlen, badtype, no_nul):
        raw = bytes(raw)
        assert raw != good and len(raw) == len(good)
        for call, word in (
            (lambda r=raw: db.router.Insert(pb.InsertRequest(
                database="t", collection="c", documents=[good, r]), timeout=T), "documents[1]"),
            (lambda r=raw: db.router.Query(pb.QueryRequest(
                database="t", collection="c", query=r), timeout=T), "query"),
            (lambda r=raw: db.router.Update(pb.UpdateRequest(
                database="t", collection="c", query=bson.encode({}), update=r),
                timeout=T), "update"),
            (lambda r=raw: db.router.Aggregate(pb.AggregationRequest(
                database="t", collection="c", pipeline=[r]), timeout=T), "pipeline[0]"),
        ):
            x.invalid(f"{word} {raw.hex()}", call, word, "malformed BSON")
    x.check()
    # The insert that carried a bad document inserted none of them.
    assert docs_now(db) == []
    assert db.insert([bson.decode(good)]).inserted_count == 1
    assert len(docs_now(db)) == 1


def test_malformed_update_is_refused_even_when_nothing_matches(ldb_start):
    db = ldb_start()
    assert db.insert(SEED).inserted_count == 2
    x = Expect()
    for upd, words in PARSE_ERRORS:
        x.invalid(f"update {upd}", lambda u=upd: db.update({"_id": 404}, u), *words)
        x.invalid(f"upsert {upd}", lambda u=upd: db.update({"_id": 404}, u, upsert=True),
                  *words)
    assert docs_now(db) == SEED
    x.check()
