"""Every path a bundled config holds must stay inside the installed workspace.

One table (:data:`CONFIG_PATHS`) names each config key that holds a path and what happens to
it: ``create`` rewrites the home machine's outside paths before they travel, and ``install``
refuses a bundle whose config still points outside (it was crafted, or made by an older
raftsmith). Keys that name a bundle member are rewritten to the member's installed location
by the caller before the check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from rag.config import RaftsmithConfig

_URL = re.compile(r"^https?://", re.IGNORECASE)


@dataclass(frozen=True)
class PathKey:
    key: str  # dotted config key
    kind: str  # "path": always a path; "name_or_path": a name/hub id or a path; "paths": a list
    #: what bundle create puts there when the home value points outside the workspace
    #: (None for lists: their outside entries are dropped)
    home_default: Callable[[], Any] | None


def _fresh(key: str) -> Callable[[], Any]:
    """The schema default of ``key`` (read from the config model, not restated here)."""
    def default() -> Any:
        section, field = key.split(".")
        return getattr(getattr(RaftsmithConfig(), section), field)

    return default


CONFIG_PATHS: tuple[PathKey, ...] = (
    PathKey("corpus.paths", "paths", None),  # outside entries are dropped (see bundle_safe_config)
    # bundled: "embedding"; left out: where the laptop user is told to put the model folder
    PathKey("embedding.model", "name_or_path", lambda: "embedding"),
    PathKey("index.path", "path", _fresh("index.path")),
    PathKey("raft.questions", "paths", None),
    PathKey("student.base", "name_or_path", lambda: None),
    PathKey("student.output_dir", "path", _fresh("student.output_dir")),
    PathKey("export.out_dir", "path", _fresh("export.out_dir")),
    PathKey("chat.model", "name_or_path", _fresh("chat.model")),
    PathKey("chat.base_gguf", "name_or_path", lambda: None),
    # bundled: "rerank"; a folder outside the workspace that was not bundled is dropped
    PathKey("chat.rerank_model", "name_or_path", lambda: None),
    PathKey("audit.path", "path", _fresh("audit.path")),
)


def _get(cfg: RaftsmithConfig, key: str) -> Any:
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def _set(cfg: RaftsmithConfig, key: str, value: Any) -> None:
    section, field = key.split(".")
    setattr(getattr(cfg, section), field, value)


def outside_reason(value: str, root: Path) -> str | None:
    """Why ``value`` (relative to ``root``) would leave the workspace, or None when it stays."""
    if value.startswith("~"):
        return "starts with '~' (a home folder)"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive:
        return "is absolute"
    if "\\" in value:
        return "contains a backslash"
    if ".." in PurePosixPath(value).parts:
        return "climbs out with '..'"
    if "$" in value:
        return "holds a '$' (environment variables are not expanded here)"
    resolved = (root / value).resolve()
    try:
        resolved.relative_to(root.resolve())
    except ValueError:
        return "resolves outside the workspace (a symlink?)"
    return None


def _values(entry: PathKey, value: Any) -> Iterator[str]:
    if value is None:
        return
    items = value if entry.kind == "paths" else [value]
    for item in items:
        if isinstance(item, str) and not _URL.match(item):
            yield item


def outside_paths(cfg: RaftsmithConfig, root: Path) -> list[tuple[str, str, str]]:
    """(key, value, reason) for every config path that leaves ``root``."""
    found = []
    for entry in CONFIG_PATHS:
        for v in _values(entry, _get(cfg, entry.key)):
            reason = outside_reason(v, root)
            if reason is not None:
                found.append((entry.key, v, reason))
    return found


def _relative_inside(value: str, root: Path) -> str | None:
    """An absolute (or ~) home path that lies inside ``root``, made relative; else None."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        return None
    try:
        rel = p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return rel if outside_reason(rel, root) is None else None


def bundle_safe_config(cfg: RaftsmithConfig, root: Path) -> list[str]:
    """Rewrite (in place) the paths of a home config that would point outside the installed
    workspace; return what changed, for the create report. An absolute path inside the home
    workspace becomes relative; one outside it is left out (lists) or reset to its default.
    Values are shown: they are paths, not secrets. Install checks the result again with
    :func:`check_inside`."""
    changed = []
    for entry in CONFIG_PATHS:
        value = _get(cfg, entry.key)
        bad = [v for v in _values(entry, value) if outside_reason(v, root) is not None]
        if not bad:
            continue
        fixed = {v: r for v in bad if (r := _relative_inside(v, root)) is not None}
        for v, r in fixed.items():
            changed.append(f"{entry.key}: {v} is now {r!r} (relative to the workspace)")
        dropped = [v for v in bad if v not in fixed]
        if entry.kind == "paths":
            kept = [fixed.get(v, v) for v in value if v not in dropped]
            if entry.key == "corpus.paths" and not kept:
                kept = _fresh("corpus.paths")()
            _set(cfg, entry.key, kept)
            if dropped:
                changed.append(f"{entry.key}: left out {', '.join(dropped)} (outside the workspace)")
        elif fixed:
            _set(cfg, entry.key, fixed[value])
        elif entry.home_default is not None:
            new = entry.home_default()
            _set(cfg, entry.key, new)
            changed.append(f"{entry.key}: {bad[0]} is outside the workspace; the bundle sets {new!r}")
    return changed


def check_inside(cfg: RaftsmithConfig, root: Path) -> None:
    """Raise IntegrityError naming the first config path that leaves ``root``."""
    from rag.errors import IntegrityError

    found = outside_paths(cfg, root)
    if found:
        key, value, reason = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise IntegrityError(
            f"the bundled config's {key} = {value!r} {reason}{more}: an installed workspace reads and "
            "writes only inside its folder. Rebuild the bundle with this raftsmith ('raftsmith bundle "
            "create' rewrites such paths), or fix that key in the home workspace; nothing was installed."
        )


__all__ = ["CONFIG_PATHS", "PathKey", "bundle_safe_config", "check_inside", "outside_paths", "outside_reason"]
