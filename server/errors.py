"""Engine errors -> gRPC status with a google.rpc.ErrorInfo; nothing else ever reaches a client.

Each core/errors.py class maps to a status code here; its reason goes out as it is (core/errors.py
REASONS lists every reason). Messages and metadata are cut to a few hundred bytes: they may echo what
the caller sent (a 10 KB segment name), and gRPC clients drop a response whose headers pass 8-16 KiB,
ErrorInfo and all (they saw RESOURCE_EXHAUSTED "received metadata size exceeds hard limit")."""
import functools
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from listseg.core import errors

DOMAIN = "listseg.dev"
MAX_MESSAGE = 1024          # bytes of a status message (UTF-8, percent-encoded on the wire: up to 3 KiB)
MAX_METADATA_VALUE = 256    # bytes of each ErrorInfo metadata value
log = logging.getLogger("listseg.server")

# The first class an error is an instance of decides (subclasses before their bases).
CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,       # and InvalidProfile, BadHeader
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InUse: grpc.StatusCode.FAILED_PRECONDITION,
    errors.VersionGone: grpc.StatusCode.ABORTED,
    errors.HeadMoved: grpc.StatusCode.ABORTED,
    errors.WrongOffset: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotResumable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UploadElsewhere: grpc.StatusCode.UNAVAILABLE,
    errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyUploads: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyWatches: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.RequestTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.MapFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc):
    """(code, message, reason, metadata) for any exception; internals are not described."""
    for cls, code in CODES.items():
        if isinstance(exc, cls):
            message = "storage is full" if isinstance(exc, errors.MapFullError) else str(exc)
            return code, message, exc.reason, exc.metadata
    if isinstance(exc, grpc.RpcError):      # the call itself ended (cancelled, deadline): nobody to tell
        return grpc.StatusCode.CANCELLED, "the call ended", "CANCELLED", {}
    log.exception("internal error")         # a bug, or LMDB failing (StoreError: STORAGE_ERROR)
    reason = exc.reason if isinstance(exc, errors.ListsegError) else errors.ListsegError.reason
    return grpc.StatusCode.INTERNAL, "internal error", reason, {}


def clip(text, limit):
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= limit else raw[:limit - 3].decode("utf-8", "ignore") + "..."


def abort(context, code, message, reason, metadata=None):
    message = clip(message, MAX_MESSAGE)
    metadata = {k: clip(v, MAX_METADATA_VALUE) for k, v in (metadata or {}).items()}
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    context.abort_with_status(rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[info])))


def rpc(method):
    """Wrap a servicer method `(self, account, request, context)`: authenticate, call, and turn any
    exception into a status. Works for unary and server-streaming methods."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self, request, context):
            failure = None
            try:
                yield from method(self, self.auth(context), request, context)
            except Exception as exc:        # noqa: BLE001 - every error becomes a status
                failure = status_for(exc)
            if failure:
                abort(context, *failure)
        return stream

    @functools.wraps(method)
    def unary(self, request, context):
        failure = None
        try:
            return method(self, self.auth(context), request, context)
        except Exception as exc:            # noqa: BLE001
            failure = status_for(exc)
        abort(context, *failure)
    return unary
