"""The HTTP server's plumbing: the bound socket, start/stop on its own thread or as a task in an existing event
loop (how it joins kvd's loop), and the hook that mounts extra routes (the web page) behind the same tokens."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest
import requests
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kvserve.server.api.rest.app import create_app
from kvserve.server.api.rest.guard import Door
from kvserve.server.api.rest.serve import HttpServer, bind
from kvserve.server.settings import Settings

TOKEN = "read-" + "c" * 32


def _page(request):
    return PlainTextResponse("hello from an extra route")


def _app(tokens=None):
    door = Door(manager=None, dataplane=None, settings=Settings(), tokens=tokens)
    return create_app(door, extra_routes=[Route("/extra", _page)])  # "/" is the web page's public shell


def test_bind_makes_a_tcp_socket_and_explains_failures():
    sock = bind("127.0.0.1:0")
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio then sets TCP_NODELAY on every connection
        port = sock.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            bind(f"127.0.0.1:{port}")
    finally:
        sock.close()
    with pytest.raises(OSError, match="use host:port"):
        bind("localhost:http")


def test_own_thread_start_stop_and_extra_routes_behind_tokens():
    server = HttpServer(_app({hashlib.sha256(TOKEN.encode()).digest(): "read"}), bind("127.0.0.1:0"), Settings())
    server.start_thread()
    try:
        url = f"http://127.0.0.1:{server.port}/extra"
        assert requests.get(url, timeout=10).status_code == 401
        answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert answer.status_code == 200 and answer.text == "hello from an extra route"
    finally:
        server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/", timeout=5)


def test_serves_as_a_task_in_an_existing_loop():
    async def main() -> bytes:
        server = HttpServer(_app(), bind("127.0.0.1:0"), Settings())
        task = asyncio.create_task(server.serve())
        while not server.server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /extra HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await server.astop()
        await asyncio.wait_for(task, 30)
        return answer

    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello from an extra route")


def test_a_non_loopback_http_address_needs_protection():
    from pathlib import Path

    from kvserve.server.ops.security import check_exposure

    with pytest.raises(ValueError, match="0.0.0.0:8501"):
        check_exposure(Settings(http_address="0.0.0.0:8501"))
    with pytest.raises(ValueError, match="bearer tokens over plaintext"):  # tokens could be sniffed and replayed
        check_exposure(Settings(http_address="0.0.0.0:8501", auth_token_file=Path("t")))
    check_exposure(Settings(http_address="0.0.0.0:8501", auth_token_file=Path("t"), tls_cert=Path("c"), tls_key=Path("k")))
    check_exposure(Settings(http_address="127.0.0.1:8501"))
    check_exposure(Settings(http_address=""))


def test_a_bad_certificate_fails_at_build_not_later(tmp_path):
    from kvserve.server.api.rest.serve import HttpServer

    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    settings = Settings(tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem")
    with pytest.raises(ValueError, match="cannot serve HTTPS"):
        HttpServer(_app(), bind("127.0.0.1:0"), settings)
