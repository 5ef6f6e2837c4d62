"""Thin gRPC servicers over the engine: check the request, call the core, convert the answer.

Every method is wrapped by `errors.rpc`, which authenticates the caller (passing the Account) and
turns any exception into a status with an ErrorInfo.
"""
import contextlib
import logging
import threading
import time

import grpc
from google.protobuf import empty_pb2

from listseg.core.errors import InvalidArgument, NotFound, TooLarge, TooManyWatches
from listseg.core.ingest import REJECTS_KEPT, Superseded
from listseg.server import convert, mail, metrics, uploads, webhook
from listseg.server.errors import rpc
from listseg.server.uploads import NO_FINISH
from listseg.v1 import UPLOAD_ID_HEADER
from listseg.v1 import listseg_pb2 as pb
from listseg.v1 import listseg_pb2_grpc as pb_grpc

log = logging.getLogger("listseg.server")

MAX_DATA_MESSAGE = 2 << 20        # bytes of CSV in one UploadList message
MAX_CHECK = 100_000               # identities in one CheckMembers call (and 4 MiB a request: decoding.MAX_REQUEST)
# the payload of one response message (a ListMembers page's guids and uids, an ExportMembers chunk):
# stock clients (grpc-js, grpcurl, grpclib) receive at most 4 MiB a message, and 100,000 members of
# long guids are more; 256 KiB is left for the rest of the message
MAX_RESPONSE_BYTES = (4 << 20) - (256 << 10)
WATCH_INTERVAL_S = 0.5
# WatchSegment streams a server process keeps open at once: each holds a thread of its pool (32), so
# watchers can never take every thread from uploads and queries.
MAX_SEGMENT_WATCHES = 8


class Services:
    """State shared by the servicers: the engine, the credentials check, the uploads held."""

    def __init__(self, engine, credentials, webhooks=None, max_uploads=4, max_upload_bytes=None, mailer=None,
                 with_metrics=False, resume_window=uploads.RESUME_WINDOW_S):
        self.engine = engine
        self.with_metrics = with_metrics      # count the uploads that end (server/metrics.py)
        self.credentials = credentials
        self.webhooks = webhooks or webhook.Notifier()
        self.mailer = mailer or mail.Mailer()     # no SMTP server: emails are logged as not sent
        self.max_upload_bytes = max_upload_bytes
        self.uploads = uploads.Uploads(max_uploads, resume_window, self._upload_ended)
        self.watches = threading.BoundedSemaphore(MAX_SEGMENT_WATCHES)

    def _upload_ended(self, held, record):
        seconds = {f"{phase}_s": round(t, 3) for phase, t in held.up.timings.items()}
        log.info("upload ended", extra={"fields": {"account": held.up.account.name, "upload": record["id"],
                                                   "state": record["state"], "reason": record["reason"], **seconds}})
        if self.with_metrics:
            metrics.upload_ended(held.mode, record)
        if held.webhook_url:
            self.webhooks.notify(held.webhook_url, convert.upload(record))    # what the call returns, as JSON
        if held.recipients:
            self.mailer.notify(list(held.recipients), record)

    def auth(self, context):
        if not self.credentials.required():
            return self.engine.account()
        md = dict(context.invocation_metadata())
        return self.credentials.authenticate(md.get("x-account-id"), md.get("x-passcode"))


def last_upload(account, seg, with_errors=True):
    """The segment's last upload record, if any; without its report's rejected rows for a list (a
    page of segments each with up to 100 of them would be mostly errors)."""
    if not seg["last_upload"]:
        return None
    rec = account.get_upload(seg["last_upload"])
    if not with_errors and rec.get("report"):
        rec = dict(rec, report=dict(rec["report"], errors=[]))
    return rec


class SegmentsServicer(pb_grpc.SegmentsServicer):
    def __init__(self, services):
        self.s = services
        self.auth = services.auth

    @rpc
    def UploadList(self, account, requests, context):
        first = next(requests, None)
        kind = first.WhichOneof("payload") if first is not None else None
        if kind == "spec":
            held, stream = self._start(account, first.spec), 0
        elif kind == "resume":
            held, stream = self.s.uploads.resume(account, first.resume.upload_id, first.resume.offset)
            if self.s.with_metrics:
                metrics.upload_resumed()
        else:
            raise InvalidArgument("the first message of UploadList must be the spec or a resume", field="spec")
        up = held.up
        context.send_initial_metadata(((UPLOAD_ID_HEADER, str(up.id)),))     # the id a resume names
        # When the call ends early (cancel, deadline, disconnect) grpc does not always wake a handler
        # blocked waiting for the next message (seen here about 1 run in 6): pause the upload from the
        # termination callback too. A no-op once the upload has ended or paused.
        if not context.add_callback(lambda: self.s.uploads.pause(held, stream)):
            self.s.uploads.pause(held, stream)
        try:
            result = self._receive(held, stream, requests)
        except BaseException:
            if up.state == "failed":        # bad input, or the store: ended (its record may be written later)
                with contextlib.suppress(Exception):
                    self.s.uploads.ended(held, dict(account.get_upload(up.id), state="failed"))
            raise
        self.s.uploads.ended(held, result)
        return convert.upload(result)

    def _start(self, account, spec):
        """A new upload from its spec, held by this process."""
        if spec.mode not in convert.MODES:
            raise InvalidArgument("spec.mode must be CREATE, REPLACE, APPEND or REMOVE", field="spec.mode")
        mode = convert.MODES[spec.mode]
        if spec.webhook_url:
            webhook.check_url(spec.webhook_url)
        recipients = mail.check_addresses(spec.notify_emails)
        create = mode == "create"
        if create:
            self.s.uploads.free_name(account, spec.name.strip())
        with self.s.uploads.slot(account):
            up = account.upload(mode, name=spec.name if create else None,
                                segment=None if create else convert.segment_ref(spec.segment),
                                dry_run=spec.dry_run, strict=spec.strict, file_name=spec.file_name,
                                max_bytes=self.s.max_upload_bytes)
            return self.s.uploads.add(account, up, mode, spec.webhook_url, recipients)

    def _receive(self, held, stream, requests):
        """Feed the stream to the upload; only a finish message with the right byte count commits it.
        A stream that breaks or stops short leaves the upload for a resume (server/uploads.py)."""
        up = held.up
        try:
            finished = self._feed(up, stream, requests)
        except grpc.RpcError:               # what grpc raises from the request stream when the call ends
            self.s.uploads.pause(held, stream)
            raise
        except Superseded:                  # a resume has taken the upload over: this call is history
            raise
        except BaseException as exc:
            self.s.uploads.fail(held, _abort_reason(exc))
            raise
        if not finished:                    # a broken call can look like a clean end to the server
            self.s.uploads.pause(held, stream, NO_FINISH)
            raise InvalidArgument(f"{NO_FINISH}; {_resume_hint(self.s.uploads, up)}", field="finish",
                                  upload=up.id, committed_bytes=up.bytes)
        return up.finish(stream)

    @staticmethod
    def _feed(up, stream, requests):
        """Feed data messages to the upload until the finish message (True) or the stream's end (False)."""
        for msg in requests:
            kind = msg.WhichOneof("payload")
            if kind == "finish":
                if msg.finish.total_bytes != up.bytes:
                    raise InvalidArgument(f"the finish message counts {msg.finish.total_bytes} bytes, "
                                          f"{up.bytes} arrived", field="finish.total_bytes")
                return True
            if kind in ("spec", "resume"):
                raise InvalidArgument("UploadList takes one spec or resume, first", field=kind)
            if len(msg.data) > MAX_DATA_MESSAGE:
                raise TooLarge(f"a data message is at most {MAX_DATA_MESSAGE} bytes", limit=MAX_DATA_MESSAGE)
            if msg.data:
                up.feed(msg.data, stream)
        return False

    @rpc
    def GetUpload(self, account, request, context):
        record = account.get_upload(request.id)
        held = self.s.uploads.get(account.number, request.id)
        if held is not None and record["state"] == "receiving":    # the record notes it only at a pause
            record = dict(record, committed_bytes=held.up.bytes)
        return convert.upload(record)

    @rpc
    def WatchUpload(self, account, request, context):
        while context.is_active():
            held = self.s.uploads.get(account.number, request.id)
            if held is not None:
                up = held.up
                progress = up.progress()
                yield pb.UploadProgress(state=convert.UPLOAD_STATES[up.state], bytes=progress["bytes"],
                                        rows=progress["rows"])
            else:
                rec = account.get_upload(request.id)
                if rec["state"] in ("succeeded", "failed"):
                    report = rec.get("report") or {}
                    yield pb.UploadProgress(state=convert.UPLOAD_STATES[rec["state"]],
                                            bytes=report.get("bytes", 0), rows=report.get("rows", 0),
                                            upload=convert.upload(rec))
                    return
                yield pb.UploadProgress(state=convert.UPLOAD_STATES[rec["state"]])
            time.sleep(WATCH_INTERVAL_S)

    @rpc
    def WatchSegment(self, account, request, context):
        if not self.s.watches.acquire(blocking=False):   # each stream holds one of the server's threads
            raise TooManyWatches(f"{MAX_SEGMENT_WATCHES} WatchSegment streams are open on this server process; "
                                 "close one or ask another process", limit=MAX_SEGMENT_WATCHES)
        try:
            for change in account.segments.watch(convert.segment_ref(request.segment), request.after_version or None,
                                                 context.is_active):
                yield pb.SegmentChange(version=change.version, from_version=change.from_version, added=change.added,
                                       removed=change.removed, size=change.size)
        finally:
            self.s.watches.release()

    @rpc
    def ListUploadErrors(self, account, request, context):
        token = convert.UPLOAD_ERRORS_PAGE
        state = token.read(request.page_token, upload=request.id, position=range(1, REJECTS_KEPT + 1))
        rows, nxt = account.upload_errors(request.id, state["position"] if state else 0,
                                          convert.page_size(request.page_size, 1000, 10_000))
        return pb.ListUploadErrorsResponse(
            errors=[pb.RowError(line=line, reason=reason) for line, reason in rows],
            next_page_token=token.write(upload=request.id, position=nxt) if nxt is not None else "")

    @rpc
    def GetSegment(self, account, request, context):
        if not 0 <= request.sample_size <= 100:
            raise InvalidArgument("sample_size is 0 to 100", field="sample_size")
        seg = account.segments.get(convert.segment_ref(request.segment), sample=request.sample_size)
        return convert.segment(seg, last_upload(account, seg))

    @rpc
    def ListSegments(self, account, request, context):
        size = convert.page_size(request.page_size, 100, 1000)
        state = convert.SEGMENTS_PAGE.read(request.page_token, position=range(1, 1 << 32))
        start = state["position"] if state else 0
        segs = account.segments.list()
        page = segs[start:start + size]
        more = start + size < len(segs)
        return pb.ListSegmentsResponse(
            segments=[convert.segment(s, last_upload(account, s, with_errors=False)) for s in page],
            next_page_token=convert.SEGMENTS_PAGE.write(position=start + size) if more else "")

    @rpc
    def DeleteSegment(self, account, request, context):
        account.segments.delete(convert.segment_ref(request.segment))
        return empty_pb2.Empty()

    @rpc
    def ListSegmentVersions(self, account, request, context):
        versions = account.segments.versions(convert.segment_ref(request.segment))
        return pb.ListSegmentVersionsResponse(versions=[convert.segment_version(v) for v in versions])

    @rpc
    def RollbackSegment(self, account, request, context):
        ref = convert.segment_ref(request.segment)
        account.segments.rollback(ref, request.version)
        seg = account.segments.get(ref)
        return convert.segment(seg, last_upload(account, seg))

    @rpc
    def SampleMembers(self, account, request, context):
        if not 0 <= request.count <= 100:
            raise InvalidArgument("count is 0 to 100", field="count")
        sample = account.segments.sample(convert.segment_ref(request.segment), request.count or 10)
        return pb.SampleMembersResponse(profiles=[convert.profile(p.to_dict()) for p in sample])

    @rpc
    def ExportMembers(self, account, request, context):
        for chunk in account.segments.export(convert.segment_ref(request.segment), max_bytes=MAX_RESPONSE_BYTES):
            yield pb.ExportMembersResponse(data=chunk)

    @rpc
    def AttachConsumer(self, account, request, context):
        ref = convert.segment_ref(request.segment)
        account.segments.attach(ref, convert.consumer_kind(request.kind), request.id, request.name)
        return convert.segment(account.segments.get(ref))

    @rpc
    def DetachConsumer(self, account, request, context):
        ref = convert.segment_ref(request.segment)
        account.segments.detach(ref, convert.consumer_kind(request.kind), request.id)
        return convert.segment(account.segments.get(ref))


class MembershipServicer(pb_grpc.MembershipServicer):
    def __init__(self, services):
        self.auth = services.auth

    @rpc
    def IsMember(self, account, request, context):
        kind = convert.identity_type(request.type)
        version, answers = account.segments.check_members(convert.segment_ref(request.segment),
                                                          [request.identity], kind)
        return pb.IsMemberResponse(member=answers[0], version=version)

    @rpc
    def CheckMembers(self, account, request, context):
        kind = convert.identity_type(request.type)
        ref = convert.segment_ref(request.segment)
        lines = request.identity_lines
        if lines:                       # the bulk form: answers as member_flags
            if request.identities:
                raise InvalidArgument("send identities or identity_lines, not both", field="identity_lines")
            if not lines.endswith(b"\n"):
                raise InvalidArgument("every identity in identity_lines ends with a newline", field="identity_lines")
            if lines.count(b"\n") > MAX_CHECK:
                raise InvalidArgument(f"at most {MAX_CHECK} identities a call", field="identity_lines",
                                      limit=MAX_CHECK)
            version, flags = account.segments.check_lines(ref, lines, kind)
            return pb.CheckMembersResponse(member_flags=flags, version=version)
        if len(request.identities) > MAX_CHECK:
            raise InvalidArgument(f"at most {MAX_CHECK} identities a call", field="identities", limit=MAX_CHECK)
        version, answers = account.segments.check_members(ref, request.identities, kind)
        return pb.CheckMembersResponse(members=answers, version=version)

    @rpc
    def ListMembers(self, account, request, context):
        seg_id, count, shards = member_listing(account, request)
        token = convert.MEMBERS_PAGE
        # the core checks the rest against the segment: a version it has had, a position inside the shard
        state = token.read(request.page_token, segment=seg_id, version=range(1, 1 << 32),
                           position=range(1, 1 << 32), shard_index=request.shard_index, shard_count=shards)
        version, guids, found, nxt = account.segments.member_page(
            seg_id, state["position"] if state else 0, count, state["version"] if state else None,
            request.shard_index, shards, max_bytes=MAX_RESPONSE_BYTES)
        return pb.ListMembersResponse(
            guids=guids, uids=found, count=len(found) // 4, version=version,
            next_page_token=token.write(segment=seg_id, version=version, position=nxt,
                                        shard_index=request.shard_index, shard_count=shards)
            if nxt is not None else "")

    @rpc
    def ListMemberChanges(self, account, request, context):
        seg_id, count, shards = member_listing(account, request)
        token = convert.CHANGES_PAGE
        state = token.read(request.page_token, segment=seg_id, from_version=range(0, 1 << 32),
                           to_version=range(1, 1 << 32), position=range(1, 1 << 32),
                           shard_index=request.shard_index, shard_count=shards)
        if state and (state["from_version"], state["to_version"]) != (
                request.from_version, request.to_version or state["to_version"]):
            raise InvalidArgument("page_token does not belong to this request (versions)", field="page_token")
        page = account.segments.change_page(
            seg_id, request.from_version, state["to_version"] if state else (request.to_version or None),
            state["position"] if state else 0, count, request.shard_index, shards, max_bytes=MAX_RESPONSE_BYTES,
            pinned=bool(state))
        return pb.ListMemberChangesResponse(
            guids=page.guids, uids=page.found, added=page.added, count=len(page.found) // 4,
            from_version=page.from_version, to_version=page.to_version, added_total=page.added_total,
            removed_total=page.removed_total,
            next_page_token=token.write(segment=seg_id, from_version=page.from_version, to_version=page.to_version,
                                        position=page.next_start, shard_index=request.shard_index,
                                        shard_count=shards)
            if page.next_start is not None else "")


def member_listing(account, request):
    """(segment id, page size, shard count) of a paged member listing (ListMembers, ListMemberChanges):
    a shard count of 0 means 1, and the shard index must be below it."""
    count = convert.page_size(request.page_size, 100_000, 1_000_000)
    shards = request.shard_count or 1
    if request.shard_index >= shards:
        raise InvalidArgument("shard_index must be below shard_count", field="shard_index")
    return account.segments.id_of(convert.segment_ref(request.segment)), count, shards


class ProfilesServicer(pb_grpc.ProfilesServicer):
    def __init__(self, services):
        self.auth = services.auth

    @rpc
    def UpsertProfiles(self, account, requests, context):
        report = account.profiles.import_csv(msg.data for msg in requests)
        seconds = {f"{phase}_s": round(t, 3) for phase, t in report["timings"].items()}
        log.info("profiles imported", extra={"fields": {"account": account.name, "rows": report["rows"],
                                                        "upserted": report["upserted"], **seconds}})
        account.profiles.index.warm()           # so that the next upload and checks find it ready
        return pb.UpsertProfilesResponse(
            rows=report["rows"], upserted=report["upserted"], invalid=report["invalid"],
            errors=[pb.RowError(line=line, reason=reason) for line, reason in report["errors"]])

    @rpc
    def DeleteProfiles(self, account, request, context):
        return pb.DeleteProfilesResponse(deleted=account.profiles.delete(list(request.guids)))

    @rpc
    def GetProfile(self, account, request, context):
        kind = convert.identity_type(request.type)
        found = account.profiles.find(**{"guid" if kind == "g" else "identity": request.identity})
        if found is None:
            raise NotFound("no such profile")
        return convert.profile(found.to_dict())


def _abort_reason(exc):
    if isinstance(exc, TooLarge):
        return f"file too large: {exc}"
    if isinstance(exc, InvalidArgument):
        return str(exc)
    return "the upload stream broke"


def _resume_hint(held_uploads, up):
    if held_uploads.resume_window <= 0:
        return "the upload failed"
    return (f"upload {up.id} waits {held_uploads.resume_window:g} s for a stream that resumes it at offset "
            f"{up.bytes}")
