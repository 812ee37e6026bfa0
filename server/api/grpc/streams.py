"""Bridges between aio streams and the blocking upload/benchmark pipelines, which run on their own threads.

``in_thread`` drives a blocking generator on a thread of its own and hands its items to the event loop;
``ChunkFeed`` is the blocking iterator of upload chunks that the loop fills as they arrive (a few chunks of
credit, so a fast client cannot queue a whole model in memory). ``read_chunks`` enforces the idle and total
timeouts: a stalled upload fails DEADLINE_EXCEEDED, which frees its slot and removes its staging.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, AsyncIterator, Iterator, TypeVar

from kvserve.proto import kvserve_service_pb2 as kv
from kvserve.server.errors import DeadlineExceeded, InvalidArgument, KvError
from kvserve.server.ops.limits import Abandon

T = TypeVar("T")
CHUNK_CREDITS = 4
_END = object()


async def in_thread(items: Iterator[T], name: str) -> AsyncIterator[T]:
    """Yield what the blocking iterator ``items`` yields, running it on a dedicated thread."""
    loop = asyncio.get_running_loop()
    handoff: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()

    def put(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(handoff.put_nowait, (item, error))
        except RuntimeError:  # the loop has closed: kvd is gone
            pass

    def pump() -> None:
        try:
            for item in items:
                put(item)
        except BaseException as error:  # noqa: BLE001 - handed to the coroutine, raised there
            put(_END, error)
        else:
            put(_END)

    threading.Thread(target=pump, name=name, daemon=True).start()
    while True:
        item, error = await handoff.get()
        if item is _END:
            if error is not None:
                raise error
            return
        yield item


class ChunkFeed:
    """Upload chunks for the pipeline's thread, put by the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.credits = asyncio.Semaphore(CHUNK_CREDITS)

    def put(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def end(self) -> None:
        self._queue.put(_END)

    def fail(self, error: BaseException) -> None:
        self._queue.put(error)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            try:
                self._loop.call_soon_threadsafe(self.credits.release)
            except RuntimeError:
                pass
            yield item


async def next_message(requests: AsyncIterator[Any], idle_s: float, what: str) -> Any | None:
    """The next message, None at the end of the stream; DEADLINE_EXCEEDED after ``idle_s`` of silence."""
    try:
        return await asyncio.wait_for(requests.__anext__(), idle_s)
    except StopAsyncIteration:
        return None
    except asyncio.TimeoutError:
        raise stalled(idle_s, what) from None


def stalled(idle_s: float, what: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"the upload sent nothing for {idle_s:g} s {what}; it was dropped (kvd --upload-idle-seconds); "
                            "upload again")


async def read_chunks(requests: AsyncIterator[kv.UploadRequest], feed: ChunkFeed, abandon: Abandon, idle_s: float,
                      total_s: float) -> None:
    """Move chunks from the client to ``feed`` until the stream ends, a timeout fires, or the upload is abandoned."""
    give_up_at = time.monotonic() + total_s
    try:
        while not abandon.is_set:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"the upload took longer than {total_s:g} s to arrive (kvd --upload-total-seconds); "
                                       "upload again over a faster link or ask for a longer limit")
            try:
                request = await next_message(requests, min(idle_s, remaining), "since its last chunk")
            except DeadlineExceeded:
                if time.monotonic() >= give_up_at:
                    continue  # the total limit, reported above
                raise
            if request is None:
                feed.end()
                return
            if request.WhichOneof("kind") != "chunk":
                raise InvalidArgument("an upload sends one header, then only chunks")
            await feed.credits.acquire()
            feed.put(request.chunk)
    except KvError as error:
        abandon.set(error)
        feed.fail(error)
    except asyncio.CancelledError:
        feed.fail(abandon.error or DeadlineExceeded("the upload was stopped"))
        raise
    except Exception:  # noqa: BLE001 - the stream broke (client gone): the pipeline learns it from the feed
        feed.fail(abandon.error or InvalidArgument("the upload stream broke; upload again"))
