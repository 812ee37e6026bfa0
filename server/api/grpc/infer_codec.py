"""Gives ModelInfer kvserve's zero-copy (de)serializers (``kvserve.proto.wire``) in place of protobuf's.

An interceptor because the generated registration fixes the serializers and registered methods are found
before any generic handler; replacing them on the handler found is the one hook gRPC offers.
"""

from __future__ import annotations

from typing import Any, Callable

import grpc

from kvserve.proto.wire import parse_infer_request, serialize_infer_response

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class InferCodecInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != MODEL_INFER:
            return handler
        return handler._replace(request_deserializer=parse_infer_request, response_serializer=serialize_infer_response)
