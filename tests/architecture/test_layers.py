"""The layers of docs/ARCHITECTURE.md, as the import contracts in pyproject.toml state them.

`make lint` runs `lint-imports` over the same contracts; these tests also keep the contracts
honest: every module of `app` has its layer, and an upward import is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter import api
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.layers import LayersContract
from importlinter.contracts.protected import ProtectedContract
from importlinter.domain.contract import Contract

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
CONTRACT_TYPES: dict[str, type[Contract]] = {
    "layers": LayersContract,
    "protected": ProtectedContract,
    "acyclic_siblings": AcyclicSiblingsContract,
}


def _configuration() -> dict[str, Any]:
    config: dict[str, Any] = api.read_configuration(str(PYPROJECT))
    return config


def _contract(contract_id: str) -> Contract:
    config = _configuration()
    options = next(c for c in config["contracts_options"] if c["id"] == contract_id)
    kind = CONTRACT_TYPES[options["type"]]
    return kind(name=options["name"], session_options=config["session_options"], contract_options=options)


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("app", include_external_packages=True, cache_dir=None)


def _layer_modules() -> list[str]:
    options = next(c for c in _configuration()["contracts_options"] if c["id"] == "layers")
    names: list[str] = []
    for layer in options["layers"]:
        names += [name.strip() for name in layer.replace("|", ":").split(":")]
    return names


def test_every_app_module_belongs_to_exactly_one_layer() -> None:
    """A new module names its layer in pyproject.toml; else no contract would constrain it."""
    graph = _graph()
    listed = _layer_modules()
    assert len(listed) == len(set(listed)), "a module is named in two layers"
    unplaced = []
    for module in sorted(m for m in graph.modules if m == "app" or m.startswith("app.")):
        covering = [name for name in listed if module == name or module.startswith(name + ".")]
        if len(covering) > 1:
            pytest.fail(f"{module} is in more than one layer: {covering}")
        if covering:
            continue
        # A package's face (its __init__) may stay unlisted if it only hands on its own modules.
        children = graph.find_children(module)
        imported = {m for m in graph.find_modules_directly_imported_by(module) if m.startswith("app")}
        if children and all(i.startswith(module + ".") for i in imported):
            continue
        unplaced.append(module)
    assert unplaced == []


@pytest.mark.parametrize("contract_id", ["layers", "no-circles", "stripe", "entry-points"])
def test_the_code_keeps_each_import_contract(contract_id: str) -> None:
    check = _contract(contract_id).check(_graph(), verbose=False)
    assert check.kept, check.metadata


@pytest.mark.parametrize(
    ("contract_id", "importer", "imported"),
    [
        ("layers", "app.models.subscription", "app.subscriptions.service"),  # a table reads a rule
        ("layers", "app.plans.repository", "app.plans.router"),  # a query reaches for HTTP
        ("layers", "app.money", "app.db"),  # the kernel depends on nothing of ours
        ("layers", "app.subscriptions.service", "app.webhooks.jobs"),  # a rule calls a job
        ("layers", "app.subscriptions.service", "app.dependencies"),  # a rule reaches for the wiring
        ("layers", "app.stripe", "app.resources"),  # the gateway reaches for the composition root
        ("no-circles", "app.webhooks.context", "app.webhooks.handlers"),  # the circle this broke
        ("stripe", "app.subscriptions.service", "stripe"),  # Stripe outside the gateway
        ("entry-points", "app.usage.service", "app.main"),  # the app outside its entry points
    ],
)
def test_a_new_upward_import_breaks_its_contract(contract_id: str, importer: str, imported: str) -> None:
    graph = _graph()
    graph.add_import(importer=importer, imported=imported)
    assert not _contract(contract_id).check(graph, verbose=False).kept
