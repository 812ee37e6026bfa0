"""The HTTP app: KServe v2 REST, TF Serving REST, and any routes others mount (the web page).

Extra routes come from ``create_app(door, extra_routes=...)`` or, when present, from a module
``kvserve.server.api.rest.web`` exposing ``routes(door) -> list[BaseRoute]``; the same token check covers them.
"""

from __future__ import annotations

import importlib
import logging
from typing import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from kvserve.proto.echo import bounded, short

from . import tfserving, v2
from .errors import error_response
from .guard import AuthMiddleware, Door

log = logging.getLogger("kvserve.server.api.rest")


def _web_routes(door: Door) -> list[BaseRoute]:
    """The web page's routes, if that module is installed (it is optional; a broken one is logged, not fatal)."""
    try:
        web = importlib.import_module("kvserve.server.api.rest.web")
    except ModuleNotFoundError as error:
        if error.name != "kvserve.server.api.rest.web":
            log.exception("the web page module failed to import; serving the API without it")
        return []
    except Exception:  # noqa: BLE001
        log.exception("the web page module failed to import; serving the API without it")
        return []
    return list(web.routes(door))


async def _http_error(request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, HTTPException) else 500
    method, path = short(request.method, 16), short(request.url.path, 200)  # the client's words, escaped and cut
    if status == 404:
        message = f"no route {method} {path}; see docs/http-api.md (/v2/..., /v1/models/...)"
    elif status == 405:
        message = f"{method} is not allowed on {path}"
    else:
        message = bounded(str(getattr(error, "detail", "")) or "request failed")
    return error_response(message, status)


def create_app(door: Door, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    routes = [*v2.routes(door), *tfserving.routes(door), *extra_routes, *_web_routes(door)]
    return Starlette(routes=routes, middleware=[Middleware(AuthMiddleware, tokens=door.tokens)],
                     exception_handlers={HTTPException: _http_error})
