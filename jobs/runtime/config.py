"""Job configs on jsonargparse: one dataclass per job, from YAML and flags.

Each job's options are a dataclass; jsonargparse (the parser litgpt uses) turns its fields
into flags with their types, defaults, choices and attribute docstrings, reads ``--config``
from any fsspec URI, and offers ``--print_config``. A job composes the configs it shares:
``NightlyConfig`` holds a ``ScoreOptions`` (flags ``--score.top_k`` ...), ``SweepConfig`` a
``TrainOptions`` template (``--train.epochs`` ...). A flat config made of option mixins
(``TrainConfig``) gets one help group per mixin.

Precedence: field defaults, then ``--config FILE.yaml``, then the flags after it.

jsonargparse spells flags with underscores, takes booleans as ``--flag true``, lists as
``[a,b]`` and mappings as ``{k: v}``. ``normalize_argv`` also accepts the spellings these
jobs took before and that the docs and manifests use: dashes (``--val-data``), a bare
``--flag`` / ``--no-flag`` for booleans, comma-separated lists (``--id-columns a,b``) and
``key=value`` pairs (``--column-types zip=categorical``). It rewrites those tokens only.
Validation lives in each dataclass's ``__post_init__`` and runs before Ray starts; every
failure becomes one ``ConfigError`` line (exit code 2).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from argparse import SUPPRESS, ArgumentError
from typing import Any, TypeVar, get_args, get_origin

import yaml
from jsonargparse import (ActionConfigFile, ArgumentParser, DefaultHelpFormatter, get_loader, set_loader,
                          set_parsing_settings)

from jobs.data.storage import redact_config

T = TypeVar("T")

# Help texts come from the attribute docstrings under each field; --config reads any fsspec URI.
set_parsing_settings(docstring_parse_attribute_docstrings=True, config_read_mode_fsspec_enabled=True)

MAX_YAML_BYTES = 1 << 20
"""Largest config file or option value parsed (a config is a few hundred bytes)."""


def _safe_yaml_load(stream: str):
    """jsonargparse's YAML loader, refusing aliases and documents over ``MAX_YAML_BYTES``.

    An alias repeats a node without copying it in the text, so a few hundred bytes of
    nested aliases ("billion laughs") expand to gigabytes; configs never need them.
    """
    if len(stream) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"the YAML is {len(stream):,} characters; at most {MAX_YAML_BYTES:,} are read")
    if "*" in stream:  # the only way to write an alias; scanning events costs as much as the text is long
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for event in yaml.parse(stream, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not accepted in aescore options; "
                                     "write the value out")
    return _default_yaml_load(stream)


_default_yaml_load = get_loader("yaml")
set_loader("yaml", _safe_yaml_load, exceptions=(yaml.YAMLError,))

_TRUE = ("true", "false", "yes", "no", "on", "off", "1", "0", "null", "none")


_EPILOG = ("Also accepted: dashes for underscores (--val-data), --flag / --no-flag for true/false, "
           "comma-separated lists (--id-columns a,b) and key=value pairs (--column-types zip=categorical). "
           "--print_config prints the resolved options as YAML (storage option values redacted), a starting point for --config. "
           "-v/--verbose also shows Ray's own console logs (always kept in Ray's log folder).")


class ConfigError(ValueError):
    """A config file or flag is invalid."""


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def flag_kinds(cls: type, prefix: str = "") -> dict[str, str]:
    """Each option of ``cls`` (nested ones as ``score.top_k``) -> bool, list, dict or value."""
    kinds: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            kinds.update(flag_kinds(tp, f"{prefix}{f.name}."))
            continue
        origin = get_origin(tp)
        kinds[prefix + f.name] = ("bool" if tp is bool else "list" if origin is list
                                  else "dict" if origin is dict else "value")
    return kinds


def _as_json(kind: str, value: str) -> str:
    """A comma-separated list or ``k=v,...`` string as JSON; YAML/JSON values pass through."""
    text = value.strip()
    if not text or text[0] in "[{" or text.lower() in ("null", "none"):
        return value
    items = [v.strip() for v in text.split(",") if v.strip()]
    if kind == "list":
        return json.dumps(items)
    pairs = [item.split("=", 1) for item in items]
    if any(len(p) != 2 for p in pairs):
        # The value is not echoed: for storage_options it may hold a secret.
        raise ConfigError(f"expected comma-separated key=value pairs or a {{key: value}} mapping, got {len(pairs)} "
                          f"item(s) of which {sum(len(p) != 2 for p in pairs)} lack '='")
    return json.dumps({k.strip(): v.strip() for k, v in pairs})


def normalize_argv(argv: list[str], kinds: dict[str, str]) -> list[str]:
    """Rewrite dashed flags, bare booleans, comma lists and k=v pairs into jsonargparse's syntax."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name.startswith("no_") and kinds.get(name[3:]) == "bool" and not eq:
            out.append(f"--{name[3:]}=false")
            continue
        kind = kinds.get(name.rstrip("+"))
        if kind == "bool" and not eq and (i >= len(argv) or argv[i].lower() not in _TRUE):
            out.append(f"--{name}=true")
            continue
        if kind in ("list", "dict") and not name.endswith("+"):
            if not eq and i < len(argv):
                value, eq, i = argv[i], "=", i + 1
            if eq:
                try:
                    value = _as_json(kind, value)
                except ConfigError as e:
                    raise ConfigError(f"--{name.replace('_', '-')}: {e}") from None
        out.append(f"--{name}{eq}{value}" if eq else f"--{name}")
    return out


def with_aliases(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """Normalized ``argv`` with each alias flag (``--from``, a class's ``FLAG_ALIASES`` key) as the option it names.

    Aliases name value options only (a bare boolean is rewritten before this).
    """
    out = []
    for token in argv:
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        out.append(f"--{aliases[name]}{eq}{value}" if name in aliases else token)
    return out


def option_groups(cls: type) -> list[tuple[type, set[str]]]:
    """``cls`` and then its dataclass bases in field order, each with the fields it declares itself.

    These are the help groups: the job's own options (its inputs and outputs) first, then
    each option mixin in the order its fields come.
    """
    groups = []
    for klass in (cls, *reversed(cls.__mro__[1:])):
        own = set(klass.__dict__.get("__annotations__", {})) if dataclasses.is_dataclass(klass) else set()
        if own:
            groups.append((klass, own))
    return groups


def dashed(text: str) -> str:
    """``--an_option`` as a person types it: ``--an-option`` (underscores are accepted too)."""
    return re.sub(r"--([A-Za-z0-9_.]+)", lambda m: "--" + m.group(1).replace("_", "-"), text)


class _Help(DefaultHelpFormatter):
    """jsonargparse's help with dashed flags, a one-line usage, and each option's default (not its type)."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action)
        text = re.sub(r"(, )?type: %\(type\)s(, )?", lambda m: ", " if m.group(1) and m.group(2) else "", text)
        if "default" in (action.help or "").lower():  # the help already says what the default does
            text = re.sub(r"(, )?default: %\(default\)s", "", text)
        return text.replace(" ()", "").replace("(, ", "(")

    def add_arguments(self, actions) -> None:
        super().add_arguments([a for a in actions if not getattr(a, "aescore_hidden", False)])

    def _format_action_invocation(self, action) -> str:
        return dashed(super()._format_action_invocation(action))

    def _format_text(self, text: str) -> str:
        return super()._format_text(dashed(text)) if text else text

    def _format_usage(self, usage, actions, groups, prefix) -> str:
        required = " ".join(f"{a.option_strings[0]} {a.dest.upper()}" for a in actions
                            if a.required and a.option_strings)
        return dashed(f"usage: {' '.join(p for p in (self._prog, required) if p)} [options]\n\n")

    def _expand_help(self, action) -> str:
        return dashed(super()._expand_help(action))


def advanced_options(cls: type, prefix: str = "") -> set[str]:
    """Options (dotted for nested configs) that ``--help`` lists under the "advanced" groups.

    Each options class names its own in ``ADVANCED``; a nested config's are its class's.
    """
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for klass in cls.__mro__:
        out |= {prefix + name for name in klass.__dict__.get("ADVANCED", ())}
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints.get(f.name))
        if f.init and dataclasses.is_dataclass(tp):
            out |= advanced_options(tp, f"{prefix}{f.name}.")
    return out


def build_parser(cls: type, prog: str, description: str | None = None) -> ArgumentParser:
    """A jsonargparse parser for ``cls``: one help group per option mixin, ``--config``, ``--print-config``.

    ``--help`` lists each group's common options first, and the options its class names in
    ``ADVANCED`` after all of them, in an "Advanced: ..." group each; a nested config's
    advanced options (``--train.*`` of a sweep) are left out, with a note that they work.
    A class's ``FLAG_ALIASES`` (``{"from": "candidate"}``) are other spellings of its
    options, named in their help. Options named in ``cls.REFUSED_OPTIONS`` (dotted, e.g.
    ``train.latent_dim``: a composed config's fields that this job decides itself) still
    parse, so the job's own check can say why it refuses them, but are left out of ``--help``.
    """
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, epilog=_EPILOG,
                            formatter_class=_Help)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="YAML file (any fsspec URI) with any of the options below; flags after it win")
    for klass, own in option_groups(cls):
        skip = {f.name for f in dataclasses.fields(klass)} - own
        parser.add_class_arguments(klass, None, as_group=True, skip=skip)
    refused = dict(getattr(cls, "REFUSED_OPTIONS", {}))
    advanced = advanced_options(cls)
    spellings: dict[str, list[str]] = {}
    for alias, dest in getattr(cls, "FLAG_ALIASES", {}).items():
        spellings.setdefault(dest, []).append(f"--{alias}")
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if action.dest in spellings and action.help:
            action.help = f"{action.help.rstrip()} Also spelled {', '.join(spellings[action.dest])}."
        if action.dest in refused:
            action.help = SUPPRESS
        elif "." in action.dest and action.dest in advanced and action.dest not in spellings:
            action.aescore_hidden = True  # left out of --help, kept by --print-config (SUPPRESS would drop it)
    for group in list(parser._action_groups):  # argparse's groups, likewise
        moving = [a for a in group._group_actions if a.dest in advanced and "." not in a.dest]
        if moving:
            target = parser.add_argument_group(f"Advanced: {group.title}")
            group._group_actions[:] = [a for a in group._group_actions if a not in moving]
            target._group_actions.extend(moving)
        if any(a.dest in advanced and "." in a.dest for a in group._group_actions):
            nested = next(a.dest.split(".")[0] for a in group._group_actions if "." in a.dest)
            group.description = (f"The common ones: every option of aescore {nested} works as --{nested}.<option> "
                                 f"(aescore {nested} --help lists them all)")
    return parser


def _one_line(e: BaseException) -> str:
    """jsonargparse's message on one line, its type names as a user writes them."""
    text = " ".join(str(e).split()).replace('Parser key "', 'option "').replace("Expected a ", "expected ")
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    # An optional number: "Does not validate against any of the Union subtypes ... Given value: x"
    union = re.match(r'(option "[^"]+"): Does not validate against any of the Union subtypes '
                     r"Subtypes: \[(.*?)\].*Given value: (.*)$", text)
    if union:
        kinds = " or ".join("null" if k.strip() == "NoneType" else k.strip() for k in union.group(2).split(","))
        text = f"{union.group(1)}: expected {kinds}. Got value: {union.group(3)}"
    text = redact_secrets(text)  # before the option is renamed: it finds it by its name
    required = re.match(r"(.*arguments are required: )(.*)$", text)
    if required:
        text = required.group(1) + ", ".join("--" + n.strip().replace("_", "-") for n in required.group(2).split(","))
    text = re.sub(r'option "([\w.]+)"', lambda m: "--" + m.group(1).replace("_", "-"), text)
    text = dashed(text)  # normalize_argv wrote --a_b; the user typed --a-b
    text = re.sub(r"typing\.Literal\[(.*?)\]", r"one of [\1]", text)
    return bounded(text)


def flagged(text: str, names: dict[str, str]) -> str:
    """A check's message with the options it names written as flags: ``latent_dim must ...`` -> ``--latent-dim must ...``.

    ``names``: a name as a check writes it -> the option (a nested one dotted: ``top_k`` ->
    ``score.top_k``). Names with an underscore anywhere; others (``epochs``) only where the
    message starts with them.
    """
    for name in sorted(names, key=len, reverse=True):
        dash = "--" + names[name].replace("_", "-")
        if "_" in name:
            text = re.sub(rf"(?<![-\w.]){re.escape(name)}(?![\w])", dash, text)
        elif text.startswith(f"{name} "):
            text = dash + text[len(name):]
    return text


MAX_ERROR_CHARS = 400
"""An error line shows at most this much of a message (a value can be megabytes long)."""


def bounded(text: str) -> str:
    """``text`` cut to ``MAX_ERROR_CHARS`` characters."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + f"... ({len(text):,} characters)"


def redact_secrets(text: str) -> str:
    """A parser message about storage options without the value it quotes (the value may hold a key)."""
    if "storage_options" not in text and "storage-options" not in text:
        return text
    return re.sub(r"\.?\s*(Got value|given value|value)\s*:.*$", ". The value is not shown: storage options may "
                  "hold secrets", text, flags=re.IGNORECASE)


def _print_config_redacted(parser: ArgumentParser, args: list[str]) -> None:
    """jsonargparse's ``--print_config`` (a template even without the required options), storage option values redacted.

    Storage options may hold keys, and their help says they are never written out.
    """
    import contextlib
    import io

    import yaml

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            parser.parse_args(args)  # prints and exits
    except SystemExit:
        printed = redact_config(yaml.safe_load(out.getvalue()))
        print(yaml.safe_dump(printed, sort_keys=False, default_flow_style=False), end="")
        raise


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str | None = None) -> T:
    """Build a config: field defaults < YAML file from ``--config`` < flags.

    ``--help`` and ``--print_config`` print and exit 0 (SystemExit), as argparse does.

    Raises:
        ConfigError: Unknown option, unreadable value, or a failed ``__post_init__`` check.
    """
    import sys

    parser = build_parser(cls, prog, description)
    args = with_aliases(normalize_argv(list(sys.argv[1:] if argv is None else argv), flag_kinds(cls)),
                        getattr(cls, "FLAG_ALIASES", {}))
    try:
        if "--print_config" in args:
            _print_config_redacted(parser, args)
        namespace = parser.parse_args(args)
        values = parser.instantiate(namespace)
    except ArgumentError as e:
        raise ConfigError(_one_line(e)) from e
    except (TypeError, ValueError) as e:  # a nested dataclass's own check
        raise ConfigError(flagged(_one_line(e), _option_names(cls))) from e
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    try:
        return cls(**{name: values[name] for name in names})
    except (TypeError, ValueError) as e:
        raise ConfigError(bounded(flagged(str(e), _option_names(cls)))) from e


def _option_names(cls: type) -> dict[str, str]:
    """Every option of ``cls`` by the names its checks use: its own, and a nested one's bare name (``top_k``
    -> ``score.top_k``) where no option of its own has it."""
    dotted = list(flag_kinds(cls))
    names = {n: n for n in dotted}
    for n in dotted:
        names.setdefault(n.rsplit(".", 1)[-1], n)
    return names


def config_to_dict(cfg: Any) -> dict:
    """A config as plain data, for manifests and the artefact (no secrets live in configs)."""
    return dataclasses.asdict(cfg)
