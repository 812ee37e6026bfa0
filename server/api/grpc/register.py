"""Register a servicer on a server from its service descriptor, with chosen (de)serializers per method.

The generated ``add_..._to_server`` fixes protobuf's serializers for every method; building the handlers here
(gRPC's public constructors) lets ModelInfer use kvserve's zero-copy codec without rewriting a handler later.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Mapping

import grpc
from google.protobuf.descriptor import ServiceDescriptor

Codec = tuple[Callable[[bytes], Any], Callable[[Any], bytes]]


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, messages: ModuleType, servicer: Any,
                codecs: Mapping[str, Codec] | None = None) -> None:
    """Every method of ``service`` served by ``servicer``'s method of the same name; message classes come
    from ``messages`` (the generated _pb2 module); ``codecs`` overrides (deserializer, serializer) per method."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = getattr(messages, method.input_type.name)
        response_type = getattr(messages, method.output_type.name)
        deserialize, serialize = (codecs or {}).get(method.name, (request_type.FromString, response_type.SerializeToString))
        kind = (("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary"))
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=deserialize, response_serializer=serialize)
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)
