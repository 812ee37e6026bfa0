"""Undecodable request bytes are the client's error on every RPC: INVALID_ARGUMENT, not gRPC's INTERNAL
"Exception deserializing request!".

The call interceptor (calls.py) swaps each method's deserializer for one that returns an ``Undecodable`` marker
instead of raising, and wraps the behaviour to refuse the marker before the servicer sees it. Works for sync and ``async def``
behaviours and for request streams. ModelInfer's own codec (``kvserve.proto.wire``) is left alone.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


from kvserve.server.errors import InvalidArgument


class Undecodable:
    """What arrived instead of a request message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001 - any parse failure is the sender's (DecodeError, RuntimeWarning, ...)
            return Undecodable(type(error).__name__)

    return parse


def _refuse(method: str, marker: Undecodable) -> InvalidArgument:
    return InvalidArgument(f"the {method.rsplit('/', 1)[-1]} request is not a valid protobuf message ({marker.reason}); "
                           "send one built from kvserve's .proto files")


def _checked_iterator(method: str, requests: Any) -> Any:
    if hasattr(requests, "__aiter__"):
        async def agen() -> Any:
            async for item in requests:
                if isinstance(item, Undecodable):
                    raise _refuse(method, item)
                yield item
        return agen()

    def gen() -> Any:
        for item in requests:
            if isinstance(item, Undecodable):
                raise _refuse(method, item)
            yield item
    return gen()


def _wrap(behaviour: Callable[..., Any], method: str, streaming_in: bool, streaming_out: bool) -> Callable[..., Any]:
    def check(request: Any) -> Any:
        if streaming_in:
            return _checked_iterator(method, request)
        if isinstance(request, Undecodable):
            raise _refuse(method, request)
        return request

    if inspect.isasyncgenfunction(behaviour):
        async def agen_run(request: Any, context: Any) -> Any:
            async for item in behaviour(check(request), context):
                yield item
        return agen_run
    if inspect.iscoroutinefunction(behaviour):
        async def coro_run(request: Any, context: Any) -> Any:
            return await behaviour(check(request), context)
        return coro_run
    if streaming_out:
        def gen_run(request: Any, context: Any) -> Any:
            yield from behaviour(check(request), context)
        return gen_run

    def run(request: Any, context: Any) -> Any:
        return behaviour(check(request), context)
    return run


# ModelInfer and ModelStreamInfer have their own codec (kvserve.proto.wire), which reports malformed bytes itself.
OWN_CODEC = frozenset({"/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer"})


def lenient_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` returning an ``Undecodable`` marker instead of raising."""
    return _safe(deserializer)


def lenient_behaviour(behaviour: Callable[..., Any], method: str, streaming_in: bool, streaming_out: bool) -> Callable[..., Any]:
    """``behaviour`` refusing an ``Undecodable`` request (or stream item) with InvalidArgument."""
    return _wrap(behaviour, method, streaming_in, streaming_out)
