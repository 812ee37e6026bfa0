"""The HTTP app mounts this module's ``routes(door)`` when present: kvd's web page (kvserve.server.api.web)."""

from kvserve.server.api.web import routes

__all__ = ["routes"]
