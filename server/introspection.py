"""What a server answers besides listseg's own services: reflection (v1 and v1alpha), and an
UNIMPLEMENTED with an ErrorInfo for any method it does not serve.

grpcio-reflection serves only v1alpha; many clients speak only v1. The two versions' messages are
the same on the wire, so the one servicer answers both method names. `listseg.v1.reflection_v1_pb2`
(compiled from Debian's grpc-proto by `make`) puts v1's own descriptor in the pool, so that a v1
client can describe the service it is talking to.
"""
import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from listseg.server.errors import abort
from listseg.v1 import reflection_v1_pb2

REFLECTION_V1 = reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name


def enable_reflection(service_names, server):
    """Reflection v1alpha and v1 for `service_names` (plus the reflection services themselves)."""
    servicer = reflection.ReflectionServicer([*service_names, reflection.SERVICE_NAME, REFLECTION_V1])
    for name in (reflection.SERVICE_NAME, REFLECTION_V1):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


class UnknownMethods(grpc.GenericRpcHandler):
    """Last of a server's handlers: any method nobody serves is UNIMPLEMENTED with an ErrorInfo
    (grpcio's own answer carries none)."""

    def service(self, handler_call_details):
        method = handler_call_details.method

        def refuse(requests, context):
            abort(context, grpc.StatusCode.UNIMPLEMENTED, f"this server does not serve {method}",
                  "UNKNOWN_METHOD", {"method": method})
        return grpc.stream_stream_rpc_method_handler(refuse)     # answers any shape of call
