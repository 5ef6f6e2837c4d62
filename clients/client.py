"""The Python client: typed methods for every RPC, a deadline on every call, errors as exceptions.

    from listseg import Client
    with Client("127.0.0.1:50051") as c:
        up = c.upload("vip.csv", name="vip")
        c.is_member("vip", guid="a1e2...")

It imports only the generated stubs, never the engine.
"""
import functools
import inspect
import io
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK = 1 << 20                      # bytes per UploadList data message (the server takes up to 2 MiB)
# CheckMembers takes at most 100,000 identities and a request of at most 4 MiB (listseg.proto); the
# client leaves 64 KiB of the 4 MiB for the segment and the framing
CHECK_COUNT = 100_000
CHECK_BYTES = (4 << 20) - (64 << 10)
CHECK_ATTEMPTS = 3                   # tries to answer a split check from one version
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
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if tls_ca:
            with open(tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.timeout, self.upload_timeout = timeout, upload_timeout
        self.segments = pb_grpc.SegmentsStub(self.channel)
        self.membership = pb_grpc.MembershipStub(self.channel)
        self.profiles = pb_grpc.ProfilesStub(self.channel)

    def close(self) -> None:
        self.channel.close()

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
               notify_emails: Iterable[str] = ()) -> pb.Upload:
        """Stream a CSV (path, bytes or binary file) as a create (name=) or a replace / append /
        remove of a segment. Returns the Upload when processing has ended. `progress(n_bytes)` is
        called as bytes go out; `notify_emails` each get an email when processing ends."""
        given = {k: v for k, v in (("name", name), ("replace", replace), ("append", append),
                                   ("remove", remove)) if v is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of name, replace, append, remove")
        (mode, target), = given.items()
        file_name = source if isinstance(source, str) else getattr(source, "name", "")
        spec = pb.UploadSpec(mode=MODES[mode], dry_run=dry_run, strict=strict, webhook_url=webhook_url,
                             file_name=os.path.basename(str(file_name)), notify_emails=list(notify_emails),
                             **({"name": target} if mode == "name" else {"segment": str(target)}))

        def messages() -> Iterator[pb.UploadListRequest]:
            yield pb.UploadListRequest(spec=spec)
            f = open(source, "rb") if isinstance(source, str) else (
                io.BytesIO(source) if isinstance(source, bytes) else source)
            sent = 0
            try:
                while chunk := f.read(CHUNK):
                    yield pb.UploadListRequest(data=chunk)
                    sent += len(chunk)
                    if progress:
                        progress(len(chunk))
            finally:
                if isinstance(source, str):
                    f.close()
            yield pb.UploadListRequest(finish=pb.UploadFinish(total_bytes=sent))
        return self.segments.UploadList(messages(), **self._kw(self.upload_timeout))

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

