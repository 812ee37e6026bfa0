"""ModelInfer on the wire without copying tensor bytes in Python: kvd's (de)serializers for that one RPC.

Python protobuf copies a bytes field when it parses a message and again on every access (each access makes a
new ``bytes``); on the way out an array becomes ``bytes``, is copied into the message, and copied again when the
message is serialized. Here the request's ``raw_input_contents`` are found in the received buffer and handed
on as memoryviews (protobuf parses the rest, a few hundred bytes), and the response's raw outputs are joined
into the serialized message straight from the arrays. What remains is one copy each way, inside OpenVINO
(into its input tensor, since the received buffer is read-only) and inside the final join. Field numbers are
the KServe v2 protocol's; anything else in the message is left to protobuf.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto.tensors import TensorError

RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # ModelInferResponse.raw_output_contents, length-delimited
LENGTH_DELIMITED = 2
INFER_RESPONSE_TAG = bytes([2 << 3 | 2])  # ModelStreamInferResponse.infer_response, length-delimited


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("the message ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint is longer than 10 bytes")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    """The position after a field's value of ``wire_type`` starting at ``pos``."""
    if wire_type == 0:
        return _read_varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == LENGTH_DELIMITED:
        length, pos = _read_varint(data, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported protobuf wire type {wire_type}")


class InferRequestView:
    """A parsed ModelInferRequest whose ``raw_input_contents`` are memoryviews into the received bytes."""

    __slots__ = ("_message", "raw_input_contents")

    def __init__(self, message: pb.ModelInferRequest, raw: list[memoryview]) -> None:
        self._message = message
        self.raw_input_contents = raw

    # The fields every call reads, as properties: each ``__getattr__`` fallback costs a failed lookup first.
    model_name = property(lambda self: self._message.model_name)
    model_version = property(lambda self: self._message.model_version)
    id = property(lambda self: self._message.id)
    inputs = property(lambda self: self._message.inputs)
    outputs = property(lambda self: self._message.outputs)
    parameters = property(lambda self: self._message.parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


class MalformedInferRequest:
    """Stands in for bytes that are not a ModelInferRequest: any use raises TensorError (INVALID_ARGUMENT),
    where protobuf's own parser would have failed the call with a bare INTERNAL."""

    __slots__ = ("_reason",)

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def __getattr__(self, name: str) -> Any:
        raise TensorError(f"the request is not a valid ModelInferRequest ({self._reason}); send a protobuf-encoded inference.ModelInferRequest")


def parse_infer_request(data: bytes) -> InferRequestView | MalformedInferRequest:
    """The request in ``data`` with its raw input contents left in place (zero-copy)."""
    view = memoryview(data)
    raw: list[memoryview] = []
    kept: list[memoryview] = []  # everything but the raw contents, for protobuf
    pos = kept_from = 0
    try:
        while pos < len(data):
            field_start = pos
            key, pos = _read_varint(data, pos)
            if key >> 3 == RAW_INPUT_FIELD and key & 7 == LENGTH_DELIMITED:
                length, pos = _read_varint(data, pos)
                if pos + length > len(data):
                    raise ValueError("raw_input_contents run past the end of the message")
                kept.append(view[kept_from:field_start])
                raw.append(view[pos : pos + length])
                pos = kept_from = pos + length
            else:
                pos = _skip(data, pos, key & 7)
        if pos > len(data):
            raise ValueError("a field runs past the end of the message")
        kept.append(view[kept_from:])
        message = pb.ModelInferRequest.FromString(b"".join(kept) if raw else data)
    except (ValueError, DecodeError) as error:
        return MalformedInferRequest(str(error) or type(error).__name__)
    return InferRequestView(message, raw)


class InferResponseView:
    """A ModelInferResponse whose ``raw_output_contents`` hold the output arrays themselves (any buffer)."""

    __slots__ = ("_message", "raw_output_contents")

    def __init__(self, message: pb.ModelInferResponse) -> None:
        self._message = message
        self.raw_output_contents: list[Any] = []

    model_version = property(lambda self: self._message.model_version)
    outputs = property(lambda self: self._message.outputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def parts(self) -> tuple[list[Any], int]:
        """The serialized message as buffers to join, and their total length (joined once, by the caller)."""
        head = self._message.SerializeToString()
        parts: list[Any] = [head]
        total = len(head)
        for buffer in self.raw_output_contents:
            size = memoryview(buffer).nbytes
            length = _varint(size)
            parts += [RAW_OUTPUT_TAG, length, buffer]
            total += len(RAW_OUTPUT_TAG) + len(length) + size
        return parts, total

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf name, so either kind serializes alike
        return b"".join(self.parts()[0])


def serialize(response: Any) -> bytes:
    """The bytes of anything kvd answers ModelInfer or ModelStreamInfer with: a protobuf message, or one of this
    module's stand-ins (``InferResponseView``, ``StreamResponse``, ``Serialized``), which serialize alike."""
    return response.SerializeToString()


class StreamResponse:
    """One message of ModelStreamInfer's response stream: a response (a view or a message), or an error."""

    __slots__ = ("response", "error_message")

    def __init__(self, response: InferResponseView | pb.ModelInferResponse | None = None, error_message: str = "") -> None:
        self.response = response
        self.error_message = error_message

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf name
        """``ModelStreamInferResponse``: error_message (field 1) or infer_response (field 2), the outputs joined
        once straight into the outer message."""
        if self.response is None:
            return pb.ModelStreamInferResponse(error_message=self.error_message).SerializeToString()
        if isinstance(self.response, InferResponseView):
            parts, total = self.response.parts()
        else:
            parts = [self.response.SerializeToString()]
            total = len(parts[0])
        head = pb.ModelStreamInferResponse(error_message=self.error_message).SerializeToString() if self.error_message else b""
        return b"".join([head, INFER_RESPONSE_TAG, _varint(total), *parts])


def serialize_in_stream(response: InferResponseView) -> bytes:
    """``response`` as a message of ModelStreamInfer's response stream."""
    return StreamResponse(response).SerializeToString()


class Serialized:
    """A response serialized ahead of gRPC (while the outputs it copied were still valid): its serializer hands the
    bytes on as they are; ``model_version`` is what the call interceptor records as served."""

    __slots__ = ("data", "model_version")

    def __init__(self, data: bytes, model_version: str) -> None:
        self.data = data
        self.model_version = model_version

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf name, so every kind serializes alike
        return self.data
