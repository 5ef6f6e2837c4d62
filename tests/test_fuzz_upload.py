"""Fuzz UploadList with random message sequences against an in-process server.

A call is any list of messages: specs (any mode number, good and bad targets, dry run, strict, a bad
webhook), CSV data split anywhere, empty data, data over the 2 MiB message limit or over grpc's 4 MiB
frame limit, raw bytes that may not even be a message, finish messages with the right or a wrong byte
count, and anything after a finish. A model predicts each call's outcome
exactly - the status code, or the Upload's state and counts (from tests/csv_reference.py) - and which
version every segment must then hold. After every call each segment holds exactly its model's latest
committed version (never a mix, never a failed upload's rows), and the server keeps serving.

Every example works in its own segment names, so examples do not depend on one another.
"""
import itertools
import os
import time

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import csv_reference
from harness import InProcess, open_engine
from listseg.core.ingest import ACTIVE_STATES
from listseg.v1 import listseg_pb2 as pb

TWIN = bool(os.environ.get("LISTSEG_NO_EXTENSIONS"))
MAX_DATA = 2 << 20                      # server/servicers.py MAX_DATA_MESSAGE
MAX_FRAME = 4 << 20                     # server/decoding.py MAX_REQUEST: bigger messages are refused
CODE = grpc.StatusCode
GUIDS = [f"g{k}" for k in range(1, 9)]

# -- strategies --------------------------------------------------------------------------------
_rows = [b"g,g1", b"g,g2", b"i,user3@x.com", b"I,user4@x.com", b" g , g5 ", b'g,"g6"', b"g,nobody", b"i,user1@x.com",
         b"x,1", b"g,", b"g", b'g,"g7"x', b"g,g8\x00", b"i,\xff", b"Type,Identity", b'"', b"g,g1,g2", b""]
csv_bytes = st.lists(st.tuples(st.sampled_from(_rows), st.sampled_from([b"\n", b"\r\n", b"\r"])),
                     max_size=12).map(lambda rows: b"".join(a + b for a, b in rows))
spec = st.builds(lambda mode, target, dry, strict, hook: ("spec", mode, target, dry, strict, hook),
                 st.sampled_from([1, 2, 3, 4, 1, 2, 3, 4, 0, 5, 7, -1, 2 ** 31 - 1]),
                 st.sampled_from(["fresh", "existing", "existing", "locked", "missing", "empty", "long", "digits"]),
                 st.booleans(), st.booleans(), st.sampled_from([False, False, False, True]))
item = st.one_of(
    spec,
    csv_bytes.map(lambda b: ("data", b)),
    csv_bytes.map(lambda b: ("data", b)),
    st.just(("data", b"")),
    st.sampled_from([("big", MAX_DATA), ("big", MAX_DATA + 1)] * 4 + [("big", MAX_FRAME + 1)]),  # grpc takes
    # ~0.3 s to refuse a frame over its limit, so those are rarer
    st.binary(max_size=40).map(lambda b: ("raw", b)),
    st.sampled_from([("finish", 0), ("finish", 0), ("finish", 1)]),      # total_bytes right, or one too many
)
good_spec = st.builds(lambda mode, dry, strict: ("spec", mode, "fresh" if mode == 1 else "existing", dry, strict,
                                                 False),
                      st.sampled_from([1, 2, 3, 4]), st.sampled_from([False, False, True]),
                      st.sampled_from([False, False, True]))
after_finish = st.lists(st.one_of(spec, csv_bytes.map(lambda b: ("data", b)), st.just(("raw", b"\xff\xff")),
                                  st.just(("finish", 0))), max_size=2)     # the servicer stops reading at finish
good_call = st.tuples(good_spec, st.sampled_from([b"g,g3\n", b"Type,Identity\ni,user4@x.com\n", b"g,g1\ng,g5\n",
                                                  b"g,nobody\n", b"Type,Identity\n"]),
                      st.lists(csv_bytes, max_size=3), after_finish).map(
    lambda t: [t[0], *(("data", b) for b in [t[1], *t[2]]), ("finish", 0), *t[3]])
any_call = st.one_of(st.lists(item, max_size=6), st.tuples(spec, st.lists(item, max_size=5)).map(
    lambda t: [t[0], *t[1]]))
calls = st.lists(st.one_of(good_call, any_call), min_size=1, max_size=4)


def _big(n):
    """n bytes of upload data: one over-long identity (cheap for every parser)."""
    if TWIN and n == MAX_DATA:
        n = 64 << 10                    # the twin parses 2 MiB slowly; the limit itself is not the point
    return b"i," + b"a" * (n - 3) + b"\n"


# -- the server and the model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = open_engine(tmp_path_factory.mktemp("fuzz") / "data")
    account = engine.account()
    account.profiles.upsert([(g, f"user{g[1:]}@x.com", []) for g in GUIDS])
    # --resume-window 0: a stream that stops short fails its upload at once, as the model says
    # (tests/test_resume.py has the window)
    srv = InProcess(engine=engine, resume_window=0)
    channel = grpc.insecure_channel(srv.target)
    upload = channel.stream_unary("/listseg.v1.Segments/UploadList", request_serializer=None,
                                  response_deserializer=pb.Upload.FromString)
    profiles = {}
    for g in GUIDS:
        uid = account.profiles.find(guid=g).uid
        profiles[("g", g.encode())] = profiles[("i", f"user{g[1:]}@x.com".encode())] = uid
    _send(upload, [_spec(1, "locked"), pb.UploadListRequest(data=b"g,g1\n"), _finish(5)])
    account.segments.attach("locked", "campaign", "c1")
    yield engine, account, channel, upload, profiles
    channel.close()
    srv.stop()


_examples = itertools.count()


def _spec(mode, name="", segment="", dry=False, strict=False, hook=False):
    return pb.UploadListRequest(spec=pb.UploadSpec(mode=mode, name=name, segment=segment, dry_run=dry, strict=strict,
                                                   webhook_url="ftp://127.0.0.1/no" if hook else ""))


def _finish(total):
    return pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=total))


def _send(upload, messages):
    raw = [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]
    try:
        return upload(iter(raw), timeout=20)
    except grpc.RpcError as e:
        return e.code()


class Model:
    """What the server must do: segments -> committed versions (sets of uids)."""

    def __init__(self, prefix, profiles):
        self.prefix, self.profiles = prefix, profiles
        self.versions = {}              # name -> [set of uids, ...]
        self.fresh = itertools.count()

    def target(self, kind, create, pick):
        existing = sorted(self.versions)
        if kind == "existing" and existing:
            return existing[pick % len(existing)]
        special = {"locked": "locked", "empty": "", "long": "x" * 201, "missing": f"{self.prefix}-missing",
                   "digits": "987654321"}         # read as a segment id, so no create's name
        return special.get(kind, f"{self.prefix}-n{next(self.fresh)}")

    def messages(self, items, pick):
        """The wire messages of a call, each with what the server sees in it."""
        out, fed, finished = [], 0, False
        for it in items:
            if it[0] == "finish":
                msg = pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=fed + it[1]))
                out.append((msg, ("finish", fed + it[1])))
                finished = True
                continue
            if it[0] == "big" and it[1] > MAX_FRAME and finished:
                continue        # grpc may refuse it before the servicer reads the finish: a race, not a rule
            if it[0] == "spec":
                _, mode, kind, dry, strict, hook = it
                create = mode == 1
                name = self.target(kind, create, pick)
                msg = _spec(mode, name if create else "", "" if create else name, dry, strict, hook)
                out.append((msg, ("spec", mode, name, dry, strict, hook)))
            elif it[0] == "data":
                out.append((pb.UploadListRequest(data=it[1]), ("data", it[1])))
            elif it[0] == "big":
                data = _big(it[1])
                seen = ("frame",) if len(data) > MAX_FRAME else ("data", data)
                out.append((pb.UploadListRequest(data=data), seen))
            else:
                out.append((it[1], _decode(it[1])))
            seen = out[-1][1]
            if seen[0] == "data" and len(seen[1]) <= MAX_DATA:
                fed += len(seen[1])
            finished = finished or seen[0] == "finish"
        return out

    def expect(self, seen):
        """Apply a call to the model; return its outcome: a status code, or (state, counts, size)."""
        if not seen:
            return CODE.INVALID_ARGUMENT
        first, rest = seen[0], seen[1:]
        if first[0] == "corrupt":
            return CODE.INVALID_ARGUMENT            # no message at all (server/decoding.py)
        if first[0] == "frame":
            return CODE.RESOURCE_EXHAUSTED          # grpc refuses it before the servicer sees it
        if first[0] != "spec":
            return CODE.INVALID_ARGUMENT
        _, mode, name, dry, strict, hook = first
        if mode not in (1, 2, 3, 4) or hook:
            return CODE.INVALID_ARGUMENT
        create = mode == 1
        if create:
            if not name or len(name) > 200 or name.isdigit():
                return CODE.INVALID_ARGUMENT
            if name in self.versions or name == "locked":
                return CODE.ALREADY_EXISTS
            # its segment exists from here on, but only a create that succeeds leaves it behind
        else:
            if not name:
                return CODE.INVALID_ARGUMENT
            if name != "locked" and name not in self.versions:
                return CODE.NOT_FOUND
            if name == "locked" and not dry:
                return CODE.FAILED_PRECONDITION
        data, finished = b"", False
        for msg in rest:
            if msg[0] == "finish":
                if msg[1] != len(data):
                    return CODE.INVALID_ARGUMENT        # the byte count disagrees: fail, commit nothing
                finished = True
                break                                   # what follows a finish is never read
            if msg[0] in ("spec", "corrupt", "frame"):
                return {"spec": CODE.INVALID_ARGUMENT, "corrupt": CODE.INVALID_ARGUMENT,
                        "frame": CODE.RESOURCE_EXHAUSTED}[msg[0]]
            if msg[0] == "data":
                if len(msg[1]) > MAX_DATA:
                    return CODE.RESOURCE_EXHAUSTED
                data += msg[1]
        if not finished:
            return CODE.INVALID_ARGUMENT                # no finish: the file may be incomplete
        state, counts, members, _ = csv_reference.report(data, self.profiles, strict)
        live = self.live(name) if not create else set()
        if state == "succeeded":
            new = {1: members, 2: members, 3: live | members, 4: live - members}[mode]
            if not dry:
                self.versions.setdefault(name, []).append(new)
            return state, counts, len(new)
        return state, counts, len(live)

    def live(self, name):
        if name == "locked":
            return {self.profiles[("g", b"g1")]}
        return self.versions[name][-1]


def _label(seen):
    modes = {1: "create", 2: "replace", 3: "append", 4: "remove"}
    return modes.get(seen[1], "bad mode") if seen[0] == "spec" else seen[0]


def _decode(raw):
    try:
        msg = pb.UploadListRequest.FromString(raw)
    except DecodeError:
        return ("corrupt",)
    kind = msg.WhichOneof("payload")
    if kind == "finish":
        return ("finish", msg.finish.total_bytes)
    return ("data", msg.data) if kind == "data" else ("nothing",)


def _not_a_spec(raw):
    try:
        return pb.UploadListRequest.FromString(raw).WhichOneof("payload") != "spec"
    except DecodeError:
        return True


@settings(max_examples=50 if TWIN else 100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls=calls, pick=st.integers(0, 1000))
def test_upload_stream_fuzz(server, calls, pick):
    engine, account, channel, upload, profiles = server
    model = Model(f"e{next(_examples)}", profiles)
    base = f"{model.prefix}-base"
    assert _send(upload, [_spec(1, base), pb.UploadListRequest(data=b"g,g1\ng,g2\n"), _finish(10)]).state == \
        pb.UPLOAD_STATE_SUCCEEDED
    model.versions[base] = [{profiles[("g", b"g1")], profiles[("g", b"g2")]}]
    for items in calls:
        items = [it for it in items if it[0] != "raw" or _not_a_spec(it[1])]   # random specs could name URLs
        wire = model.messages(items, pick)
        want = model.expect([seen for _, seen in wire])
        event(f"{_label(wire[0][1]) if wire else 'nothing'} -> {want.name if isinstance(want, CODE) else want[0]}")
        got = _send(upload, [msg for msg, _ in wire])
        if isinstance(want, CODE):
            assert got == want, (items, got)
        else:
            assert isinstance(got, pb.Upload), (items, got)
            r = got.report
            state = {pb.UPLOAD_STATE_SUCCEEDED: "succeeded", pb.UPLOAD_STATE_FAILED: "failed"}[got.state]
            assert (state, (r.rows, r.qualified, r.unknown, r.invalid, r.duplicates), r.size) == want, items
        _check_uploads_ended(account, 2 if want == CODE.RESOURCE_EXHAUSTED else 0)
        _check_segments(account, model)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _check_uploads_ended(account, grace):
    """No upload is left receiving or processing. When grpc itself ends a stream (an oversized
    message) the client has its status while the servicer is still failing the upload: `grace` seconds."""
    deadline = time.time() + grace
    while True:
        with account.backend.snapshot() as snap:
            active = [u["id"] for u in snap.uploads(account.number) if u["state"] in ACTIVE_STATES]
        if not active or time.time() > deadline:
            break
        time.sleep(0.01)
    assert active == []


def _check_segments(account, model):
    """Each segment of this example holds exactly its latest committed version; no others exist."""
    names = {s["name"] for s in account.segments.list() if s["name"].startswith(model.prefix + "-")}
    assert names == set(model.versions)
    for name, versions in model.versions.items():
        version, uids, _ = account.segments.members(name, count=1 << 20)
        assert (version, set(uids)) == (len(versions), versions[-1]), name
    version, uids, _ = account.segments.members("locked")
    assert (version, list(uids)) == (1, [model.profiles[("g", b"g1")]])
