"""Framing between kvd and a model's worker child: one message = a JSON header plus raw numpy buffers.

A frame is ``!II`` (header length, total buffer length), the header (UTF-8 JSON) and the buffers back to back.
The header's ``arrays`` lists each tensor (name, dtype, shape, byte count). Numeric arrays travel as their raw
bytes (no pickle, no base64: one copy in, one copy out); BYTES (object) arrays as the v2 protocol's raw form,
each element a little-endian uint32 length then its bytes. Calls carry an ``id``, so answers may come back in
any order and concurrent calls never wait for each other on the pipe.

Both ends use this module; it imports nothing heavier than numpy.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any, Mapping

import numpy as np

PREFIX = struct.Struct("!II")
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a header is names, dtypes and shapes: larger is a broken peer
OBJECT = "bytes"  # the dtype tag of a BYTES tensor


class Closed(Exception):
    """The peer closed the pipe (or died): no more frames."""


class TooBig(Exception):
    """A frame's buffers could not be allocated (MemoryError under the worker's limit); they were drained."""

    def __init__(self, header: dict[str, Any]) -> None:
        super().__init__("out of memory receiving a frame")
        self.header = header


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[list[dict[str, Any]], list[memoryview | bytes]]:
    """Descriptions for the header and the buffers to send (views of the arrays where they are contiguous)."""
    specs, buffers = [], []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype == object:
            payload = _pack_objects(array)
            specs.append({"name": name, "dtype": OBJECT, "shape": list(array.shape), "nbytes": len(payload)})
            buffers.append(payload)
        else:
            contiguous = np.ascontiguousarray(array)
            specs.append({"name": name, "dtype": contiguous.dtype.str, "shape": list(contiguous.shape), "nbytes": contiguous.nbytes})
            buffers.append(memoryview(contiguous).cast("B") if contiguous.nbytes else b"")
    return specs, buffers


def decode_arrays(specs: list[dict[str, Any]], payload: memoryview) -> dict[str, np.ndarray]:
    """The arrays of a received frame; numeric ones are views of ``payload`` (no copy)."""
    arrays, offset = {}, 0
    for spec in specs:
        size = int(spec["nbytes"])
        chunk = payload[offset:offset + size]
        offset += size
        shape = tuple(int(d) for d in spec["shape"])
        if spec["dtype"] == OBJECT:
            arrays[spec["name"]] = _unpack_objects(chunk, shape)
        else:
            arrays[spec["name"]] = np.frombuffer(chunk, dtype=np.dtype(spec["dtype"])).reshape(shape)
    return arrays


def _pack_objects(array: np.ndarray) -> bytes:
    parts = []
    for item in array.flat:
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _unpack_objects(chunk: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    items, offset, raw = [], 0, bytes(chunk)
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset:offset + length])
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


class Channel:
    """One end of the pipe: ``send`` from any thread (whole frames, never interleaved), ``receive`` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> None:
        specs, buffers = encode_arrays(arrays or {})
        if specs:
            header = {**header, "arrays": specs}
        head = json.dumps(header, separators=(",", ":")).encode()
        total = sum(len(b) if isinstance(b, bytes) else b.nbytes for b in buffers)
        with self._send_lock:
            try:
                self.sock.sendall(PREFIX.pack(len(head), total) + head)
                for buffer in buffers:
                    if len(buffer):
                        self.sock.sendall(buffer)
            except OSError as error:
                raise Closed(str(error)) from None

    def receive(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The next frame: its header and arrays. Raises Closed at end of stream, TooBig when its buffers could
        not be allocated (the frame is consumed, so the stream stays in step and the caller can answer it)."""
        head_size, total = PREFIX.unpack(self._exactly(PREFIX.size))
        if head_size > MAX_HEADER_BYTES:
            raise Closed(f"a frame header of {head_size} bytes: the peer is broken")
        header = json.loads(self._exactly(head_size))
        try:
            payload = bytearray(total)
        except MemoryError:
            self._drain(total)
            raise TooBig(header) from None
        view = memoryview(payload)
        self._into(view)
        return header, decode_arrays(header.get("arrays", []), view)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        self._into(memoryview(buffer))
        return bytes(buffer)

    def _into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                count = self.sock.recv_into(view[got:], len(view) - got)
            except OSError as error:
                raise Closed(str(error)) from None
            if count == 0:
                raise Closed("end of stream")
            got += count

    def _drain(self, size: int) -> None:
        scratch = memoryview(bytearray(min(size, 1 << 20) or 1))
        while size > 0:
            step = min(size, len(scratch))
            self._into(scratch[:step])
            size -= step
