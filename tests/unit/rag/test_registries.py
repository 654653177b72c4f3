"""Every list of names has one registry; the config's Literals and the CLI's choices agree with it."""

from __future__ import annotations

from typing import get_args

import click

from builder.families import FAMILIES
from rag.config import RaftsmithConfig, TeacherConfig
from rag.providers import PROVIDERS, STRUCTURED_STYLES, TEACHER_CHOICES


def _literal(model: type, field: str) -> set[str]:
    return set(get_args(model.model_fields[field].annotation))  # type: ignore[attr-defined]


def _choices(cmd: click.Command, option: str) -> set[str]:
    (param,) = [p for p in cmd.params if p.name == option]
    assert isinstance(param.type, click.Choice)
    return set(param.type.choices)


def test_teacher_provider_literal_is_the_provider_registry() -> None:
    assert _literal(TeacherConfig, "provider") == set(TEACHER_CHOICES) == {"none", *PROVIDERS}


def test_structured_styles_literal_is_the_teacher_style_table() -> None:
    from builder.generate.teacher import STRUCTURED

    assert _literal(TeacherConfig, "structured") == {"auto", *STRUCTURED_STYLES}
    assert set(STRUCTURED) == set(STRUCTURED_STYLES)
    assert {p.structured for p in PROVIDERS.values()} <= set(STRUCTURED_STYLES)


def test_secrets_and_cli_read_the_provider_registry() -> None:
    from builder.cli.generate_cmds import generate_cmd
    from rag.secrets import ENV_VARS, KNOWN_NAMES

    assert set(KNOWN_NAMES) == set(ENV_VARS) == set(PROVIDERS)
    assert {n: p.env_var for n, p in PROVIDERS.items()} == ENV_VARS
    assert _choices(generate_cmd, "teacher") == set(TEACHER_CHOICES)


def test_family_choices_are_the_family_registry() -> None:
    from builder.cli.train_cmds import train_cmd

    assert _choices(train_cmd, "family") == set(FAMILIES)
    assert RaftsmithConfig().student.family in FAMILIES


def test_backend_choices_are_the_config_literals() -> None:
    from builder.cli.train_cmds import train_cmd
    from rag.cli.ask_cmds import ask_cmd
    from rag.cli.eval_cmds import eval_cmd
    from rag.config import BACKEND_NAMES, TRAINER_NAMES, ChatConfig, StudentConfig

    assert _literal(ChatConfig, "backend") == set(BACKEND_NAMES) == _choices(ask_cmd, "backend") == _choices(eval_cmd, "backend")
    assert _literal(StudentConfig, "backend") == set(TRAINER_NAMES) == _choices(train_cmd, "backend")
