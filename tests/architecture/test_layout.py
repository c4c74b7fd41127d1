"""The tests mirror the code: `tests/<domain>/` beside `app/<domain>/`, shared helpers in
`tests/support/`, and no test module imports another test module or a conftest."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
# Folders for tests of no one `app` package: the HTTP API as a whole, the import rules and this
# layout, the kernel modules at app/'s top (config, clock, errors, auth, logging), the repository's
# other files (docs, k8s, Dockerfile).
CROSS_CUTTING = frozenset({"api", "architecture", "kernel", "repo"})


def domains(app: Path) -> frozenset[str]:
    """The packages of `app/`: each has its tests in the folder of the same name."""
    return frozenset(p.parent.name for p in app.glob("*/__init__.py"))


def imported_test_modules(source: str) -> list[str]:
    """The test modules and conftests of tests/ that `source` imports (`app.stripe.test_clocks` is
    code, not a test module)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names = [module, *(f"{module}{'' if module.endswith('.') else '.'}{a.name}" for a in node.names)]
        else:
            continue
        found += [
            name
            for name in names
            if name.rsplit(".", 1)[-1].startswith(("test_", "conftest"))
            and (name.startswith(("tests.", ".")) or "." not in name)
        ]
    return found


def misplaced(test_file: Path, tests: Path, domains: frozenset[str]) -> str | None:
    """Why `test_file` is in the wrong place, or None where it belongs."""
    parts = test_file.relative_to(tests).parts
    folder, stem = parts[0] if len(parts) > 1 else None, test_file.stem.removeprefix("test_")
    if folder in domains:
        return None
    for domain in sorted(domains):
        if any(stem == name or stem.startswith(f"{name}_") for name in {domain, domain.removesuffix("s")}):
            return f"it is about app/{domain}/: it belongs in tests/{domain}/"
    if folder is None:
        return "a test module lives in a folder: tests/<domain>/ or a cross-cutting one"
    if folder == "support":
        return "tests/support holds helpers, not tests"
    if folder not in CROSS_CUTTING:
        return f"tests/{folder}/ matches no app/ package and is not one of {sorted(CROSS_CUTTING)}"
    return None


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    offenders = {
        str(path.relative_to(ROOT)): imported
        for path in sorted(TESTS.rglob("*.py"))
        if (imported := imported_test_modules(path.read_text()))
    }
    assert offenders == {}, "share it through tests/support/ (helpers) or a conftest (fixtures)"


def test_every_test_module_is_in_the_folder_of_the_code_it_tests() -> None:
    known = domains(ROOT / "app")
    wrong = {
        str(path.relative_to(ROOT)): reason
        for path in sorted(TESTS.rglob("test_*.py"))
        if (reason := misplaced(path, TESTS, known))
    }
    assert wrong == {}


def test_every_test_folder_is_a_package() -> None:
    # Same-named modules (tests/invoices/test_router.py, tests/plans/test_router.py) import as
    # tests.invoices.test_router and tests.plans.test_router only if each folder is a package.
    folders = {p.parent for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []


def test_the_import_check_finds_test_modules_and_conftests_however_imported() -> None:
    source = """
from tests.dunning.test_service import PERIOD
from tests.dev import test_emulator_test_clocks
import tests.conftest
from . import conftest
from .test_router import RATE
from tests.support.rows import RATE
from tests.support import rows
from app.stripe.test_clocks import TestClockTime
"""
    assert imported_test_modules(source) == [
        "tests.dunning.test_service",
        "tests.dev.test_emulator_test_clocks",
        "tests.conftest",
        ".conftest",
        ".test_router",
    ]


def test_the_place_check_sends_a_domains_test_to_its_folder(tmp_path: Path) -> None:
    known = frozenset({"subscriptions", "usage", "dev"})
    at = tmp_path.joinpath
    assert misplaced(at("subscriptions/test_router.py"), tmp_path, known) is None
    assert misplaced(at("usage/test_subscription_usage.py"), tmp_path, known) is None
    assert misplaced(at("api/test_openapi.py"), tmp_path, known) is None
    assert misplaced(at("repo/test_docs.py"), tmp_path, known) is None
    assert misplaced(at("test_usage_billing.py"), tmp_path, known) == (
        "it is about app/usage/: it belongs in tests/usage/"
    )
    assert misplaced(at("test_things.py"), tmp_path, known) is not None
    assert misplaced(at("support/test_rows.py"), tmp_path, known) is not None
    assert misplaced(at("misc/test_things.py"), tmp_path, known) is not None
    assert misplaced(at("api/test_subscription_state.py"), tmp_path, known) == (
        "it is about app/subscriptions/: it belongs in tests/subscriptions/"
    )
    assert misplaced(at("kernel/test_usage.py"), tmp_path, known) is not None
