"""Requests that do not parse are INVALID_ARGUMENT with an ErrorInfo, like every other bad request.

grpcio answers a deserializer that raises with its own INTERNAL ("Exception deserializing request!"),
which blames the server for the caller's bytes. Here each method's deserializer returns an
`Undecodable` marker instead, and the method refuses it: at once for a unary request, at that
message for a stream (so an upload fails there and changes nothing).
"""
import grpc

from listseg.core.errors import InvalidArgument
from listseg.server.errors import abort, status_for


class Undecodable:
    def __init__(self, message_name):
        self.error = InvalidArgument(f"the request is not a valid {message_name} message", field="request")


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
        try:
            return parse(raw)
        except Exception:                   # noqa: BLE001 - any parse failure is the caller's
            return Undecodable(name)

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
