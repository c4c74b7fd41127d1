"""One composition root: `app/resources.py` builds the clients, `app/dependencies.py` hands them out.

Checked over the code, as `tests/test_clock.py` checks the clock: a module that builds its own
engine, Redis client, HTTP client, Stripe gateway or token verifier, or reads the app's state
behind the dependencies' back, fails here; and every dependency of every route is `async def`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import text

from app.config import Settings
from app.resources import Resources

APP = Path(__file__).resolve().parents[2] / "app"
BUILDERS = {
    "create_engine",
    "create_job_engine",
    "create_redis",
    "create_entitlements_redis",
    "StripeGateway",
    "AsyncClient",
    "TokenVerifier",
}
# Where the builders are defined, the root that calls them, and the dev stack and simulation,
# which play the outside world (clients of the API and of the Stripe emulator).
EXEMPT = {APP / "resources.py", APP / "db" / "session.py", APP / "db" / "redis.py"}
EXEMPT_DIRS = {APP / "dev", APP / "simulate", APP / "stripe"}
STATE_READERS = {APP / "dependencies.py", APP / "main.py"}


def _modules() -> list[Path]:
    return [
        path
        for path in sorted(APP.rglob("*.py"))
        if path not in EXEMPT and not any(folder in path.parents for folder in EXEMPT_DIRS)
    ]


def _called_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_only_the_composition_root_builds_clients() -> None:
    built = [
        f"{path.relative_to(APP.parent)}:{node.lineno} {_called_name(node)}"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and _called_name(node) in BUILDERS
    ]
    assert built == []


def test_only_the_dependency_module_reads_the_apps_state() -> None:
    reads = [
        f"{path.relative_to(APP.parent)}:{node.lineno}"
        for path in sorted(APP.rglob("*.py"))
        if path not in STATE_READERS
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "state"
        and isinstance(node.value, ast.Attribute | ast.Subscript | ast.Name)
        and "app" in ast.unparse(node.value)
    ]
    assert reads == []


def _dependencies(dependant: Dependant) -> list[Dependant]:
    found = []
    for sub in dependant.dependencies:
        found.append(sub)
        found += _dependencies(sub)
    return found


def _routes() -> list[APIRoute]:
    """The routes of every router module (`app/<domain>/router.py`), as they declare them."""
    routes = []
    for path in sorted(APP.glob("*/router.py")):
        module = importlib.import_module(f"app.{path.parent.name}.router")
        for value in vars(module).values():
            if isinstance(value, APIRouter):
                routes += [route for route in value.routes if isinstance(route, APIRoute)]
    return routes


def test_every_route_dependency_is_async() -> None:
    """A plain `def` dependency runs on the thread pool: a hop per request (issue 16 measured it)."""
    sync, checked = set(), set()
    for route in _routes():
        for dependency in _dependencies(route.dependant):
            call = dependency.call
            if call is None:
                continue
            checked.add(call)
            target = call if inspect.isfunction(call) else type(call).__call__
            if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
                sync.add(getattr(call, "__qualname__", repr(call)))
    assert len(checked) > 10  # the sessions, principals and services of the routes
    assert sync == set()


async def test_resources_open_working_clients_and_close_what_they_opened(settings: Settings) -> None:
    resources = Resources.open(settings, jobs=True)
    async with resources.sessionmaker() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    assert await resources.redis.ping()
    await resources.close()
    assert resources.http.is_closed
