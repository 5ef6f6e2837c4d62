"""Requests that do not parse are INVALID_ARGUMENT with an ErrorInfo, like every other bad request,
and requests over MAX_REQUEST bytes are RESOURCE_EXHAUSTED with one (REQUEST_TOO_LARGE, its limit).

grpcio answers a deserializer that raises with its own INTERNAL ("Exception deserializing request!"),
which blames the server for the caller's bytes. Here each method's deserializer returns an
`Undecodable` marker instead, and the method refuses it: at once for a unary request, at that
message for a stream (so an upload fails there and changes nothing). The size limit is checked
here too, not by grpc: grpc's own refusal of a big message carries no ErrorInfo, so the server lets
grpc take up to MAX_TRANSPORT_MESSAGE and refuses past MAX_REQUEST itself.
"""
import grpc

from listseg.core.errors import InvalidArgument, RequestTooLarge
from listseg.server.errors import abort, status_for

MAX_REQUEST = 4 << 20               # bytes of one request message (a 2 MiB upload data message and more)
MAX_TRANSPORT_MESSAGE = 16 << 20    # what grpc itself receives (server/app.py, and the front relays as much)


class Undecodable:
    def __init__(self, error):
        self.error = error


def add_servicer(add_to_server, servicer, server):
    """pb_grpc.add_XServicer_to_server(servicer, server), with every method's requests checked."""
    add_to_server(servicer, _Registrar(server))


class _Registrar:
    """What the generated add_XServicer_to_server calls on a server, handing on checked handlers."""

    def __init__(self, server):
        self.server = server

    def add_generic_rpc_handlers(self, handlers):
        pass                            # made again from the same method handlers just below

    def add_registered_method_handlers(self, service, method_handlers):
        checked = {name: _checked(handler) for name, handler in method_handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, checked),))
        self.server.add_registered_method_handlers(service, checked)


def _checked(handler):
    parse = handler.request_deserializer
    name = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = name.full_name if name is not None else "request"

    def tolerant(raw):
        if len(raw) > MAX_REQUEST:
            return Undecodable(RequestTooLarge(f"a request message is at most {MAX_REQUEST} bytes; this one is "
                                               f"{len(raw)}", limit=MAX_REQUEST))
        try:
            return parse(raw)
        except Exception:                   # noqa: BLE001 - any parse failure is the caller's
            return Undecodable(InvalidArgument(f"the request is not a valid {name} message", field="request"))

    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    behavior = getattr(handler, kind)
    if handler.request_streaming:
        def run(requests, context):
            return behavior(_refusing(requests), context)
    else:
        def run(request, context):
            if isinstance(request, Undecodable):
                abort(context, *status_for(request.error))
            return behavior(request, context)
    if hasattr(behavior, "experimental_thread_pool"):      # server/app.py on_pool
        run.experimental_thread_pool = behavior.experimental_thread_pool
    return handler._replace(request_deserializer=tolerant, **{kind: run})


def _refusing(requests):
    for request in requests:
        if isinstance(request, Undecodable):
            raise request.error
        yield request
