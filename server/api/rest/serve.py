"""Run the HTTP app with uvicorn, either on its own thread and event loop or as a task in a loop kvd owns.

The socket is bound by ``bind`` when kvd builds (so "address in use" fails start-up like the gRPC port does);
``HttpServer.serve`` is a coroutine that can join kvd's event loop once the core is async, and
``start_thread``/``stop`` run it on a dedicated loop until then. uvicorn never installs signal handlers here:
kvd owns SIGTERM and drains both doors itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from typing import Any, Iterator

import uvicorn

from kvserve.server.settings import Settings

log = logging.getLogger("kvserve.server.api.rest")


def bind(address: str) -> socket.socket:
    """A listening socket on ``host:port`` (port 0 picks one); OSError with a message for the operator."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise OSError(f"invalid --http-address {address!r}: use host:port, e.g. 127.0.0.1:8501, or '' to disable") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (proto 0 does not),
    # and without it Nagle holds each response's body behind its headers for a delayed ACK (~40 ms per call).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, number))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot serve HTTP on {address}: {error.strerror or error}; pass --http-address host:port, or '' to disable") from None
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (kvd's main owns SIGTERM/SIGINT and drains every door)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: Any, sock: socket.socket, settings: Settings) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.tls = bool(settings.tls_cert)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", server_header=False, date_header=False,
            timeout_graceful_shutdown=max(1, int(settings.grace_seconds)),
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            ssl_ca_certs=str(settings.tls_client_ca) if settings.tls_client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
        )
        try:
            config.load()  # now, so a bad certificate or key fails kvd's start-up instead of the HTTP thread later
        except (OSError, ValueError) as error:
            sock.close()
            raise ValueError(f"cannot serve HTTPS with --tls-cert/--tls-key: {error}") from None
        self.server = _QuietServer(config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self) -> None:
        """Serve until ``stop``/``astop``; run it as a task in an existing loop, or via ``start_thread``."""
        self._loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def start_thread(self) -> None:
        """Serve on a dedicated thread and event loop; returns once requests are being accepted."""
        started = threading.Event()

        def run() -> None:
            async def main() -> None:
                task = asyncio.ensure_future(self.serve())
                while not self.server.started and not task.done():
                    await asyncio.sleep(0.01)
                started.set()
                await task

            try:
                asyncio.run(main())
            except BaseException:  # noqa: BLE001 - logged; the gRPC door keeps serving
                log.exception("the HTTP server stopped unexpectedly")
            finally:
                started.set()

        self._thread = threading.Thread(target=run, name="kvd-http", daemon=True)
        self._thread.start()
        started.wait(30)

    async def astop(self) -> None:
        """Stop accepting, let running requests finish (up to the grace period), close the socket."""
        self.server.should_exit = True

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
