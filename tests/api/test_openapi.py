"""The OpenAPI document is complete enough to generate a client from, and /docs works offline."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.support.settings import make_settings

MONEY_FIELDS = re.compile(
    r"^(amount(_.*)?|.*_amount|subtotal|tax|total|gross|commission|net|pending|paid_out|available|"
    r"monthly_price|price_per_call|unit_amount|estimated_amount)$"
)


@pytest.fixture(scope="module")
def offline_app() -> FastAPI:
    # No lifespan: these pages and the document touch no database, Redis or Stripe.
    return create_app(make_settings())


@pytest.fixture
async def http(offline_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=offline_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as client:
        yield client


@pytest.fixture(scope="module")
def openapi(offline_app: FastAPI) -> dict[str, Any]:
    return offline_app.openapi()


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_this_server(http: httpx.AsyncClient, page: str) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    html = response.text
    external = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, flags=re.IGNORECASE)
    assert external == [], f"{page} references {external}"
    parser = _References()
    parser.feed(html)
    assert parser.urls, "the page loads its UI from somewhere"
    for url in parser.urls:
        assert not urlsplit(url).netloc, url
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert asset.content


def _schemas(openapi: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, schema in openapi["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            yield name, field, prop


def test_every_schema_field_has_a_description(openapi: dict[str, Any]) -> None:
    missing = [f"{name}.{field}" for name, field, prop in _schemas(openapi) if not prop.get("description")]
    assert missing == []


def test_every_parameter_has_a_description(openapi: dict[str, Any]) -> None:
    missing = [
        f"{name} {parameter['in']} {parameter['name']}"
        for name, operation in _operations(openapi)
        for parameter in operation.get("parameters", [])
        if not parameter.get("description")
    ]
    assert missing == []


def test_every_money_field_states_its_unit(openapi: dict[str, Any]) -> None:
    unclear = [
        f"{name}.{field}"
        for name, field, prop in _schemas(openapi)
        if MONEY_FIELDS.match(field)
        and "unit" not in prop.get("description", "")
        and not prop.get("$ref")
        and prop.get("type") != "object"
    ]
    assert unclear == []


def _operations(openapi: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_request_body_carries_an_example(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    missing = []
    for name, operation in _operations(openapi):
        body = operation.get("requestBody")
        if body is None:
            continue
        for media in body["content"].values():
            schema = media.get("schema", {})
            refs = [s["$ref"] for s in [schema, *schema.get("anyOf", [])] if "$ref" in s]
            targets = [schemas[ref.rsplit("/", 1)[-1]] for ref in refs] or [schema]
            if not (media.get("example") or media.get("examples") or all(t.get("examples") for t in targets)):
                missing.append(name)
    assert missing == []


def test_every_error_response_names_its_codes(openapi: dict[str, Any]) -> None:
    unnamed = []
    for name, operation in _operations(openapi):
        for status, response in operation["responses"].items():
            if status.isdigit() and int(status) >= 400 and "`code`: `" not in response["description"]:
                unnamed.append(f"{name} {status}")
    assert unnamed == []


def test_every_tag_is_described(openapi: dict[str, Any]) -> None:
    described = {tag["name"] for tag in openapi.get("tags", []) if tag.get("description")}
    used = {tag for _, operation in _operations(openapi) for tag in operation.get("tags", [])}
    assert used
    assert used <= described
