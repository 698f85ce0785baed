"""Config files: finding them, reading them, and saying exactly what is wrong.

A team commits one ``.mirrortrace.toml`` (or ``mirrortrace.toml``) at the top
of its repository and everyone runs ``mirrortrace run ./app``. Keys are named
like the long options of ``run``, at the top level or grouped in tables::

    agent-exec = "kubectl exec -i web-0 -c agent -- mirrortrace-agent"
    dns = true
    ui = "plain"

    [target]          # or: target = "deployment/web"
    path = "deployment/web"
    namespace = "dev"

    [fs]              # or: fs = "read"
    mode = "read"
    remote = ["/etc/app/**"]

The command line overrides the file. Every mistake is a :class:`ConfigError`
naming the file, the key and its line: tomllib reports the position of a
syntax error, and for a bad key or value the line is found by scanning the
text, since tomllib keeps no positions for parsed values.

Teams coming from mirrord bring a ``.mirrord/mirrord.json``: any ``.json``
file is read as one (see :mod:`supervisor.mirrord_config`), and the search
finds ``.mirrord/mirrord.json`` too, after the mirrortrace names of the same
folder. What such a file sets that has no meaning here comes back as warnings
in :class:`ConfigFile`, for the CLI to print.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import options as opt
from supervisor.errors import ConfigError, UsageError

CONFIG_NAMES = (".mirrortrace.toml", "mirrortrace.toml")
MIRRORD_CONFIG_NAME = ".mirrord/mirrord.json"
# What find_config looks for in each folder, the first found winning: a
# mirrortrace file beats a mirrord one at the same level.
SEARCHED_NAMES = (*CONFIG_NAMES, MIRRORD_CONFIG_NAME)


@dataclass(frozen=True)
class ConfigFile:
    """A config file, read and checked.

    ``values`` maps RunOptions field names to values; ``warnings`` are lines
    (without the ``mirrortrace:`` prefix) naming what the file sets that
    mirrortrace ignores — only a mirrord.json has any.
    """

    path: Path
    values: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


class _BadValue(Exception):
    """A value of the right type but not allowed; the text follows the key."""


@dataclass(frozen=True)
class _Key:
    """One setting: its RunOptions field and how to check its TOML value."""

    field: str
    convert: Callable[[Any, Path], Any]
    kind: str  # what the value must be, for the error message


def _string(check: Callable[[str], Any] | None = None):
    def convert(value: Any, base: Path) -> Any:
        if not isinstance(value, str):
            raise TypeError
        return check(value) if check else value

    return convert


def _mode(option: str, choices: tuple[str, ...], table: bool = True) -> _Key:
    """A key whose value is one of choices (and that names a table too)."""
    kind = "one of " + ", ".join(choices)
    if table:
        kind += f" (or a [{option}] table)"

    def check(value: str) -> str:
        if value not in choices:
            raise _BadValue(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return _Key(option, _string(check), kind)


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise TypeError
    return path_from_file(value, base)


def path_from_file(value: str, base: Path) -> Path:
    """A path written in a config file in folder base: ``~`` expanded, relative to base."""
    # Relative paths are relative to the config file, not to wherever the
    # user happens to run mirrortrace from.
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _bool(value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _strings(check: Callable[[str], Any] | None = None):
    """A string or a list of strings, each passed through check."""

    def convert(value: Any, base: Path) -> list[Any]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise TypeError
        return [check(i) if check else i for i in items]

    return convert


def _env_override(value: Any, base: Path) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise TypeError
    return {opt.check_env_name("env-override", name): text for name, text in value.items()}


def _agent_exec(value: Any, base: Path) -> str:
    # A list is taken as argv, already split: no quoting to get wrong.
    if isinstance(value, list) and value and all(isinstance(i, str) for i in value):
        import shlex

        return shlex.join(value)
    if not isinstance(value, str):
        raise TypeError
    return opt.check_agent_exec(value)


_STRING_OR_LIST = "a string or a list of strings"

# Top-level keys, named like the long options of `mirrortrace run`.
TOP_KEYS: dict[str, _Key] = {
    "agent-exec": _Key("agent_exec", _agent_exec, "a string or a list of strings"),
    "target": _Key("target", _string(opt.check_target), "a string (or a [target] table)"),
    "namespace": _Key("namespace", _string(), "a string"),
    "context": _Key("context", _string(), "a string"),
    "kubeconfig": _Key("kubeconfig", _path, "a path string"),
    "agent-image": _Key("agent_image", _string(), "a string"),
    "dns": _Key("dns", _bool, "true or false"),
    "outgoing": _mode("outgoing", opt.OUTGOING_MODES),
    "local-cidr": _Key("local_cidrs", _strings(opt.parse_cidr), _STRING_OR_LIST),
    "fs": _mode("fs", opt.FS_MODES),
    "fs-remote": _Key(
        "fs_remote", _strings(lambda v: opt.check_path_pattern("--fs-remote", v)), _STRING_OR_LIST
    ),
    "fs-local": _Key(
        "fs_local", _strings(lambda v: opt.check_path_pattern("--fs-local", v)), _STRING_OR_LIST
    ),
    "env": _mode("env", opt.ENV_MODES),
    "env-exclude": _Key("env_exclude", _strings(), _STRING_OR_LIST),
    "env-include": _Key("env_include", _strings(), _STRING_OR_LIST),
    "env-override": _Key("env_override", _env_override, "a table of strings"),
    "incoming": _mode("incoming", opt.INCOMING_MODES),
    "http-header-filter": _Key(
        "http_header_filter",
        _string(lambda v: (opt.parse_header_filter(v), v)[1]),
        "a string",
    ),
    "http-path-filter": _Key(
        "http_path_filter",
        _string(lambda v: opt.check_regex("--http-path-filter", v)),
        "a string",
    ),
    "port-map": _Key("port_map", _strings(opt.parse_port_map), _STRING_OR_LIST),
    "ui": _mode("ui", opt.UI_MODES, table=False),
    "events": _Key("events_file", _path, "a path string"),
}

# Tables: table name -> {key in the table: top-level key it stands for}.
TABLES: dict[str, dict[str, str]] = {
    "agent": {"exec": "agent-exec", "image": "agent-image"},
    "target": {
        "path": "target",
        "name": "target",
        "namespace": "namespace",
        "context": "context",
        "kubeconfig": "kubeconfig",
    },
    "outgoing": {"mode": "outgoing", "local-cidr": "local-cidr"},
    "fs": {"mode": "fs", "remote": "fs-remote", "local": "fs-local"},
    "env": {
        "mode": "env",
        "exclude": "env-exclude",
        "include": "env-include",
        "override": "env-override",
    },
    "incoming": {
        "mode": "incoming",
        "http-header-filter": "http-header-filter",
        "http-path-filter": "http-path-filter",
        "port-map": "port-map",
    },
}


def find_config(start: Path | None = None) -> Path | None:
    """Return the nearest config file in start (default: cwd) or a parent.

    In each folder, ``.mirrortrace.toml``, then ``mirrortrace.toml``, then
    ``.mirrord/mirrord.json``: the nearest folder wins, then that order.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in SEARCHED_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def resolve_config(explicit: Path | None, start: Path | None = None) -> Path | None:
    """The config file to use: the one given with --config, else the nearest."""
    if explicit is not None:
        if not explicit.is_file():
            what = "is a directory" if explicit.is_dir() else "does not exist"
            raise ConfigError(f"config file {what}", "check the --config path", path=explicit)
        return explicit
    return find_config(start)


def read_config(path: Path) -> ConfigFile:
    """Read and check a config file: TOML, or mirrord's JSON for a ``.json`` file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the file ({err.strerror})", path=path) from err
    except UnicodeDecodeError as err:
        raise ConfigError("the file is not UTF-8 text", path=path) from err
    if path.suffix.lower() == ".json":
        from supervisor.mirrord_config import parse_mirrord_config

        values, warnings = parse_mirrord_config(text, path)
        return ConfigFile(path, values, warnings)
    return ConfigFile(path, parse_config(text, path))


def load_config(path: Path) -> dict[str, Any]:
    """Read and check a config file; return RunOptions field name -> value.

    A mirrord.json's warnings are not returned: use :func:`read_config` to
    show them.
    """
    return read_config(path).values


def parse_config(text: str, path: Path) -> dict[str, Any]:
    """Check the TOML text of the config file at path (see :func:`load_config`)."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message, line = _toml_error_position(str(err))
        if line is None and "end of the file" in message:
            line = len(text.splitlines()) or 1
        raise ConfigError(
            f"not valid TOML: {message}",
            "see https://toml.io for the syntax",
            path=path,
            line=line,
        ) from err

    base = path.parent
    values: dict[str, Any] = {}
    set_by: dict[str, str] = {}  # top-level key -> how the file spelled it

    def take(key: str, value: Any, spelled: str, table: str | None, name: str) -> None:
        spec = TOP_KEYS[key]
        line = _find_line(text, table, name)
        if key in set_by:
            raise ConfigError(
                f"{spelled!r} sets the same thing as {set_by[key]!r}",
                "keep one of them",
                path=path,
                line=line,
            )
        try:
            values[spec.field] = spec.convert(value, base)
        except TypeError:
            raise ConfigError(
                f"{spelled!r} must be {spec.kind}, not {_toml_type(value)}",
                path=path,
                line=line,
            ) from None
        except _BadValue as err:
            raise ConfigError(f"{spelled!r} {err}", path=path, line=line) from None
        except UsageError as err:
            # The shared checks' default hint points at --help; in a file the
            # hint that helps is the config one.
            hint = None if err.hint == UsageError.default_hint else err.hint
            raise ConfigError(
                f"{spelled!r}: {_strip_option(err.message)}", hint, path=path, line=line
            ) from err
        set_by[key] = spelled

    for name, value in data.items():
        if name in TABLES and isinstance(value, dict):
            for sub, subvalue in value.items():
                top = TABLES[name].get(sub)
                if top is None:
                    keys = ", ".join(TABLES[name])
                    raise ConfigError(
                        f"unknown key {sub!r} in [{name}]",
                        f"[{name}] takes {keys}",
                        path=path,
                        line=_find_line(text, name, sub),
                    )
                take(top, subvalue, f"{name}.{sub}", name, sub)
        elif name in TOP_KEYS:
            take(name, value, name, None, name)
        elif name in TABLES:
            raise ConfigError(
                f"{name!r} must be a table",
                f"write [{name}] with {', '.join(TABLES[name])}",
                path=path,
                line=_find_line(text, None, name),
            )
        else:
            raise ConfigError(
                f"unknown key {name!r}",
                _suggest(name),
                path=path,
                line=_find_line(text, None, name),
            )
    return values


def check_config(path: Path) -> ConfigFile:
    """Read path and also check the rules between settings, as `run` would."""
    loaded = read_config(path)
    probe = dict(loaded.values)
    if "target" in probe and "agent_exec" not in probe:
        source = "target"
    else:
        source = "config" if "agent_exec" in probe else "local"
        probe.setdefault("agent_exec", "mirrortrace-agent")
        probe.pop("target", None)
    try:
        opt.build_run_options(["true"], probe, agent_source=source, config_path=path)
    except UsageError as err:
        raise ConfigError(_strip_option(err.message), err.hint, path=path) from err
    return loaded


def describe(values: dict[str, Any]) -> list[str]:
    """One ``key = value`` line per setting, for `mirrortrace config check`."""
    by_field = {spec.field: key for key, spec in TOP_KEYS.items()}
    lines = []
    for field_name, value in values.items():
        if isinstance(value, list):
            shown = ", ".join(f"{v[0]}:{v[1]}" if isinstance(v, tuple) else str(v) for v in value)
        elif isinstance(value, dict):
            shown = ", ".join(f"{name}={text}" for name, text in value.items())
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        lines.append(f"{by_field[field_name]} = {shown}")
    return lines


_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _toml_error_position(message: str) -> tuple[str, int | None]:
    """Split tomllib's "... (at line L, column C)" into text and line."""
    # Python 3.11's TOMLDecodeError has no lineno attribute (3.14 adds one);
    # the position is only in the message.
    match = _POSITION.search(message)
    if match is None:
        return message.replace(" (at end of document)", " at the end of the file"), None
    text = message[: match.start()]
    return f"{text} (column {match.group(2)})", int(match.group(1))


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _bare(key: str) -> str:
    return key.strip().strip("\"'")


def _find_line(text: str, table: str | None, key: str) -> int | None:
    """The 1-based line where key is set in table (None = top level).

    Handles ``[table]`` then ``key = ...``, dotted ``table.key = ...`` and
    inline tables ``table = { key = ... }``. Falls back to the table's own
    line, then to any line mentioning the key.
    """
    current: str | None = None
    key_re = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
    table_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = ".".join(_bare(part) for part in header.group(1).split("."))
            if table is not None and current == table:
                table_line = number
            if table is None and current == key:
                return number
            continue
        if current == table and key_re.match(line):
            return number
        if table is not None and current is None:
            dotted = re.match(
                r"^\s*[\"']?" + re.escape(table) + r"[\"']?\s*\.\s*[\"']?" + re.escape(key), line
            )
            if dotted:
                return number
            inline = re.match(r"^\s*[\"']?" + re.escape(table) + r"[\"']?\s*=\s*\{", line)
            if inline and re.search(r"[{,]\s*[\"']?" + re.escape(key) + r"[\"']?\s*=", line):
                return number
    if table_line is not None:
        return table_line
    for number, line in enumerate(text.splitlines(), start=1):
        if key in line and not line.lstrip().startswith("#"):
            return number
    return None


def describe_value(value: Any, mapping: str = "a table") -> str:
    """How an error names a wrong value: its type, and the value when short.
    `mapping` is what the file format calls a dict (TOML: a table; JSON: an object)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return mapping
    return f"a {type(value).__name__}"


def _toml_type(value: Any) -> str:
    return describe_value(value)


def _strip_option(message: str) -> str:
    # The shared checks name the command-line option ("--port-map: ...");
    # in a file the key is already named, so drop the option prefix.
    return re.sub(r"^(?:--)?[a-z][a-z-]*: ", "", message)


def _suggest(name: str) -> str:
    import difflib

    known = list(TOP_KEYS) + [t for t in TABLES if t not in TOP_KEYS]
    close = difflib.get_close_matches(name.replace("_", "-"), known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known)
