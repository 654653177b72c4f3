"""Shared pieces of the command line: --config, workspace loading, error translation."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rag.config import BACKEND_NAMES
from rag.errors import RaftsmithError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER = 1
EXIT_INTERNAL = 2


def config_option(f: F) -> F:
    """Adds ``--config PATH`` (default: nearest raftsmith.yaml upward, or $RAFTSMITH_CONFIG)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=True, path_type=str),
        default=None,
        help="Workspace config (default: the nearest raftsmith.yaml upward from here).",
    )(f)


def handle_errors(f: F) -> F:
    """Turn RaftsmithError into a message on stderr and exit 1; anything else exits 2."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except RaftsmithError as err:
            click.secho(f"Error: {err}", fg="red", err=True)
            sys.exit(EXIT_USER)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - last-resort translation at the edge
            logging.getLogger("raftsmith").debug("internal error", exc_info=True)
            click.secho(
                f"Internal error: {type(err).__name__}: {err}\n"
                "This is a bug in raftsmith; rerun with RAFTSMITH_DEBUG=1 for the traceback.",
                fg="red",
                err=True,
            )
            if _debug():
                raise
            sys.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def _debug() -> bool:
    import os

    return os.environ.get("RAFTSMITH_DEBUG", "") not in ("", "0")


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=None, default=str))


BACKEND_CHOICE = click.Choice(BACKEND_NAMES)


def model_option(f: Any) -> Any:
    """--model and --backend, shared by ask, chat and the answering commands."""
    f = click.option("--backend", type=BACKEND_CHOICE, default=None, help="Chat backend (default: chat.backend).")(f)
    return click.option("--model", "-m", default=None,
                        help="base | tuned | tuned-adapter | an export name | a .gguf path (default: chat.model).")(f)


def offline_option(f: Any) -> Any:
    return click.option("--offline", is_flag=True,
                        help="Refuse every non-loopback connection (also on with chat.offline: true).")(f)
