"""The docs a user reads are in this repository, link only to its files and cover every route."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.main import create_app
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_points_at_a_file_of_this_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_readme_links_the_architecture_and_the_api_docs() -> None:
    links = set(LINK.findall((ROOT / "README.md").read_text()))
    assert {"docs/ARCHITECTURE.md", "docs/API.md"} <= links


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_sends_the_user_outside_the_repository(doc: Path) -> None:
    assert "../shared" not in doc.read_text()


def test_the_api_doc_names_every_route_of_the_openapi_document() -> None:
    text = (ROOT / "docs" / "API.md").read_text()
    openapi = create_app(make_settings()).openapi()
    missing = [
        f"{method.upper()} {path}"
        for path, item in openapi["paths"].items()
        for method in item
        if f"`{method.upper()} {path}`" not in text
    ]
    assert missing == []
