"""Authorization headers as the tests send them: the `auth` fixture's type, and a bearer header."""

from __future__ import annotations

from collections.abc import Callable

# The `auth` fixture (tests/conftest.py): headers for a user of a role, `auth("creator")`.
Auth = Callable[..., dict[str, str]]


def bearer(token: str) -> dict[str, str]:
    """The Authorization header that presents `token`."""
    return {"Authorization": f"Bearer {token}"}
