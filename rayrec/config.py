"""Typed command configs: dataclasses whose field docstrings become ``--help`` text.

Every command has one config dataclass. Each field carries a docstring on the line under it
(CleanRL style); :func:`add_config_args` turns the fields into argparse options (``foo_bar`` →
``--foo-bar``), :func:`config_from_args` builds the dataclass back, and :func:`save_config` writes the
resolved values as YAML next to the command's outputs so every run says how it was made.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import itertools
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from rayrec import storage
from rayrec.errors import ConfigError

CONFIG_FILE = "config.yaml"


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    positional: tuple[str, ...] = (),
    flags: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Add one option per dataclass field to ``parser``.

    ``positional`` names fields given as positional arguments, ``flags`` maps a field to a flag other
    than its own name (``{"num_items": "--items"}``), ``skip`` leaves fields out (set by the caller).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags = flags or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        help_text = docs.get(f.name, "")
        if has_default and default not in (None, [], ()):
            help_text += f" (default: {default.value if isinstance(default, enum.Enum) else default})"
        # argparse %-formats help strings: a docstring's "5%" must reach it as "5%%".
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%"), "dest": f.name}
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif origin in (list, tuple):
            (item_tp, *_) = get_args(tp) or (str,)
            kwargs["action"] = "append"
            kwargs["type"] = item_tp
            kwargs["metavar"] = item_tp.__name__.upper()
        elif tp in (int, float, str, Path):
            kwargs["type"] = tp
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported config type {tp!r}")
        if f.name in positional:
            kwargs.pop("dest")
            if optional or has_default:
                kwargs["nargs"] = "?"
            parser.add_argument(f.name, **kwargs)
            continue
        kwargs["required"] = not has_default and not optional
        kwargs["default"] = None if kwargs.get("action") == "append" else argparse.SUPPRESS
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments; fields absent from ``args`` keep their defaults."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def to_plain(value: Any) -> Any:
    """Turn a config (or any value in it) into YAML/JSON-safe builtins."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def save_config(config: Any, out_dir: str | Path, name: str = CONFIG_FILE) -> str:
    """Write ``config`` as YAML under ``out_dir`` (a local path or URI); returns the file's URI."""
    text = yaml.safe_dump(
        {"command": type(config).__name__, **to_plain(config)}, sort_keys=False, allow_unicode=True
    )
    target = storage.join(str(out_dir), name)
    storage.write_text(target, text)
    return target


def load_config(cls: type, path: str | Path) -> Any:
    """Read a YAML written by :func:`save_config` back into ``cls``."""
    data = yaml.safe_load(storage.read_text(str(path))) or {}
    data.pop("command", None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown {cls.__name__} fields {unknown}")
    return cls(**data)


@dataclasses.dataclass(kw_only=True)
class RayConfig:
    """Fields every command shares; command configs inherit from it."""

    address: str | None = None
    """Ray cluster to run on (``ray://`` or ``host:port``); else ``RAY_ADDRESS``; else an embedded local Ray."""
    verbose: bool = False
    """Show Ray's own logs in the terminal (its driver logs, every worker's output, library warnings); by
    default they go to ``ray.log`` in the run directory and the command prints only its own progress."""
