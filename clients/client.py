"""The Python client: typed methods for every RPC, a deadline on every call, errors as exceptions.

    from listseg import Client
    with Client("127.0.0.1:50051") as c:
        up = c.upload("vip.csv", name="vip")
        c.is_member("vip", guid="a1e2...")

It imports only the generated stubs, never the engine.
"""
import contextlib
import functools
import inspect
import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from listseg.v1 import UPLOAD_ID_HEADER
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK = 1 << 20                      # bytes per UploadList data message (the server takes up to 2 MiB)
# CheckMembers takes at most 100,000 identities and a request of at most 4 MiB (listseg.proto); the
# client leaves 64 KiB of the 4 MiB for the segment and the framing
CHECK_COUNT = 100_000
CHECK_BYTES = (4 << 20) - (64 << 10)
CHECK_ATTEMPTS = 3                   # tries to answer a split check from one version
# An upload whose stream breaks (no status from the server: the connection dropped) resumes from the
# byte the server holds, on a new stream, after a wait that doubles from the first figure to the
# second: at most RESUME_TRIES breaks (~30 s of waiting in all), beyond them the call fails.
RESUME_TRIES = 8
RESUME_BACKOFF_S = (0.25, 8.0)
# a resume that reaches a server process not holding the upload (--workers) tries a new connection,
# this many times at most (with 2 workers, 32 misses in a row happen once in 4 billion)
RECONNECTS = 32
ENDING = ("processing", "succeeded", "failed")     # NOT_RESUMABLE states after which GetUpload tells the end
BROKEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)
MODES = {"name": pb.UPLOAD_MODE_CREATE, "replace": pb.UPLOAD_MODE_REPLACE,
         "append": pb.UPLOAD_MODE_APPEND, "remove": pb.UPLOAD_MODE_REMOVE}
KINDS = {"campaign": pb.CONSUMER_KIND_CAMPAIGN, "journey": pb.CONSUMER_KIND_JOURNEY}
Source = str | bytes | IO[bytes]     # a CSV: a path, its bytes, or a binary file
F = TypeVar("F", bound=Callable[..., Any])


class CallError(Exception):
    """A call that failed: `code` (grpc.StatusCode), `reason` (stable: one of the reasons the proto
    lists, "" when grpc itself ended the call without one), `metadata` (the ErrorInfo's).

    Not the engine's `listseg.core.errors.ListsegError`: this one wraps a status that came over the
    wire (the client never imports the engine). It was called ListsegError too until that clash."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.metadata = code, reason, dict(metadata or {})

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> "CallError":
        reason, metadata = "", {}
        status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, info.metadata
        return cls(err.code(), err.details() or str(err.code()), reason, metadata)


def _broken(err: grpc.RpcError) -> bool:
    """Whether a call failed for want of a connection, not by the server's answer (which always
    carries an ErrorInfo reason)."""
    return err.code() in BROKEN and not CallError.from_rpc(err).reason


def _naming(err: grpc.RpcError, upload_id: int | None) -> CallError:
    """err as a CallError whose metadata names the upload it ended (for `listseg upload --resume`)."""
    e = CallError.from_rpc(err)
    if upload_id is not None:
        e.metadata.setdefault("upload", str(upload_id))
    return e


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, str):
        with open(source, "rb") as f:
            yield f
    else:
        yield io.BytesIO(source) if isinstance(source, bytes) else source


class _Feed:
    """The file an upload sends, from any offset: a resumed stream starts where the server stopped.

    A broken stream's request iterator may still be asked for a message by gRPC after the call has
    failed, while the next stream already reads: each stream has a number, only the newest one's
    reads count, and every read starts where that stream is (a shared file has one position)."""

    def __init__(self, f: IO[bytes], progress: Callable[[int], object] | None, upload_id: int | None,
                 on_stream: Callable[[int, int], object] | None) -> None:
        self.f, self.progress, self.upload_id, self.on_stream = f, progress, upload_id, on_stream
        self.start = f.tell() if self.seekable() else 0     # a file handed over part read is sent from there
        self.at = 0                 # where the file is, from start
        self.sent = 0               # bytes of the file handed to gRPC by the newest stream (the progress)
        self.stream = 0             # the newest stream's number
        self.failure: Exception | None = None   # the source failed: no resume can help
        self.lock = threading.Lock()

    def seekable(self) -> bool:
        return bool(getattr(self.f, "seekable", lambda: False)())     # anything with read() will do

    def messages(self, first: pb.UploadListRequest, offset: int) -> Iterator[pb.UploadListRequest]:
        """A new stream's messages: first, the file from offset on, the finish message."""
        self.stream += 1
        mine, position = self.stream, offset
        yield first
        while True:
            with self.lock:
                if mine != self.stream:
                    return                              # a newer stream sends the file now
                try:
                    if self.at != position:
                        self.f.seek(self.start + position)
                    chunk = self.f.read(CHUNK)
                except Exception as exc:                # gRPC only cancels the call: the upload tells why
                    self.failure = exc
                    raise
                self.at = position + len(chunk)
                if mine != self.stream:
                    return                              # it began while this read: the bytes are not ours
                if self.progress:
                    self.progress(self.at - self.sent)      # back to the offset first, after a resume
                position = self.sent = self.at
            if not chunk:
                break
            yield pb.UploadListRequest(data=chunk)
        yield pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=position))


def _calls(fn: F) -> F:
    """Run fn (a function or a generator), turning grpc.RpcError into CallError."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def pages(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except grpc.RpcError as err:
                raise CallError.from_rpc(err) from None
        return pages  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            raise CallError.from_rpc(err) from None
    return call  # type: ignore[return-value]


class Client:
    def __init__(self, target: str | None = None, account: str | None = None, passcode: str | None = None,
                 tls_ca: str | None = None, timeout: float = 30.0, upload_timeout: float = 6 * 3600.0) -> None:
        self.target = target or os.environ.get("LISTSEG_SERVER") or DEFAULT_TARGET
        account = account or os.environ.get("LISTSEG_ACCOUNT")
        passcode = passcode or os.environ.get("LISTSEG_PASSCODE")
        self.metadata: tuple[tuple[str, str | None], ...] = \
            (("x-account-id", account), ("x-passcode", passcode)) if account else ()
        self.credentials = None
        if tls_ca:
            with open(tls_ca, "rb") as f:
                self.credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        self.timeout, self.upload_timeout = timeout, upload_timeout
        self.retired: list[grpc.Channel] = []
        self._connect()

    def _connect(self, new_connection: bool = False) -> None:
        """The channel and stubs; `new_connection`: never share a connection another channel has
        (with --workers, a new connection may reach another server process)."""
        options = [("grpc.max_receive_message_length", 64 << 20)]
        options += [("grpc.use_local_subchannel_pool", 1)] if new_connection else []
        self.channel = (grpc.secure_channel(self.target, self.credentials, options=options) if self.credentials
                        else grpc.insecure_channel(self.target, options=options))
        self.segments = pb_grpc.SegmentsStub(self.channel)
        self.membership = pb_grpc.MembershipStub(self.channel)
        self.profiles = pb_grpc.ProfilesStub(self.channel)

    def _reconnect(self) -> None:
        self.retired.append(self.channel)       # closed with the client: other threads' calls may use it
        self._connect(new_connection=True)

    def close(self) -> None:
        for channel in [*self.retired, self.channel]:
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {"timeout": timeout or self.timeout, "metadata": self.metadata}

    # -- uploads ---------------------------------------------------------------------------
    @_calls
    def upload(self, source: Source, name: str | None = None, replace: str | int | None = None,
               append: str | int | None = None, remove: str | int | None = None, dry_run: bool = False,
               strict: bool = False, webhook_url: str = "", progress: Callable[[int], object] | None = None,
               notify_emails: Iterable[str] = (), resume: int | None = None, retries: int = RESUME_TRIES,
               on_stream: Callable[[int, int], object] | None = None) -> pb.Upload:
        """Stream a CSV (path, bytes or binary file) as a create (name=) or a replace / append /
        remove of a segment. Returns the Upload when processing has ended. `progress(n_bytes)` is
        called as bytes go out (negative when a resume goes back); `notify_emails` each get an email
        when processing ends.

        A stream that breaks is resumed from the byte the server holds, up to `retries` times, with
        backoff, when the source can seek. `on_stream(upload_id, offset)` is called (on this thread)
        as each stream takes the upload: offset 0 for the first, where it resumes for the others.
        `resume=UPLOAD_ID` (and no name or segment) continues an upload that a broken stream left,
        from the same file. A CallError that ends an upload names it in metadata["upload"]."""
        given = {k: v for k, v in (("name", name), ("replace", replace), ("append", append),
                                   ("remove", remove)) if v is not None}
        if len(given) != (resume is None):
            raise ValueError("give exactly one of name, replace, append, remove" if resume is None else
                             "a resume takes the upload's id only: its spec was given when it began")
        with _opened(source) as f:
            feed = _Feed(f, progress, resume, on_stream)
            if resume is not None:
                if not feed.seekable():
                    raise ValueError("a resume sends the file from an offset: it needs a file that can seek")
                return self._resume(feed, retries)
            (mode, target), = given.items()
            file_name = source if isinstance(source, str) else getattr(source, "name", "")
            spec = pb.UploadSpec(mode=MODES[mode], dry_run=dry_run, strict=strict, webhook_url=webhook_url,
                                 file_name=os.path.basename(str(file_name)), notify_emails=list(notify_emails),
                                 **({"name": target} if mode == "name" else {"segment": str(target)}))
            try:
                return self._stream(pb.UploadListRequest(spec=spec), feed, 0)
            except grpc.RpcError as err:
                if feed.failure is not None:
                    raise feed.failure from None
                if feed.upload_id is None or not (_broken(err) and feed.seekable() and retries > 0):
                    raise _naming(err, feed.upload_id) from None
            return self._resume(feed, retries - 1)

    def _stream(self, first: pb.UploadListRequest, feed: "_Feed", offset: int) -> pb.Upload:
        """One UploadList call: first, then the file from offset; learns the upload's id from its headers."""
        call = self.segments.UploadList.future(feed.messages(first, offset), **self._kw(self.upload_timeout))
        for key, value in call.initial_metadata() or ():
            if key == UPLOAD_ID_HEADER:
                feed.upload_id = int(value)
                if feed.on_stream:
                    feed.on_stream(feed.upload_id, offset)
        return call.result()

    def _resume(self, feed: "_Feed", retries: int) -> pb.Upload:
        """Continue feed's upload on new streams until it ends; at most `retries` more may break.
        Besides, at most RECONNECTS detours: a new connection (another server process holds the
        upload), a resume at the offset the server names (a message of the broken stream arrived
        after GetUpload), a second read of an upload that ended meanwhile."""
        delay, detours, offset = RESUME_BACKOFF_S[0], 0, None
        while True:
            try:
                if offset is None:
                    up = self.segments.GetUpload(pb.GetUploadRequest(id=feed.upload_id), **self._kw())
                    if up.state == pb.UPLOAD_STATE_PROCESSING:    # all of it arrived: the answer was lost
                        return self._ended(up.id)
                    if up.state != pb.UPLOAD_STATE_RECEIVING:
                        return up
                    offset = up.committed_bytes
                resume = pb.UploadListRequest(resume=pb.UploadResume(upload_id=feed.upload_id, offset=offset))
                return self._stream(resume, feed, offset)
            except grpc.RpcError as err:
                if feed.failure is not None:
                    raise feed.failure from None
                e, offset = CallError.from_rpc(err), None
                if detours < RECONNECTS and (e.reason in ("WRONG_OFFSET", "UPLOAD_ELSEWHERE") or
                                             e.reason == "NOT_RESUMABLE" and e.metadata.get("state") in ENDING):
                    detours += 1
                    if e.reason == "WRONG_OFFSET":
                        offset = int(e.metadata["committed_bytes"])
                    elif e.reason == "UPLOAD_ELSEWHERE":
                        self._reconnect()
                    continue
                if not (_broken(err) and retries > 0):
                    raise _naming(err, feed.upload_id) from None
                retries -= 1
                time.sleep(delay)
                delay = min(delay * 2, RESUME_BACKOFF_S[1])

    def _ended(self, upload_id: int) -> pb.Upload:
        """The upload once processing has ended."""
        for progress in self.segments.WatchUpload(pb.WatchUploadRequest(id=upload_id),
                                                  **self._kw(self.upload_timeout)):
            if progress.HasField("upload"):
                return progress.upload
        return self.segments.GetUpload(pb.GetUploadRequest(id=upload_id), **self._kw())

    @_calls
    def get_upload(self, upload_id: int) -> pb.Upload:
        return self.segments.GetUpload(pb.GetUploadRequest(id=upload_id), **self._kw())

    @_calls
    def watch_upload(self, upload_id: int, timeout: float | None = None) -> list[pb.Upload]:
        return list(self.segments.WatchUpload(pb.WatchUploadRequest(id=upload_id),
                                              **self._kw(timeout or self.upload_timeout)))

    @_calls
    def upload_errors_page(self, upload_id: int, page_size: int = 1000,
                           page_token: str = "") -> tuple[list[tuple[int, str]], str]:
        """One page of an upload's rejected rows: ([(line, reason)], the next page's token or "")."""
        resp = self.segments.ListUploadErrors(
            pb.ListUploadErrorsRequest(id=upload_id, page_size=page_size, page_token=page_token), **self._kw())
        return [(e.line, e.reason) for e in resp.errors], resp.next_page_token

    def upload_errors(self, upload_id: int, page_size: int = 1000) -> list[tuple[int, str]]:
        """Every rejected row of an upload: [(line, reason)]."""
        out: list[tuple[int, str]] = []
        token = ""
        while True:
            errors, token = self.upload_errors_page(upload_id, page_size, token)
            out.extend(errors)
            if not token:
                return out

    # -- segments --------------------------------------------------------------------------
    @_calls
    def check_access(self) -> None:
        """One cheap call: raises CallError (UNAUTHENTICATED, UNAVAILABLE...) when this client cannot use
        the API."""
        self.segments.ListSegments(pb.ListSegmentsRequest(page_size=1), **self._kw())

    @_calls
    def get_segment(self, segment: str | int, sample: int = 0) -> pb.Segment:
        return self.segments.GetSegment(pb.GetSegmentRequest(segment=str(segment), sample_size=sample),
                                        **self._kw())

    @_calls
    def list_segments(self) -> list[pb.Segment]:
        out: list[pb.Segment] = []
        token = ""
        while True:
            resp = self.segments.ListSegments(pb.ListSegmentsRequest(page_token=token), **self._kw())
            out.extend(resp.segments)
            token = resp.next_page_token
            if not token:
                return out

    @_calls
    def delete_segment(self, segment: str | int) -> None:
        self.segments.DeleteSegment(pb.DeleteSegmentRequest(segment=str(segment)), **self._kw())

    @_calls
    def sample(self, segment: str | int, count: int = 10) -> list[pb.Profile]:
        return list(self.segments.SampleMembers(
            pb.SampleMembersRequest(segment=str(segment), count=count), **self._kw()).profiles)

    @_calls
    def export_chunks(self, segment: str | int) -> Iterator[bytes]:
        """The members CSV in the chunks the server sends (the first call is made at the first next())."""
        for msg in self.segments.ExportMembers(pb.ExportMembersRequest(segment=str(segment)),
                                               **self._kw(self.upload_timeout)):
            yield msg.data

    def export(self, segment: str | int, out: IO[bytes] | None = None) -> bytes | None:
        """Write the members CSV to `out` (a binary file; default: return bytes)."""
        sink: IO[bytes] = out or io.BytesIO()
        for chunk in self.export_chunks(segment):
            sink.write(chunk)
        return None if out else sink.getvalue()  # type: ignore[attr-defined]

    @_calls
    def watch_segment(self, segment: str | int, after_version: int = 0,
                      timeout: float | None = None) -> Iterator[pb.SegmentChange]:
        """Yield a SegmentChange each time the segment's head moves: first the head now (or, with
        after_version, the first head after it). Ends with CallError NOT_FOUND when the segment is
        deleted; closing the iterator cancels the stream."""
        yield from self.segments.WatchSegment(pb.WatchSegmentRequest(segment=str(segment), after_version=after_version),
                                              **self._kw(timeout or self.upload_timeout))

    @_calls
    def versions(self, segment: str | int) -> list[pb.SegmentVersion]:
        """Every version of the segment, newest first."""
        return list(self.segments.ListSegmentVersions(pb.ListSegmentVersionsRequest(segment=str(segment)),
                                                      **self._kw()).versions)

    @_calls
    def rollback(self, segment: str | int, version: int) -> pb.Segment:
        """A new head version with the members of `version` (a kept one); the segment after."""
        return self.segments.RollbackSegment(pb.RollbackSegmentRequest(segment=str(segment), version=version),
                                             **self._kw())

    @_calls
    def attach(self, segment: str | int, kind: str, consumer_id: str, name: str = "") -> pb.Segment:
        return self.segments.AttachConsumer(pb.AttachConsumerRequest(
            segment=str(segment), kind=KINDS[kind], id=consumer_id, name=name), **self._kw())

    @_calls
    def detach(self, segment: str | int, kind: str, consumer_id: str) -> pb.Segment:
        return self.segments.DetachConsumer(pb.DetachConsumerRequest(
            segment=str(segment), kind=KINDS[kind], id=consumer_id), **self._kw())

    # -- membership ------------------------------------------------------------------------
    @_calls
    def is_member(self, segment: str | int, guid: str | None = None, identity: str | None = None) -> bool:
        kind, value = _identity(guid, identity)
        return self.membership.IsMember(pb.IsMemberRequest(segment=str(segment), type=kind, identity=value),
                                        **self._kw()).member

    @_calls
    def check_members(self, segment: str | int, identities: Iterable[str], type: str = "g") -> tuple[int, list[bool]]:
        """(version, [bool]) for a batch of guids (type "g") or identities (type "i"), any number of
        them. A call takes at most CHECK_COUNT identities and CHECK_BYTES of them, so a bigger batch
        goes as several calls; its answers still come from one version: if the segment was replaced
        between calls they are asked again (ABORTED, VERSION_CHANGED after CHECK_ATTEMPTS tries)."""
        identities = list(identities)
        lines = ("\n".join(identities) + "\n").encode() if identities else b""
        requests: list[dict[str, Any]]
        if lines.count(b"\n") == len(identities):      # no identity holds a newline: the bulk form
            requests = [{"identity_lines": part} for part in _line_batches(identities, lines)]
        else:
            requests = [{"identities": part} for part in _batches(identities)]
        for _ in range(CHECK_ATTEMPTS):
            version: int | None = None
            answers: list[bool] = []
            for fields in requests or [{}]:
                resp = self.membership.CheckMembers(pb.CheckMembersRequest(
                    segment=str(segment), type=_TYPES[type], **fields), **self._kw())
                if version is not None and resp.version != version:
                    break
                version = resp.version
                answers += map(bool, resp.member_flags) if "identity_lines" in fields else resp.members
            else:
                return version or 0, answers
        raise CallError(grpc.StatusCode.ABORTED, f"segment {segment} was replaced during each of "
                           f"{CHECK_ATTEMPTS} tries to check {len(identities)} identities", "VERSION_CHANGED")

    def list_members(self, segment: str | int, page_size: int = 100_000, shard_index: int = 0,
                     shard_count: int = 1) -> Iterator[pb.ListMembersResponse]:
        """Yield pages (ListMembersResponse) of one consistent version of the segment: at most
        page_size members each, fewer when the guids are long (a page stays under 4 MiB)."""
        return self._pages(self.membership.ListMembers, pb.ListMembersRequest(
            segment=str(segment), page_size=page_size, shard_index=shard_index, shard_count=shard_count))

    def member_changes(self, segment: str | int, from_version: int, to_version: int = 0, page_size: int = 100_000,
                       shard_index: int = 0, shard_count: int = 1) -> Iterator[pb.ListMemberChangesResponse]:
        """Yield pages (ListMemberChangesResponse) of the members that joined (added[i] 1) or left
        (0) the segment between from_version (0: before the first) and to_version (0: the head), as
        list_members pages them."""
        return self._pages(self.membership.ListMemberChanges, pb.ListMemberChangesRequest(
            segment=str(segment), from_version=from_version, to_version=to_version, page_size=page_size,
            shard_index=shard_index, shard_count=shard_count))

    def change_counts(self, segment: str | int, from_version: int, to_version: int = 0) -> tuple[int, int]:
        """(joined, left): how many members joined and left between two versions, listing none."""
        page = next(self.member_changes(segment, from_version, to_version, page_size=1))
        return page.added_total, page.removed_total

    @_calls
    def _pages(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Each page of a paged method, the request carrying the page token along."""
        while True:
            resp = method(request, **self._kw())
            yield resp
            if not resp.next_page_token:
                return
            request.page_token = resp.next_page_token

    # -- profiles --------------------------------------------------------------------------
    @_calls
    def import_profiles(self, source: str | bytes) -> pb.UpsertProfilesResponse:
        """Upsert profiles from a `guid,identity,channels` CSV (path or bytes)."""
        def messages() -> Iterator[pb.UpsertProfilesRequest]:
            f = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)
            with f:
                while chunk := f.read(CHUNK):
                    yield pb.UpsertProfilesRequest(data=chunk)
        return self.profiles.UpsertProfiles(messages(), **self._kw(self.upload_timeout))

    @_calls
    def delete_profiles(self, guids: list[str]) -> int:
        return self.profiles.DeleteProfiles(pb.DeleteProfilesRequest(guids=guids), **self._kw()).deleted

    @_calls
    def get_profile(self, guid: str | None = None, identity: str | None = None) -> pb.Profile:
        kind, value = _identity(guid, identity)
        return self.profiles.GetProfile(pb.GetProfileRequest(type=kind, identity=value), **self._kw())


def _line_batches(identities: list[str], lines: bytes) -> Iterator[bytes]:
    """lines (identities, each followed by a newline) cut into CheckMembers calls: whole lines, at
    most CHECK_COUNT and CHECK_BYTES each (an identity longer than that goes alone, to be refused)."""
    for i in range(0, len(identities), CHECK_COUNT):
        part = lines if len(identities) <= CHECK_COUNT else (
            "\n".join(identities[i:i + CHECK_COUNT]) + "\n").encode()
        at = 0
        while at < len(part):
            end = part.rfind(b"\n", at, at + CHECK_BYTES) + 1 or part.index(b"\n", at) + 1
            yield part[at:end]
            at = end


def _batches(identities: list[str]) -> Iterator[list[str]]:
    """Identities (the plain form) cut into CheckMembers calls of at most CHECK_COUNT identities and
    CHECK_BYTES of message: a string costs its UTF-8 bytes and up to 6 of framing."""
    batch: list[str] = []
    size = 0
    for identity in identities:
        cost = len(identity.encode()) + 6
        if batch and (len(batch) == CHECK_COUNT or size + cost > CHECK_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(identity)
        size += cost
    if batch:
        yield batch


_TYPES = {"g": pb.IDENTITY_TYPE_GUID, "i": pb.IDENTITY_TYPE_IDENTITY}


def _identity(guid: str | None, identity: str | None) -> tuple["pb.IdentityType", str]:
    if guid is not None and identity is None:
        return pb.IDENTITY_TYPE_GUID, guid
    if identity is not None and guid is None:
        return pb.IDENTITY_TYPE_IDENTITY, identity
    raise ValueError("give exactly one of guid, identity")

