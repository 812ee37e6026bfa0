"""kvd's web page on the HTTP port: models, devices and plugins, a "try it" panel, the last benchmark.

Plain HTML, CSS and a little JS from ``static/`` (no build step), plus a few JSON routes under ``/ui/api/``
that read what the page shows from the daemon itself. The HTTP app mounts ``routes(door)`` (through
``kvserve.server.api.rest.web``), behind the same token middleware as the HTTP API: GET needs the read role.
Inference goes through the data plane like every other door: kvd decodes the image per the model's manifest.
"""

from __future__ import annotations

import asyncio
import inspect
import io
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from kvserve.plugins import safe
from kvserve.proto import classes
from kvserve.server.errors import InvalidArgument, KvError
from kvserve.server.uploads import benchmarks

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # one image or .npy from a browser
NPY_MAGIC = b"\x93NUMPY"
HTTP_STATUS = {"NOT_FOUND": 404, "UNAVAILABLE": 503, "UNIMPLEMENTED": 501, "INTERNAL": 500, "RESOURCE_EXHAUSTED": 429,
               "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401}


def routes(door: Any) -> list[BaseRoute]:
    """The page's routes; ``door`` has ``manager``, ``dataplane`` and, optionally, ``plugins``."""
    page = WebPage(door)
    return [
        Route("/", page.index, methods=["GET"]),
        Route("/ui/api/models", page.models, methods=["GET"]),
        Route("/ui/api/system", page.system, methods=["GET"]),
        Route("/ui/api/models/{name}/classify", page.classify, methods=["POST"]),
        Route("/ui/api/models/{name}/benchmark", page.benchmark, methods=["GET"]),
        Mount("/ui/static", app=StaticFiles(directory=STATIC), name="ui-static"),
    ]


def _error(error: Exception) -> JSONResponse:
    status = getattr(getattr(error, "code", None), "name", "INVALID_ARGUMENT")
    return JSONResponse({"error": str(error)}, status_code=HTTP_STATUS.get(status, 400))


async def _blocking(function: Any, *args: Any) -> Any:
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    return await asyncio.to_thread(function, *args)


class WebPage:
    def __init__(self, door: Any) -> None:
        self.door = door
        self._plugins = getattr(door, "plugins", None)

    @property
    def manager(self) -> Any:
        return self.door.manager

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"models": await asyncio.to_thread(self._models)})

    def _models(self) -> list[dict[str, Any]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for entry in self.manager.entries():
            manifest = entry.manifest or self._manifest(entry.name, entry.version)
            parity = manifest.get("parity") or {}
            grouped.setdefault(entry.name, []).append({
                "version": str(entry.version), "state": entry.state, "reason": entry.reason, "device": entry.backend,
                "precision": manifest.get("precision", ""),
                "parity": {key: parity.get(key) for key in ("passed", "max_abs_diff", "max_rel_diff", "tolerance_max_rel_diff",
                                                            "top1_agreement", "samples", "inputs")} if parity else None,
                "inputs": manifest.get("inputs", []), "labels": len(manifest.get("labels") or []),
                "preprocess": (manifest.get("preprocess") or {}).get("mode", "none"),
                "benchmark": benchmarks.last_report(entry.name, str(entry.version)) is not None,
            })
        return [{"name": name, "versions": versions} for name, versions in sorted(grouped.items())]

    def _manifest(self, name: str, number: int) -> dict[str, Any]:
        """A version that is not loaded still has its manifest on disk (precision, parity); unreadable is shown as none."""
        try:
            return self.manager.repository.read_manifest(name, number)
        except (KvError, OSError, ValueError):
            return {}

    async def system(self, request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(self._system))

    def _system(self) -> dict[str, Any]:
        from kvserve.server.version import SERVER_VERSION

        devices = []
        for name, backend in self.manager.backends.items():
            found = safe.availability(backend)
            devices.append({"name": name, "available": found.available, "reason": found.reason, "full_name": found.full_name,
                            "precisions": list(getattr(backend, "precisions", ()))})
        if self._plugins is None:
            from kvserve.plugins.manager import load_plugins

            self._plugins = load_plugins()
        return {"version": SERVER_VERSION, "devices": devices, "plugins": self._plugins.describe()}

    async def benchmark(self, request: Request) -> JSONResponse:
        name, version = request.path_params["name"], request.query_params.get("version", "")
        report = benchmarks.last_report(name, version)
        if report is None:
            return JSONResponse({"error": f"no benchmark of '{name}' was run since kvd started; run kvctl benchmark --model {name}"},
                                status_code=404)
        return JSONResponse(report)

    async def classify(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        version = request.query_params.get("version", "")
        try:
            k = int(request.query_params.get("k", "5"))
            if not 1 <= k <= 1000:
                raise ValueError
        except ValueError:
            return _error(InvalidArgument("k must be a whole number from 1 to 1000"))
        body = await request.body()
        if not body:
            return _error(InvalidArgument("send an image (PNG, JPEG, ...) or a .npy file as the request body"))
        if len(body) > MAX_UPLOAD_BYTES:
            return _error(InvalidArgument(f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"))
        try:
            model = await _blocking(self.manager.get, name, version)
            if len(model.inputs) != 1:
                raise InvalidArgument(f"model '{name}' has {len(model.inputs)} inputs; the page feeds single-input models")
            spec = model.inputs[0]
            if body.startswith(NPY_MAGIC):
                array = _npy(body, spec)
                source = f"tensor {list(array.shape)}"
            else:
                array = np.array([body], dtype=object)  # kvd decodes and preprocesses per the manifest
                source = "image"
            entry, outputs = await self._infer(name, version, {spec.name: array}, k)
        except KvError as error:
            return _error(error)
        rows = classes.decode(next(iter(outputs.values())))
        return JSONResponse({"model": name, "version": str(entry.version), "input": source,
                             "results": [[c.to_dict() for c in row] for row in rows]})

    async def _infer(self, name: str, version: str, inputs: dict[str, np.ndarray], k: int) -> Any:
        try:
            from kvserve.server.api.infer_adapter import infer  # the HTTP door's bridge to the data plane
        except ImportError:
            return await _blocking(self.door.dataplane.infer, name, version, inputs, None, {"": k})
        return await infer(self.door.dataplane, name, version, inputs, None, {"": k})


def _npy(body: bytes, spec: Any) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InvalidArgument(f"not a readable .npy file ({error})") from None
    if array.ndim == len(spec.shape) - 1:
        array = array[None, ...]
    from kvserve.proto.tensors import DATATYPES

    dtype = DATATYPES.get(spec.datatype)
    if dtype is not None and dtype.kind in "biuf" and array.dtype.kind in "biuf":
        array = array.astype(dtype, copy=False)
    return array

