"""Hostile soak (issue 14): good traffic answered correctly while hostile traffic hits the same kvd.

    python bench/hostile_soak.py [--seconds 60] [--json results.json]

Starts its own kvd on 127.0.0.1 serving the digits CNN as 'steady' (uploaded; trained here unless --model),
then for --seconds runs at once: 2 good clients inferring on 'steady' and checking every answer against the
first; a fuzzer sending generated hostile ModelInfer requests (odd names, versions, datatypes, shapes numpy
cannot hold, broken contents) that must get documented statuses only (never INTERNAL/UNKNOWN); an image bomber
(13000x13000 PNGs of ~160 KiB and 15,000 1x1 PNGs per request) that must get INVALID_ARGUMENT; an HTTP fuzzer
(generated KServe v2 / TF Serving REST requests) that must never get a 500; a staller
opening uploads that send a header and nothing, then leave; a deleter uploading 'churn' versions and deleting
them. kvd's RSS is sampled every 0.5 s; pass = nothing unexpected, peak RSS under the stated bound (RSS after
warm-up + RSS_BOUND_MIB), exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RSS_BOUND_MIB = 400  # kvd may grow at most this much over its warmed-up RSS while under attack
DOCUMENTED = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "UNIMPLEMENTED",
              "OUT_OF_RANGE", "OK", "UNAVAILABLE"}


def _soak_module() -> Any:
    spec = importlib.util.spec_from_file_location("kvserve_soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


_PNG_1 = None
_BOMB_HEAD = None


def _small_pngs() -> tuple[bytes, bytes]:
    global _PNG_1, _BOMB_HEAD
    if _PNG_1 is None:
        _PNG_1, _BOMB_HEAD = png(1, 1), png(13000, 13000)[:400]
    return _PNG_1, _BOMB_HEAD  # type: ignore[return-value]


DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "", "fp32", "X" * 300]
HUGE_DIMS = [0, 1, 8, 2**31, 2**31 - 1, 2**63 - 1, 2**40, 3]


def hostile_infer(rng: random.Random, image_input: str) -> Any:
    """One generated hostile ModelInfer: odd names, versions, datatypes, shapes, contents and parameters."""
    from kvserve.proto import grpc_service_pb2 as pb

    tiny, bomb_head = _small_pngs()
    request = pb.ModelInferRequest(model_name=rng.choice(["digits", "steady", "", "nope", "d" * rng.randint(1, 3000), "digits\r\n"]),
                                   model_version=rng.choice(["", "1", "0", "-1", "9" * rng.randint(1, 5000), "x", "1.5"]))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 40])):
        datatype = rng.choice(DATATYPES)
        shape = [rng.choice(HUGE_DIMS) if rng.random() < 0.3 else rng.randint(0, 9) for _ in range(rng.choice([0, 1, 2, 4, 4, 70]))]
        tensor = request.inputs.add(name=rng.choice([image_input, image_input, "x", "", "\u2028" * 50]), datatype=datatype, shape=shape)
        choice = rng.random()
        if choice < 0.4:
            request.raw_input_contents.append(rng.randbytes(rng.choice([0, 1, 4, 255, 256, 4096])))
        elif choice < 0.6:
            tensor.contents.fp32_contents.extend([rng.random() for _ in range(rng.randint(0, 70))])
        elif choice < 0.8:
            tensor.contents.bytes_contents.extend([rng.choice([b"", b"\0", tiny, bomb_head[:rng.randint(0, 400)], rng.randbytes(20)])
                                                   for _ in range(rng.randint(0, 3))])
        else:
            tensor.contents.int64_contents.extend([rng.choice([0, -1, 2**63 - 1]) for _ in range(rng.randint(0, 5))])
    if rng.random() < 0.2:
        request.outputs.add(name=rng.choice(["probabilities", "", "zz" * 500])).parameters["classification"].int64_param = rng.choice([0, -1, 2**62, 3])
    if rng.random() < 0.1:
        request.raw_input_contents.append(b"extra")
    return request


HTTP_DATATYPES = DATATYPES + ["INT16", "UINT64", None, 7, ["FP32"]]


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: numbers at the edges of what parsers hold, strings, nesting, objects."""
    kinds = ["int", "float", "str", "none", "bool", "list", "dict", "b64"] if depth < 4 else ["int", "float", "str"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**30])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 1e-320, 3.4e39])
    if kind == "str":
        return rng.choice(["", "x", "\u2028", "\r\nforged", "9" * 5000, "\ud800"[:1]])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "b64":
        return {"b64": rng.choice(["", "!!!", "aGVsbG8=", "A" * 7, "iVBORw0KGgo="])}
    if kind == "list":
        return [_json_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 3, 64]))]
    return {rng.choice(["b64", "name", "", "x" * 300]): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _v2_tensor(rng: random.Random, image_input: str) -> dict[str, Any]:
    shape = [rng.choice(HUGE_DIMS + [-1, -(2**63)]) if rng.random() < 0.3 else rng.randint(0, 9)
             for _ in range(rng.choice([0, 1, 2, 4, 4, 70]))]
    tensor: dict[str, Any] = {"name": rng.choice([image_input, image_input, "x", "", "\u2028" * 50, 5]),
                              "datatype": rng.choice(HTTP_DATATYPES),
                              "shape": rng.choice([shape, shape, shape, "1,2", None, [1.5], [[1]]])}
    if rng.random() < 0.8:
        tensor["data"] = rng.choice([_json_value(rng), [rng.random() for _ in range(rng.randint(0, 70))],
                                     [[[0.0] * 8] * 8], "iVBORw0KGgo=", [{"b64": "iVBORw0KGgo="}]])
    if rng.random() < 0.3:
        tensor["parameters"] = rng.choice([{"binary_data_size": rng.choice([0, 4, -1, 2**63, "x", 256])},
                                           {"content_type": "base64"}, _json_value(rng), "p"])
    return tensor


def hostile_http(rng: random.Random, image_input: str) -> tuple[str, str, dict[str, str], bytes]:
    """One generated hostile HTTP request (method, path, headers, body) for the KServe v2 and TF Serving REST doors:
    odd paths, JSON and binary-extension bodies whose sizes lie, shapes numpy cannot hold, broken encodings."""
    name = rng.choice(["digits", "steady", "", "nope", "d" * rng.randint(1, 3000), "digits%0D%0A", "%00", "%E2%80%A8", "a%2Fb"])
    version = rng.choice(["1", "0", "-1", "9" * rng.randint(1, 5000), "x", "1.5"])
    headers: dict[str, str] = {"Content-Type": rng.choice(["application/json", "application/octet-stream", "text/plain", "x" * 500])}
    door = rng.random()
    if door < 0.55:  # KServe v2 infer, JSON or Triton's binary extension
        path = rng.choice([f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{version}/infer", "/v2/models/digits/infer"])
        body: Any = {"inputs": [_v2_tensor(rng, image_input) for _ in range(rng.choice([0, 1, 1, 1, 2, 40]))]}
        if rng.random() < 0.3:
            body["outputs"] = [{"name": rng.choice(["probabilities", "", "zz" * 500, 3]),
                                "parameters": rng.choice([{"classification": rng.choice([0, -1, 2**62, 3, "3", None])},
                                                          {"binary_data": rng.choice([True, "yes", None])}, []])}]
        if rng.random() < 0.2:
            body = rng.choice([_json_value(rng), [body], {"inputs": _json_value(rng)}, {"id": _json_value(rng), **body}])
        encoded = json.dumps(body).encode()
        if rng.random() < 0.35:
            tail = rng.randbytes(rng.choice([0, 1, 3, 4, 255, 4096]))
            headers["Inference-Header-Content-Length"] = rng.choice(
                [str(len(encoded)), str(len(encoded)), str(len(encoded) + 10), "-1", "abc", "0", "9" * 30, ""])
            encoded += tail
    elif door < 0.85:  # TF Serving REST predict
        path = rng.choice([f"/v1/models/{name}:predict", f"/v1/models/{name}/versions/{version}:predict",
                           f"/v1/models/digits/labels/{name}:predict", "/v1/models/digits:predict", f"/v1/models/{name}:classify"])
        rows = rng.choice([[[[[0.0]] * 8] * 8], [[1.0, 2.0], [3.0]], [{"b64": "!!"}], [_json_value(rng)], []])
        body = rng.choice([{"instances": rows}, {"inputs": rows}, {"inputs": {image_input: rows, "x": rows}},
                           {"instances": rows, "inputs": rows}, {"signature_name": "s" * 10000, "instances": rows},
                           {"instances": [{image_input: rows, "zz": 1}]}, _json_value(rng)])
        encoded = json.dumps(body).encode()
    else:  # bodies that are not JSON at all, and the other endpoints with odd names
        path = rng.choice(["/v2/models/digits/infer", "/v1/models/digits:predict", f"/v2/models/{name}",
                           f"/v2/models/{name}/versions/{version}/ready", f"/v1/models/{name}/versions/{version}/metadata",
                           f"/v2/repository/models/{name}/load", "/v2/models/digits/config"])
        encoded = rng.choice([b"", b"{", b"[" * 100_000, b"\xff\xfe\x00", rng.randbytes(300), b'{"inputs": NaN}',
                              b'{"inputs": [{"name": "a", "shape": [1e999]}]}', b"null", b'"s"'])
    if rng.random() < 0.05:
        headers["Content-Encoding"] = rng.choice(["gzip", "br", "x"])
    method = "GET" if path.endswith(("ready", "/config", "metadata")) or (path.count("/") == 3 and rng.random() < 0.5) else "POST"
    return method, path, headers, encoded


def http_call(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One raw HTTP request to 127.0.0.1:``port`` (paths sent as generated, unquoted): (status, body)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body if method == "POST" else None, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def run(seconds: float = 60, model: Path | None = None, workdir: Path | None = None, steady_ready: bool = False) -> dict[str, Any]:
    """Run the hostile soak; returns the figures (``passed`` says whether it met its bounds)."""
    from kvserve.client import Client
    from kvserve.proto import grpc_service_pb2 as pb
    from kvserve.proto import kvserve_service_pb2 as kv

    soak = _soak_module()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kvserve-hostile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    x = soak._inputs()
    if model is None:
        model = soak._train(workdir)
    process, address = soak.start_kvd(workdir, http=True)
    http_port = int((workdir / "http.port").read_text())
    tally = soak.Tally()
    rss: list[float] = []
    bomb = np.array([png(13000, 13000)], dtype=object)
    tiny_many = np.array([png(1, 1)] * 15000, dtype=object)
    try:
        with Client(address, timeout=120) as admin:
            soak._wait_ready(admin)
            if not steady_ready:
                admin.upload(model, name="steady")
            expected = admin.infer("steady", x)["probabilities"]
            image_input = admin.inference.ModelMetadata(pb.ModelMetadataRequest(name="steady"), timeout=30).inputs[0].name
            for _ in range(3):  # warm the paths the attack uses, then take the baseline
                admin.infer("steady", x)
                try:
                    admin.infer("steady", {image_input: bomb})
                except grpc.RpcError:
                    pass
            baseline = soak.rss_mb(process.pid)
            deadline = time.monotonic() + seconds

            def good() -> None:
                with Client(address, timeout=30) as client:
                    def step() -> None:
                        try:
                            got = client.infer("steady", x)["probabilities"]
                        except grpc.RpcError as error:
                            tally.surprise(f"good infer: {error.code().name}: {error.details()}")
                            return
                        tally.add("good_infers")
                        if not np.allclose(got, expected, atol=1e-5):
                            tally.surprise("steady answered differently")
                    soak.until(deadline, step, pause=0.002)

            def fuzz() -> None:
                rng = random.Random(14)
                with Client(address, timeout=30) as client:
                    def step() -> None:
                        try:
                            client.inference.ModelInfer(hostile_infer(rng, image_input), timeout=30)
                            code, details = "OK", ""
                        except grpc.RpcError as error:
                            code, details = error.code().name, error.details() or ""
                        tally.add("fuzzed")
                        if code not in DOCUMENTED or len(details) > 1200:
                            tally.surprise(f"fuzz: {code}: {details[:200]}")
                    soak.until(deadline, step)

            def http_fuzz() -> None:
                rng = random.Random(1414)

                def step() -> None:
                    method, path, headers, body = hostile_http(rng, image_input)
                    try:
                        status, text = http_call(http_port, method, path, headers, body)
                    except OSError as error:
                        tally.surprise(f"http fuzz: {method} {path[:60]}: {error}")
                        return
                    tally.add("http_fuzzed")
                    if (status >= 500 and status not in (501, 503)) or len(text) > 1400:
                        tally.surprise(f"http fuzz: {status} for {method} {path[:60]}: {text[:200]!r}")
                soak.until(deadline, step)

            def bombs() -> None:
                with Client(address, timeout=60) as client:
                    def step() -> None:
                        for payload in (bomb, bomb, tiny_many):
                            try:
                                client.infer("steady", {image_input: payload})
                                tally.surprise("an image bomb was accepted")
                            except grpc.RpcError as error:
                                tally.add("bombs")
                                if error.code().name not in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
                                    tally.surprise(f"bomb: {error.code().name}: {error.details()}")
                    soak.until(deadline, step)

            def stall() -> None:
                with Client(address, timeout=30) as client:
                    def step() -> None:
                        def requests() -> Any:
                            yield kv.UploadRequest(header=kv.UploadHeader(name="stalled", filename="x.h5", size=1000))
                            time.sleep(2.0)  # a header and nothing, then the client leaves
                        call = client.kvserve.Upload(requests(), timeout=1.5)
                        try:
                            list(call)
                        except grpc.RpcError as error:
                            tally.add("stalled_uploads")
                            if error.code().name not in ("DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"):
                                tally.surprise(f"stall: {error.code().name}: {error.details()}")
                    soak.until(deadline, step, pause=0.5)

            def deleter() -> None:
                with Client(address, timeout=120) as client:
                    def step() -> None:
                        try:
                            client.upload(model, name="churn")
                            tally.add("uploads")
                            client.delete("churn")
                            tally.add("deletes")
                        except grpc.RpcError as error:
                            if error.code().name != "RESOURCE_EXHAUSTED":  # the stalled uploads hold the slots
                                tally.surprise(f"churn: {error.code().name}: {error.details()}")
                    soak.until(deadline, step, pause=0.5)

            def sample() -> None:
                while time.monotonic() < deadline:
                    rss.append(soak.rss_mb(process.pid))
                    time.sleep(0.5)

            threads = [threading.Thread(target=t, daemon=True) for t in (good, good, fuzz, http_fuzz, bombs, stall, deleter, sample)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + 300)
            elapsed = time.monotonic() - started
            if not np.allclose(admin.infer("steady", x)["probabilities"], expected, atol=1e-5):
                tally.surprise("steady answered differently at the end")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            exit_code = process.wait(60)
        except Exception:  # noqa: BLE001 - a hung kvd fails the soak
            process.kill()
            exit_code = -9
    peak = max(rss, default=0.0)
    figures = {"seconds": seconds, "elapsed_s": round(elapsed, 1), **dict(tally.counts), "baseline_rss_mib": round(baseline),
               "peak_rss_mib": round(peak), "rss_bound_mib": round(baseline + RSS_BOUND_MIB), "kvd_exit_code": exit_code,
               "unexpected_errors": tally.unexpected}
    figures["passed"] = not tally.unexpected and peak <= baseline + RSS_BOUND_MIB and exit_code == 0
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    return _soak_module().report(run(args.seconds, args.model), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
