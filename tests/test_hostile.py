"""Hostile input that used to cost memory or reach INTERNAL (issue 14): image bombs, shapes numpy cannot hold,
huge echoed names, log injection. In-process, on the real decoders; the kvd-level suite is test_hostile_kvd.py."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import zlib
import struct

import numpy as np
import pytest
from PIL import Image

from kvserve.proto import grpc_service_pb2 as pb
from kvserve.proto.tensors import TensorError, decode_request_inputs
from kvserve.server.dataplane import decode_images
from kvserve.server.errors import InvalidArgument, KvError
from kvserve.server.models.manager import ModelVersion
from kvserve.server.ops.logs import JsonFormatter, TextFormatter


def image_model(height: int = 8, width: int = 8, channels: int = 1, batch: int = -1) -> ModelVersion:
    spec = {"name": "pixels", "datatype": "FP32", "shape": [batch, height, width, channels]}
    return ModelVersion.from_manifest("m", 1, {"inputs": [spec], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]})


def png(width: int, height: int, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, and a tiny (truncated) IDAT: a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def bytes_array(items: list[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def test_a_13000_square_png_is_refused_from_its_header_without_decoding():
    """The issue's bomb: a 13000x13000 PNG of ~160 KiB. Decoding it costs ~0.5 GiB; refusing it costs nothing."""
    bomb = png(13000, 13000)
    assert len(bomb) < 300_000
    code = (
        "import resource, sys, numpy as np\n"
        "from tests.test_hostile import image_model, bytes_array\n"
        "from kvserve.server.dataplane import decode_images\n"
        "from kvserve.server.errors import InvalidArgument\n"
        "bomb = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for _ in range(4):\n"
        "    try:\n"
        "        decode_images(image_model(), {'pixels': bytes_array([bomb])})\n"
        "    except InvalidArgument as error:\n"
        "        message = str(error)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, message)\n"
    )
    import tempfile, pathlib
    with tempfile.NamedTemporaryFile(suffix=".png") as handle:
        handle.write(bomb)
        handle.flush()
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, handle.name], capture_output=True, text=True, check=True,
                             cwd=pathlib.Path(__file__).parent.parent)
    grown_mib, message = out.stdout.split(" ", 1)
    assert "element 0" in message and "169000000 pixels" in message, message
    assert int(grown_mib) < 64, out.stdout  # decoding it whole would add ~160 MiB (L) to ~500 MiB (RGB)


def test_a_forged_header_is_refused_and_a_truncated_one_names_the_element():
    with pytest.raises(InvalidArgument, match="element 0.*pixels"):
        decode_images(image_model(), {"pixels": bytes_array([huge_png_header(60000, 60000)])})
    with pytest.raises(InvalidArgument, match="element 1: not a readable image"):
        decode_images(image_model(), {"pixels": bytes_array([png(8, 8), huge_png_header(8, 8)[:20]])})


def test_many_tiny_images_are_counted_against_the_batch_limit_before_decoding():
    tiny = png(1, 1)
    many = bytes_array([tiny] * 15000)
    with pytest.raises(InvalidArgument, match="15000 images, more than this server's max batch size 1024"):
        decode_images(image_model(), {"pixels": many}, max_batch_size=1024)
    with pytest.raises(InvalidArgument, match="takes exactly 4"):
        decode_images(image_model(batch=4), {"pixels": bytes_array([tiny] * 5)})


def test_the_request_pixel_budget_counts_the_target_size():
    """1000 tiny images for a 224x224 model expand to 1000 x 224 x 224 decoded pixels: charged before decoding."""
    with pytest.raises(InvalidArgument, match="pixels one request may decode"):
        decode_images(image_model(224, 224, 3), {"pixels": bytes_array([png(1, 1)] * 1000)}, max_request_pixels=10_000_000)
    out = decode_images(image_model(224, 224, 3), {"pixels": bytes_array([png(1, 1)] * 3)})
    assert out["pixels"].shape == (3, 224, 224, 3)


def test_jpeg_is_decoded_at_reduced_size():
    from kvserve.proto.images import decoded_pixels
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 4000), (200, 10, 10)).save(buffer, "JPEG")
    assert decoded_pixels(buffer.getvalue(), 224, 224, 3) == 500 * 500  # 1/8 scale, still >= the target
    pixels = decode_images(image_model(224, 224, 3), {"pixels": bytes_array([buffer.getvalue()])}, max_image_pixels=1_000_000)
    assert pixels["pixels"].shape == (1, 224, 224, 3) and abs(float(pixels["pixels"][0, 100, 100, 0]) - 200) < 4


@pytest.mark.parametrize("items", [[b""], [b"\0"], [b"GIF89a"], [0]], ids=["empty", "zero", "gif-head", "int"])
def test_every_image_decode_failure_is_invalid_argument_naming_the_element(items):
    array = np.empty(1, dtype=object)
    array[0] = items[0]
    with pytest.raises(InvalidArgument, match="element 0"):
        decode_images(image_model(), {"pixels": array})


def infer_request(shape: list[int], datatype: str = "FP32", raw: bytes = b"", name: str = "x") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize("shape", [[2**63 - 1, 0], [2**31, 2**31, 2**31, 0], [0] * 40, [2**40, 2**40, 0]])
def test_shapes_numpy_cannot_hold_are_a_client_error(shape):
    with pytest.raises(TensorError, match="input 'x'"):
        decode_request_inputs(infer_request(shape))


def test_echoed_names_are_bounded_and_escaped():
    name = "n" * 20000 + "\r\nforged"
    with pytest.raises(TensorError) as caught:
        decode_request_inputs(infer_request([-1], name=name))
    assert len(str(caught.value)) < 1200 and "\n" not in str(caught.value) and "\r" not in str(caught.value)
    error = InvalidArgument(f"model '{name}' not found")
    assert len(str(error)) < 1200 and "\r" not in str(error)
    assert isinstance(error, KvError)


def record(message: str, **fields: str) -> logging.LogRecord:
    entry = logging.LogRecord("kvserve.test", logging.INFO, __file__, 1, message, (), None)
    entry.fields = fields  # type: ignore[attr-defined]
    return entry


@pytest.mark.parametrize("evil", ["a\rFAKE", "a\u2028FAKE", "a\u2029FAKE", "a\x85FAKE", "a\x0bFAKE", "a\x1b[31mFAKE", "a\nFAKE"])
def test_logs_escape_control_and_line_separators(evil):
    text = TextFormatter().format(record(f"model {evil} ready", model=evil))
    assert len(text.splitlines()) == 1 and "FAKE" in text
    assert not any(c in text for c in "\r\n\u2028\u2029\x85\x0b\x1b")
    line = JsonFormatter().format(record(f"model {evil}", model=evil))
    assert len(line.splitlines()) == 1 and json.loads(line)["model"] == evil
