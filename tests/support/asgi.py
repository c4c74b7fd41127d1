"""An HTTP GET's ASGI scope as a server hands it to the app, for calls that skip an HTTP client."""

from __future__ import annotations

from typing import Any


def get_scope(path: str, *, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    """A fresh scope each call: the app writes into the one it is given."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("billing.test", 80),
    }
