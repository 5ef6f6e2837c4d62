"""Errors the engine raises, and every ErrorInfo reason listseg answers with.

`REASONS` is the one list of reasons: each error class below takes its `reason` from it (a class
naming any other fails at import), and so do the refusals the server, the membership front and the
Python client make themselves. tests/test_errors.py checks that the proto's comment and the README's
"Errors" section name exactly these, and that no code makes a reason outside them. The server maps
each class to a gRPC status (server/errors.py CODES). The core itself knows nothing of gRPC.
"""
from typing import NamedTuple


class Reason(NamedTuple):
    name: str           # the ErrorInfo reason, stable
    made_by: str        # "engine" (a class below), "server", "front" or "client"
    meaning: str


REASONS = {r.name: r for r in (
    Reason("INVALID_ARGUMENT", "engine", "a request field is wrong; ErrorInfo `field` names it (`limit` when over one)"),
    Reason("INVALID_PROFILE", "engine", "a profile that cannot be stored or looked up: empty guid, a guid or "
                                        "identity over 256 bytes or holding a line break, an unknown channel"),
    Reason("BAD_HEADER", "engine", "a CSV's first row is a header that does not name the expected columns"),
    Reason("NOT_FOUND", "engine", "no such segment, upload, profile, account or consumer"),
    Reason("ALREADY_EXISTS", "engine", "a segment of that name exists"),
    Reason("SEGMENT_IN_USE", "engine", "campaigns or journeys are attached to the segment (ErrorInfo `consumers`)"),
    Reason("VERSION_EXPIRED", "engine", "a page token's version has passed its retention window"),
    Reason("HEAD_MOVED", "engine", "other commits moved the segment's head under each try of an upload's commit"),
    Reason("UPLOAD_TOO_LARGE", "engine", "an upload over the size limit, or a data message over 2 MiB"),
    Reason("REQUEST_TOO_LARGE", "engine", "a request message over 4 MiB (ErrorInfo `limit`)"),
    Reason("WRONG_OFFSET", "engine", "a resumed upload's offset is not the bytes the server holds (ErrorInfo "
                                     "`committed_bytes`: resume there)"),
    Reason("NOT_RESUMABLE", "engine", "the upload is not waiting for a resume: it is processing or has ended "
                                      "(ErrorInfo `state`)"),
    Reason("UPLOAD_ELSEWHERE", "engine", "another server process (--workers, another host) holds the upload: "
                                         "a new connection may reach it"),
    Reason("TOO_MANY_UPLOADS", "engine", "the account has as many uploads running as the server allows"),
    Reason("TOO_MANY_WATCHES", "engine", "the server process has as many WatchSegment streams open as it allows"),
    Reason("UNAUTHENTICATED", "engine", "missing or wrong x-account-id / x-passcode"),
    Reason("STORAGE_FULL", "engine", "the LMDB map is full; nothing committed is lost"),
    Reason("STORAGE_ERROR", "engine", "the store failed; the server logs it"),
    Reason("STORAGE_UNAVAILABLE", "engine", "the store (Redis) is out of reach or failing over; nothing half-done is kept: retry"),
    Reason("INTERNAL", "engine", "a bug; the server logs the traceback, the client learns nothing more"),
    Reason("UNKNOWN_METHOD", "server", "a method the server does not serve"),
    Reason("CANCELLED", "server", "the call ended (cancelled, past its deadline) before its answer"),
    Reason("NOT_ON_FRONT", "front", "a method the membership front does not serve (ErrorInfo `server`)"),
    Reason("SERVER_UNAVAILABLE", "front", "the front could not reach the server to relay a call"),
    Reason("DEADLINE_EXCEEDED", "front", "the deadline passed before the front had the request or the answer"),
    Reason("MESSAGE_TOO_LARGE", "front", "a relayed message was over gRPC's size limit"),
    Reason("RELAY_FAILED", "front", "a relayed call failed with a status gRPC made, not the server"),
    Reason("VERSION_CHANGED", "client", "the segment was replaced during each try of a split CheckMembers"),
)}


class ListsegError(Exception):
    reason = "INTERNAL"

    def __init__(self, message, **metadata):
        super().__init__(message)
        self.metadata = {k: str(v) for k, v in metadata.items()}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if REASONS.get(cls.reason, Reason("", "", "")).made_by != "engine":
            raise TypeError(f"{cls.__name__}.reason {cls.reason!r} is not an engine reason of core/errors.py REASONS")


class InvalidArgument(ListsegError):
    reason = "INVALID_ARGUMENT"


class InvalidProfile(InvalidArgument):
    """A profile that cannot be stored or looked up (empty guid, over-long or line-broken key, unknown
    channel)."""
    reason = "INVALID_PROFILE"


class BadHeader(InvalidArgument):
    """A CSV whose first row is a header that does not name the expected columns."""
    reason = "BAD_HEADER"


class NotFound(ListsegError):
    reason = "NOT_FOUND"


class AlreadyExists(ListsegError):
    reason = "ALREADY_EXISTS"


class InUse(ListsegError):
    """The segment has consumers (campaigns or journeys) attached: it cannot change until they stop."""
    reason = "SEGMENT_IN_USE"

    def __init__(self, segment_name, consumers):
        names = ", ".join(f"{c['kind']} {c['id']}" for c in consumers)
        super().__init__(f"segment {segment_name!r} is used by {names}; stop them first",
                         segment=segment_name, consumers=names)
        self.consumers = consumers


class VersionGone(ListsegError):
    """A pinned version (e.g. from a page token) has passed its retention window."""
    reason = "VERSION_EXPIRED"


class HeadMoved(ListsegError):
    """A segment's head is not the one a commit read (core/backend.py Unit.publish): another commit
    came between. The upload's commit reads again and retries (core/backend.py COMMIT_TRIES)."""
    reason = "HEAD_MOVED"


class TooLarge(ListsegError):
    reason = "UPLOAD_TOO_LARGE"


class RequestTooLarge(ListsegError):
    """A request message over the server's limit (server/decoding.py MAX_REQUEST)."""
    reason = "REQUEST_TOO_LARGE"


class WrongOffset(ListsegError):
    """A resume that does not start where the upload stopped (`committed_bytes` says where)."""
    reason = "WRONG_OFFSET"


class NotResumable(ListsegError):
    """A resume of an upload that is processing or has ended (`state`, and `reason` when it failed)."""
    reason = "NOT_RESUMABLE"


class UploadElsewhere(ListsegError):
    """A resume that reached a server process other than the one holding the upload."""
    reason = "UPLOAD_ELSEWHERE"


class TooManyUploads(ListsegError):
    """The account already has as many uploads running as the server allows."""
    reason = "TOO_MANY_UPLOADS"


class TooManyWatches(ListsegError):
    """As many WatchSegment streams are open as a server process allows (each holds a thread)."""
    reason = "TOO_MANY_WATCHES"


class Unauthenticated(ListsegError):
    """Missing or wrong credentials. Deliberately says nothing of which part was wrong."""
    reason = "UNAUTHENTICATED"

    def __init__(self):
        super().__init__("missing or invalid credentials (x-account-id, x-passcode)")


class StoreError(ListsegError):
    """LMDB failed (raised by both stores, core/_store.pyx and core/_store_py.py)."""
    reason = "STORAGE_ERROR"


class StorageUnavailable(StoreError):
    """The store cannot be reached, or is failing over, for longer than the backend waits (Redis
    Cluster: a primary down until its replica is promoted, or a write its replicas did not take)."""
    reason = "STORAGE_UNAVAILABLE"


class MapFullError(StoreError):
    """The LMDB map is full: the write transaction is aborted, nothing committed is lost."""
    reason = "STORAGE_FULL"
