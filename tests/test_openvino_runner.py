"""The OpenVINO runner's own feed: inputs copied into each request's tensors (no data dispatcher), small calls
run on the loop, larger ones through start_async; every path answers the same, across batch sizes, and after
OpenVINO's dispatcher took over a request for an input dtype the feed does not take (it swaps in tensors of its
own and resizes ours). A model built with OpenVINO's opset (y = 2x), so no TensorFlow and no kvd."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kvserve.plugins.backends import openvino_devices
from kvserve.plugins.types import TensorSpec


@pytest.fixture(scope="module")
def runner():
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter(ov.PartialShape([-1, 2]), ov.Type.f32, name="x")
    y = ops.multiply(x, ops.constant(np.float32(2)))
    y.output(0).get_tensor().set_names({"y"})
    compiled = openvino_devices.core().compile_model(ov.Model([y], [x], "double"), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    return openvino_devices.OpenVINORunner(compiled, [TensorSpec("y", "FP32", (-1, 2))], "CPU")


def _rows(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + 2 * n, dtype=np.float32).reshape(n, 2)


def test_every_feed_path_answers_alike(runner, monkeypatch):
    received = np.frombuffer(_rows(3).tobytes(), np.float32).reshape(3, 2)  # read-only, as a gRPC request's view
    assert runner.infer({"x": received})["y"].tolist() == (received * 2).tolist()
    assert runner.element_s < np.inf  # the first call measured the model

    async def calls() -> list[np.ndarray]:
        return [(await runner.infer_async({"x": _rows(n, n)}))["y"] for n in (1, 4, 2, 1)]

    inline = asyncio.run(calls())  # y = 2x computes in microseconds: on the loop
    assert [a.tolist() for a in inline] == [(_rows(n, n) * 2).tolist() for n in (1, 4, 2, 1)]
    monkeypatch.setattr(openvino_devices, "INLINE_MAX_S", 0.0)  # every call through start_async and its callback
    started = asyncio.run(calls())
    assert [a.tolist() for a in started] == [(_rows(n, n) * 2).tolist() for n in (1, 4, 2, 1)]

    wide = np.arange(10, dtype=np.float64).reshape(5, 2)  # float64: OpenVINO's dispatcher converts it
    assert runner.infer({"x": wide})["y"].tolist() == (wide * 2).tolist()
    assert asyncio.run(runner.infer_async({"x": wide[:3]}))["y"].tolist() == (wide[:3] * 2).tolist()
    for _ in range(runner.nireq + 1):  # back on the feed, on every pooled request, at a new batch size
        assert runner.infer({"x": _rows(2, 7)})["y"].tolist() == (_rows(2, 7) * 2).tolist()
    monkeypatch.setattr(openvino_devices, "INLINE_MAX_S", 1.0)
    assert asyncio.run(runner.infer_async({"x": _rows(6)}))["y"].tolist() == (_rows(6) * 2).tolist()


def test_inline_only_when_the_call_is_expected_to_be_cheap(runner, monkeypatch):
    """The choice: the fastest call seen per input element, times this call's elements, against INLINE_MAX_S."""
    ran_inline = []
    original = runner._run_sync

    def spy(slot, inputs, elements):
        ran_inline.append(elements)
        return original(slot, inputs, elements)

    monkeypatch.setattr(runner, "_run_sync", spy)
    monkeypatch.setattr(runner, "element_s", 1e-6)  # 1 us per element: 2 elements inline, 2,000 not (0.3 ms)
    asyncio.run(runner.infer_async({"x": _rows(1)}))
    asyncio.run(runner.infer_async({"x": _rows(1000)}))
    assert ran_inline == [2]


@pytest.mark.parametrize("inline", [1.0, 0.0], ids=["on-the-loop", "start-async"])
def test_finish_sees_the_requests_own_outputs_and_runs_before_they_are_reused(runner, monkeypatch, inline):
    """``finish`` gets views of the request's output tensors (no copy out: the daemon serializes there, the one
    copy), on both paths; more concurrent calls than pooled requests (the extra ones wait on a thread and are
    handed copies) each serialize their own rows."""
    monkeypatch.setattr(openvino_devices, "INLINE_MAX_S", inline)
    owned = []

    def finish(outputs: dict[str, np.ndarray]) -> bytes:
        owned.append(outputs["y"].flags.owndata)
        return outputs["y"].tobytes()

    async def calls() -> list[bytes]:
        return await asyncio.gather(*(runner.infer_async({"x": _rows(n % 5 + 1, n)}, None, finish) for n in range(4 * runner.nireq + 3)))

    answers = asyncio.run(calls())
    for n, answer in enumerate(answers):
        assert np.frombuffer(answer, np.float32).reshape(-1, 2).tolist() == (_rows(n % 5 + 1, n) * 2).tolist()
    assert owned.count(False) >= runner.nireq  # every call that got a pooled request saw its memory
    owned.clear()

    async def one_per_request() -> list[bytes]:
        return await asyncio.gather(*(runner.infer_async({"x": _rows(2, n)}, None, finish) for n in range(runner.nireq)))

    assert [np.frombuffer(a, np.float32).tolist() for a in asyncio.run(one_per_request())] == \
        [(_rows(2, n) * 2).ravel().tolist() for n in range(runner.nireq)]
    assert owned == [False] * runner.nireq  # views, never copies
    copied = asyncio.run(runner.infer_async({"x": _rows(1)}))["y"]  # without finish: a copy the caller keeps
    assert copied.flags.owndata
