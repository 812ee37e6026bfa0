"""Image decoding bounds an operator can set (kvd --max-image-pixels, --max-request-pixels, --max-decode-pixels),
and decoding inside the model's admission slot: a request that cannot get a slot is refused before any of its
images is decoded (issue 14 item 1)."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from conftest import start_kvd
from opsutil import copy_model

from kvserve.proto import grpc_service_pb2 as pb


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def images(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


@pytest.mark.parametrize("argv, says", [
    (["--max-image-pixels", "0"], "--max-image-pixels must be at least 1, got 0"),
    (["--max-image-pixels", "200000000"], "--max-image-pixels (200000000) <= --max-request-pixels (100000000)"),
    (["--max-request-pixels", "300000000"], "<= --max-decode-pixels (200000000) must hold"),
])
def test_pixel_flags_that_contradict_each_other_stop_kvd_in_one_line(argv, says, capsys):
    from kvserve.server.main import parse_args

    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_pixel_flags_reach_the_decoder(tmp_path, served_digits):
    copy_model(served_digits.repository, "digits", tmp_path / "repo")
    kvd = start_kvd(tmp_path / "repo", "--no-warm-converter", "--max-image-pixels", "5000", "--max-request-pixels", "6000")
    try:
        with kvd.client(timeout=60) as client:
            name = client.inference.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=30).inputs[0].name
            assert client.infer("digits", {name: images(png(50, 50), png(50, 50))})  # 2 x 2500 pixels: within both
            with pytest.raises(grpc.RpcError) as refused:
                client.infer("digits", {name: images(png(100, 100))})
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "10000 pixels, more than the 5000 kvd decodes" in refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                client.infer("digits", {name: images(png(50, 50), png(50, 50), png(50, 50))})
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than the 6000 pixels one request may decode" in refused.value.details()
    finally:
        kvd.kill()


@pytest.fixture
def dataplane(tmp_path, served_digits):
    """A real manager and data plane over a copy of the served digits model; no model may queue (max_queue 0)."""
    from kvserve.plugins.manager import load_plugins
    from kvserve.server.dataplane import DataPlane
    from kvserve.server.models.manager import ModelManager
    from kvserve.server.models.repository import Repository
    from kvserve.server.ops.limits import Admission
    from kvserve.server.settings import Settings

    copy_model(served_digits.repository, "digits", tmp_path / "repo")
    manager = ModelManager(Repository(tmp_path / "repo"), load_plugins(), Settings(repository=tmp_path / "repo"))
    manager.load_all()
    yield DataPlane(manager, Admission(max_queue=0))
    manager.close()


def test_images_wait_for_the_models_slot_before_they_are_decoded(dataplane):
    """Every slot busy and no room in the queue: the request is refused RESOURCE_EXHAUSTED before decoding (an
    undecodable image would otherwise answer INVALID_ARGUMENT); with a slot free the same request is decoded."""
    from kvserve.server.errors import InvalidArgument, ResourceExhausted

    model = dataplane.manager.get("digits", "")
    name = model.inputs[0].name
    broken = images(b"\x89PNG\r\n\x1a\n not an image")

    async def attempt() -> BaseException:
        try:
            await dataplane.infer("digits", "", {name: broken})
        except (InvalidArgument, ResourceExhausted) as error:
            return error
        raise AssertionError("a broken image was accepted")

    with dataplane.manager.lease(model) as runner:
        line = dataplane.admission.queue("digits", runner)
        line.running = line.slots  # every slot taken by calls still running
        busy = asyncio.run(attempt())
        line.running = 0
    free = asyncio.run(attempt())
    assert isinstance(busy, ResourceExhausted), busy
    assert isinstance(free, InvalidArgument) and "element 0" in str(free), free
