"""`billing webhooks replay` on the command line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app import cli as cli_module
from app.config import Settings


def test_replay_without_a_selection_explains_the_options() -> None:
    result = CliRunner().invoke(cli_module.cli, ["webhooks", "replay"])
    assert result.exit_code == 2
    assert "--event ID, --failed or --since T" in result.output


def test_replay_of_an_unknown_event_exits_1_saying_it_is_not_stored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)
    result = CliRunner().invoke(cli_module.cli, ["webhooks", "replay", "--event", "evt_not_stored"])
    assert result.exit_code == 1, result.output
    assert "no stored event evt_not_stored" in result.output


def test_version_prints_the_installed_version() -> None:
    from app import __version__

    result = CliRunner().invoke(cli_module.cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"billing {__version__}"
    assert __version__[0].isdigit()


def test_replay_since_accepts_an_iso_time(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)
    result = CliRunner().invoke(cli_module.cli, ["webhooks", "replay", "--since", "2999-01-01T00:00:00"])
    assert result.exit_code == 0, result.output
    assert "replayed 0 events" in result.output
