"""Engine errors -> gRPC status with a google.rpc.ErrorInfo; nothing else ever reaches a client."""
import functools
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from listseg.core import errors
from listseg.core.store import MapFullError

DOMAIN = "listseg.dev"
log = logging.getLogger("listseg.server")

CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InUse: grpc.StatusCode.FAILED_PRECONDITION,
    errors.VersionGone: grpc.StatusCode.ABORTED,
    errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyUploads: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.RequestTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def status_for(exc):
    """(code, message, reason, metadata) for any exception; internals are not described."""
    for cls, code in CODES.items():
        if isinstance(exc, cls):
            return code, str(exc), exc.reason, exc.metadata
    if isinstance(exc, grpc.RpcError):      # the call itself ended (cancelled, deadline): nobody to tell
        return grpc.StatusCode.CANCELLED, "the call ended", "CANCELLED", {}
    if isinstance(exc, MapFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "storage is full", "STORAGE_FULL", {}
    log.exception("internal error")
    return grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {}


def abort(context, code, message, reason, metadata=None):
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
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
