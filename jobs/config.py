"""Job configs: one dataclass per job, loaded from YAML and overridden from the CLI.

Each dataclass field becomes a flag ``--field-name`` (dashes for underscores) whose help
is the field's docstring, and a YAML key ``field_name``. Precedence: field default, then
``--config FILE.yaml``, then flags. Lists are comma-separated on the command line
(``--id-columns a,b``); mappings are ``key=value`` pairs (``--column-types a=categorical``).
Validation lives in each dataclass's ``__post_init__`` and runs before Ray starts.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

import fsspec
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag is invalid."""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (attribute docstrings)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a YAML value or CLI string to the field type ``tp``."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    origin = get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if tp is not str and isinstance(value, bool):
                raise ValueError(value)
            return tp(value)
        if origin is Literal:
            if value not in get_args(tp):
                raise ConfigError(f"{name}: {value!r} is not one of {list(get_args(tp))}")
            return value
        if origin is list:
            (item,) = get_args(tp)
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
            return [coerce(name, v, item) for v in items]
        if origin is dict:
            _, vt = get_args(tp)
            if isinstance(value, str):
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                if any(len(p) != 2 for p in pairs):
                    # The value is not echoed: for storage_options it may hold a secret.
                    raise ConfigError(f"{name}: expected comma-separated key=value pairs, got "
                                      f"{len(pairs)} item(s) of which {sum(len(p) != 2 for p in pairs)} lack '='")
                value = {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, dict):
                raise ValueError(value)
            return {str(k): coerce(name, v, vt) for k, v in value.items()}
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from e
    return value


def load_yaml(uri: str) -> dict:
    """A YAML config file (any fsspec URI) as a mapping."""
    try:
        with fsspec.open(uri, "r") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {uri}") from e
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {uri} cannot be read as a YAML file: {type(e).__name__}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {uri} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri} must hold a mapping of option: value")
    return data


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``cls`` (values stay strings)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file with any of the options below (flags win)")
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _strip_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
        else:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            metavar = "N" if tp in (int, float) else "VALUE"
            suffix = " (required)" if required else f" (default: {default})"
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text + suffix)
    return parser


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str | None = None) -> T:
    """Build a config: field defaults < YAML file from ``--config`` < flags.

    Raises:
        ConfigError: Unknown YAML key, unreadable value, or a failed ``__post_init__`` check.
    """
    args = vars(build_parser(cls, prog, description).parse_args(argv))
    return config_from_mapping(cls, args.pop("config", None), args)


def config_from_mapping(cls: type[T], yaml_uri: str | None = None, overrides: dict | None = None) -> T:
    """Build a config from an optional YAML file plus a mapping of overrides."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for source in (load_yaml(yaml_uri) if yaml_uri else {}, overrides or {}):
        for key, value in source.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"unknown option {key!r}; known options: {sorted(names)}")
            values[name] = coerce(name, value, hints[name])
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def config_to_dict(cfg: Any) -> dict:
    """A config as plain data, for manifests and the artefact (no secrets live in configs)."""
    return dataclasses.asdict(cfg)
