"""Alembic driven from code: `billing migrate`, `billing dev` and the tests use this."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str) -> Config:
    ini = Path.cwd() / "alembic.ini"
    if not ini.exists():
        ini = REPO_ROOT / "alembic.ini"
    if not ini.exists():
        raise FileNotFoundError("alembic.ini not found (run from the project folder)")
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
