"""mirrord config files (``mirrord.json``), read as mirrortrace settings.

Teams moving from mirrord bring their ``.mirrord/mirrord.json``. A ``.json``
file given to ``--config`` (or found as ``.mirrord/mirrord.json``, see
:mod:`supervisor.config`) is read here: each key that means something in
mirrortrace gives the value the equivalent TOML would give, and every other
key is named in one warning line, ``mirrord.json: ignoring <dotted.key>
(<why>)``; nothing is dropped silently. A mapped key whose value is kept only
in part gets a line ``mirrord.json: <dotted.key>: <what was taken>``. Bad
JSON, a wrong type or a bad value for a mapped key is a :class:`ConfigError`
naming the file, the dotted key and its line, like the TOML errors.

The mapped keys (everything else is ignored with a warning: one per unknown
top-level or ``feature`` key, one per unknown key inside a mapped section)::

    mirrord.json                                   mirrortrace (TOML)
    ---------------------------------------------  ---------------------------
    target = "KIND/NAME[/container/C]"             target (KIND: pod, deployment
             or "targetless"                         or deploy, statefulset,
                                                     daemonset, job)
    target.path  (a string as above, or an         target
        object {"deployment": NAME, "container": C})
    target.namespace                               namespace
    kube_context                                   context
    kubeconfig                                     kubeconfig (relative to the file)
    feature.env = true / false                     env = "merge" / "local"
    feature.env.include, .exclude                  env-include, env-exclude
        ("A;B_*" or a list of globs)
    feature.env.override {NAME: VALUE}             env-override
    feature.fs = MODE, feature.fs.mode             fs: local, read, write;
                                                     "localwithoverrides" -> read
    feature.fs.read_write, .read_only (regexes)    fs-remote = ["re:REGEX", ...]
    feature.fs.local (regexes)                     fs-local = ["re:REGEX", ...]
    feature.network.outgoing = true / false        outgoing = "remote" / "local"
    feature.network.outgoing.tcp, .udp             both false: outgoing = "local"
    feature.network.outgoing.filter.local          local-cidr (IP or CIDR entries;
                                                     a port or protocol is dropped)
    feature.network.dns = true / false, .enabled   dns
    feature.network.incoming = MODE, .mode         incoming: off, mirror, steal
                                                     (an object without mode: mirror)
    feature.network.incoming.http_filter           http-header-filter,
        .header_filter, .path_filter                 http-path-filter
    feature.network.incoming.port_mapping          port-map ("L:R" for each [L, R])
        [[L, R], ...]

``"$schema"`` is skipped without a warning (it only helps editors). A null
value for a mapped key means "not set", as in mirrord. Where the two tools'
defaults differ, the file keeps mirrortrace's: mirrord mirrors incoming
traffic by default, mirrortrace does not until ``incoming`` is set.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor import options as opt
from supervisor.config import _strip_option, describe_value, path_from_file
from supervisor.errors import ConfigError, UsageError

Key = tuple[str | int, ...]

FS_MODES = {"local": "local", "read": "read", "write": "write", "localwithoverrides": "read"}
TARGET_KINDS = {
    "pod": "pod",
    "deployment": "deployment",
    "deploy": "deployment",
    "statefulset": "statefulset",
    "stateful_set": "statefulset",
    "daemonset": "daemonset",
    "daemon_set": "daemonset",
    "job": "job",
}
# mirrord can target these; mirrortrace cannot (yet).
OTHER_TARGET_KINDS = (
    "rollout",
    "cronjob",
    "cron_job",
    "service",
    "replicaset",
    "replica_set",
)

_NO_MEANING = "it has no meaning in mirrortrace"
_NO_EQUIVALENT = "mirrortrace has no equivalent"
# Why a key is ignored, when there is more to say than _NO_MEANING.
_WHY = {
    "agent": "mirrortrace starts its own agent: set agent-exec or target instead",
    "operator": "mirrortrace has no operator",
    "skip_processes": "mirrortrace traces COMMAND and every process it starts",
    "skip_build_tools": "mirrortrace traces COMMAND and every process it starts",
    "skip_extra_build_tools": "mirrortrace traces COMMAND and every process it starts",
    "telemetry": "mirrortrace sends no telemetry",
    "feature.copy_target": "mirrortrace does not copy targets",
    "feature.env.unset": "use env-exclude to keep a name local instead",
    "feature.fs.not_found": "mirrortrace has no not-found list: a path that is not "
    "kept local is looked up in the pod",
    "feature.network.dns.filter": "mirrortrace resolves every name as the pod does, or none",
    "feature.network.outgoing.filter.remote": "mirrortrace has no remote-only list: every "
    "destination not kept local is remote already",
    "feature.network.outgoing.ignore_localhost": "loopback connects always stay local",
}


def parse_mirrord_config(text: str, path: Path) -> tuple[dict[str, Any], list[str]]:
    """Map the JSON text of the mirrord config at path to RunOptions values.

    Returns the values (RunOptions field name -> value, as
    :func:`supervisor.config.parse_config` gives) and the warning lines.
    """
    text = text.removeprefix("\ufeff")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"not valid JSON: {err.msg} (column {err.colno})",
            "check the commas, quotes and brackets there",
            path=path,
            line=err.lineno,
        ) from err
    except RecursionError as err:  # json gives up on very deep nesting this way
        raise ConfigError("not valid JSON: nested too deeply", path=path) from err
    reader = _Reader(text, path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"a mirrord config must be a JSON object {{...}}, not {_json_type(data)}",
            path=path,
            line=1,
        )
    if reader.duplicates:
        key, line = reader.duplicates[0]
        raise ConfigError(
            f"{_dotted(key)!r} is set twice", "keep one of them", path=path, line=line
        )
    reader.section((), data, _TOP)
    return reader.values, reader.warnings


Handler = Callable[["_Reader", Key, Any], None]


class _Reader:
    """The state of one file's mapping: its values, warnings and key lines."""

    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        self.lines, self.duplicates = _key_lines(text)
        self.values: dict[str, Any] = {}
        self.warnings: list[str] = []

    def section(self, key: Key, data: dict[str, Any], handlers: dict[str, Handler]) -> None:
        """Map each key of an object with its handler; ignore the others."""
        for name, value in data.items():
            handler = handlers.get(name)
            if handler is None:
                if not (key == () and name == "$schema"):
                    self.ignore((*key, name))
            elif value is not None:
                handler(self, (*key, name), value)

    def set(self, field: str, value: Any) -> None:
        self.values[field] = value

    def ignore(self, key: Key, why: str | None = None) -> None:
        dotted = _dotted(key)
        if why is None:
            plain = ".".join(str(k) for k in key if isinstance(k, str))
            default = _NO_MEANING if len(key) <= 2 else _NO_EQUIVALENT
            why = _WHY.get(plain, default)
        self.warnings.append(f"{self.path.name}: ignoring {dotted} ({why})")

    def note(self, key: Key, text: str) -> None:
        self.warnings.append(f"{self.path.name}: {_dotted(key)}: {text}")

    def line(self, key: Key) -> int | None:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None

    def error(self, key: Key, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{_dotted(key)!r} {message}", hint, path=self.path, line=self.line(key))

    def wrong_type(self, key: Key, value: Any, kind: str) -> ConfigError:
        return self.error(key, f"must be {kind}, not {_json_type(value)}")

    def check(self, key: Key, check: Callable[..., Any], *args: Any) -> Any:
        """Run one of the shared options checks; its UsageError names the key."""
        try:
            return check(*args)
        except UsageError as err:
            hint = None if err.hint == UsageError.default_hint else err.hint
            raise ConfigError(
                f"{_dotted(key)!r}: {_strip_option(err.message)}",
                hint,
                path=self.path,
                line=self.line(key),
            ) from None

    def string(self, key: Key, value: Any) -> str:
        if not isinstance(value, str):
            raise self.wrong_type(key, value, "a string")
        return value

    def boolean(self, key: Key, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.wrong_type(key, value, "true or false")
        return value

    def object(self, key: Key, value: Any, kind: str = "an object") -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.wrong_type(key, value, kind)
        return value

    def strings(self, key: Key, value: Any, split: str | None = None) -> list[str]:
        """A string or a list of strings (a string split at ``split``, if given)."""
        if isinstance(value, str):
            items = value.split(split) if split else [value]
        elif isinstance(value, list) and all(isinstance(i, str) for i in value):
            items = value
        else:
            raise self.wrong_type(key, value, "a string or a list of strings")
        return [i.strip() for i in items if i.strip()] if split else list(items)

    def mode(self, key: Key, value: Any, modes: dict[str, str]) -> str:
        text = self.string(key, value)
        mode = modes.get(text.lower())
        if mode is None:
            raise self.error(key, f"must be one of {', '.join(modes)}, not {text!r}")
        return mode


# Top level and target


def _target(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, str):
        _target_path(r, key, value)
        return
    data = r.object(key, value, "a string or an object")
    r.section(key, data, {"path": _target_path, "namespace": _namespace})


def _target_path(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, dict):
        _target_object(r, key, value)
        return
    text = r.string(key, value)
    if text == "targetless":
        r.set("target", text)
        return
    kind, _, rest = text.partition("/")
    if kind.lower() in OTHER_TARGET_KINDS:
        r.ignore(key, f"mirrortrace cannot target a {kind.lower()}")
        return
    kind = TARGET_KINDS.get(kind.lower(), kind)
    r.set("target", r.check(key, opt.check_target, f"{kind}/{rest}" if rest else kind))


def _target_object(r: _Reader, key: Key, data: dict[str, Any]) -> None:
    """``{"deployment": "web", "container": "app"}`` and the like."""
    kinds = [name for name in data if name in TARGET_KINDS or name in OTHER_TARGET_KINDS]
    if len(kinds) != 1:
        raise r.error(
            key,
            'must name one kind of target, like {"deployment": "web"}',
            f"kinds: {', '.join(TARGET_KINDS)}",
        )
    (kind,) = kinds
    if kind in OTHER_TARGET_KINDS:
        r.ignore(key, f"mirrortrace cannot target a {kind.replace('_', '')}")
        return
    text = f"{TARGET_KINDS[kind]}/{r.string((*key, kind), data[kind])}"
    for name, value in data.items():
        if name == "container" and value is not None:
            text += f"/container/{r.string((*key, name), value)}"
        elif name not in (kind, "container"):
            r.ignore((*key, name))
    r.set("target", r.check(key, opt.check_target, text))


def _namespace(r: _Reader, key: Key, value: Any) -> None:
    r.set("namespace", r.string(key, value))


def _context(r: _Reader, key: Key, value: Any) -> None:
    r.set("context", r.string(key, value))


def _kubeconfig(r: _Reader, key: Key, value: Any) -> None:
    text = r.string(key, value)
    if not text:
        raise r.error(key, "is empty", "give the path of a kubeconfig file")
    r.set("kubeconfig", path_from_file(text, r.path.parent))


def _feature(r: _Reader, key: Key, value: Any) -> None:
    r.section(key, r.object(key, value), {"env": _env, "fs": _fs, "network": _network})


# feature.env


def _env(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, bool):
        r.set("env", "merge" if value else "local")
        return
    data = r.object(key, value, "true, false or an object")
    r.section(key, data, {"include": _env_globs, "exclude": _env_globs, "override": _env_override})


def _env_globs(r: _Reader, key: Key, value: Any) -> None:
    # mirrord writes several names in one string, separated by ";".
    globs = r.strings(key, value, split=";")
    if globs:
        r.set(f"env_{key[-1]}", globs)


def _env_override(r: _Reader, key: Key, value: Any) -> None:
    data = r.object(key, value, "an object of strings")
    override = {}
    for name, text in data.items():
        r.check((*key, name), opt.check_env_name, "env-override", name)
        override[name] = r.string((*key, name), text)
    if override:
        r.set("env_override", override)


# feature.fs


def _fs(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, str):
        _fs_mode(r, key, value)
        return
    data = r.object(key, value, "a mode string or an object")
    patterns: dict[str, list[str]] = {}

    def regexes(r: _Reader, key: Key, value: Any) -> None:
        # mirrord's patterns are regular expressions searched for in the path;
        # mirrortrace's "re:" patterns mean exactly that (supervisor/options.py).
        found = []
        for i, regex in enumerate(r.strings(key, value)):
            found.append(r.check((*key, i), opt.check_path_pattern, "pattern", f"re:{regex}"))
        patterns[str(key[-1])] = found

    r.section(
        key,
        data,
        {"mode": _fs_mode, "read_write": regexes, "read_only": regexes, "local": regexes},
    )
    remote = patterns.get("read_write", []) + patterns.get("read_only", [])
    if remote:
        r.set("fs_remote", remote)
    if patterns.get("local"):
        r.set("fs_local", patterns["local"])


def _fs_mode(r: _Reader, key: Key, value: Any) -> None:
    mode = r.mode(key, value, FS_MODES)
    if value.lower() == "localwithoverrides":
        r.note(
            key,
            '"localwithoverrides" is taken as "read" (mirrortrace\'s default rules '
            "already keep local what exists locally)",
        )
    r.set("fs", mode)


# feature.network


def _network(r: _Reader, key: Key, value: Any) -> None:
    handlers = {"outgoing": _outgoing, "dns": _dns, "incoming": _incoming}
    r.section(key, r.object(key, value), handlers)


def _outgoing(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, bool):
        r.set("outgoing", "remote" if value else "local")
        return
    data = r.object(key, value, "true, false or an object")
    diverted: dict[str, bool] = {}

    def protocol(r: _Reader, key: Key, value: Any) -> None:
        diverted[str(key[-1])] = r.boolean(key, value)

    r.section(key, data, {"tcp": protocol, "udp": protocol, "filter": _outgoing_filter})
    if diverted.get("tcp") is False and diverted.get("udp") is False:
        r.set("outgoing", "local")
        return
    for name, on in diverted.items():
        if not on:
            r.ignore((*key, name), "mirrortrace diverts TCP and UDP alike")


def _outgoing_filter(r: _Reader, key: Key, value: Any) -> None:
    r.section(key, r.object(key, value), {"local": _local_cidrs})


# mirrord's filter entries: [protocol://]{name|address|subnet}[:port]
_PROTOCOL = re.compile(r"^[a-z]+://", re.IGNORECASE)


def _local_cidrs(r: _Reader, key: Key, value: Any) -> None:
    cidrs = []
    for i, entry in enumerate(r.strings(key, value)):
        address, dropped = _split_filter_entry(entry)
        if not address:
            r.ignore((*key, i), f"{entry!r} names no address; local-cidr keeps addresses local")
            continue
        try:
            network = ipaddress.ip_network(address, strict=False)
        except ValueError:
            r.ignore((*key, i), f"{entry!r} is a host name; local-cidr takes addresses only")
            continue
        if str(network) != address and "/" in address:
            dropped.append("host bits")
        if dropped:
            r.note(
                (*key, i),
                f"{entry!r} is taken as {network} (ignoring the {' and '.join(dropped)}: "
                "local-cidr keeps every port of a network local)",
            )
        cidrs.append(network)
    if cidrs:
        r.set("local_cidrs", cidrs)


def _split_filter_entry(entry: str) -> tuple[str, list[str]]:
    """The address part of a mirrord filter entry, and the parts dropped from it."""
    dropped = []
    text = entry.strip()
    if _PROTOCOL.match(text):
        text = _PROTOCOL.sub("", text)
        dropped.append("protocol")
    port = ""
    if text.startswith("["):  # [v6 address or subnet]:port
        text, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:  # v4 address or name:port (a v6 address has several)
        text, port = text.split(":")
    if port:
        dropped.append("port")
    return text.strip(), dropped


def _dns(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, bool):
        r.set("dns", value)
        return
    data = r.object(key, value, "true, false or an object")
    r.section(key, data, {"enabled": lambda r, key, value: r.set("dns", r.boolean(key, value))})


_INCOMING_MODES = {mode: mode for mode in opt.INCOMING_MODES}


def _incoming(r: _Reader, key: Key, value: Any) -> None:
    if isinstance(value, str):
        r.set("incoming", r.mode(key, value, _INCOMING_MODES))
        return
    data = r.object(key, value, "a mode string or an object")
    # An incoming object without a mode mirrors, as in mirrord.
    r.set("incoming", "mirror")
    r.section(
        key,
        data,
        {
            "mode": lambda r, key, value: r.set("incoming", r.mode(key, value, _INCOMING_MODES)),
            "http_filter": _http_filter,
            # mirrord's older spelling: {"filter": "Name: regex", "ports": [...]}
            "http_header_filter": lambda r, key, value: r.section(
                key, r.object(key, value), {"filter": _header_filter}
            ),
            "port_mapping": _port_mapping,
        },
    )


def _http_filter(r: _Reader, key: Key, value: Any) -> None:
    handlers = {"header_filter": _header_filter, "path_filter": _path_filter}
    r.section(key, r.object(key, value), handlers)


def _header_filter(r: _Reader, key: Key, value: Any) -> None:
    # mirrord matches one regex against the "Name: value" line; a leading ^
    # only anchors the name, which mirrortrace compares whole, so it goes.
    text = r.string(key, value).strip().removeprefix("^")
    r.check(key, opt.parse_header_filter, text)
    r.set("http_header_filter", text)


def _path_filter(r: _Reader, key: Key, value: Any) -> None:
    regex = r.string(key, value)
    r.set("http_path_filter", r.check(key, opt.check_regex, "--http-path-filter", regex))


def _port_mapping(r: _Reader, key: Key, value: Any) -> None:
    if not isinstance(value, list):
        raise r.wrong_type(key, value, "a list of [local, remote] port pairs")
    ports = []
    for i, pair in enumerate(value):
        if isinstance(pair, str):
            text = pair
        elif (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) for p in pair)
        ):
            text = f"{pair[0]}:{pair[1]}"
        else:
            raise r.wrong_type((*key, i), pair, "a [local, remote] pair of port numbers")
        ports.append(r.check((*key, i), opt.parse_port_map, text))
    if ports:
        r.set("port_map", ports)


_TOP: dict[str, Handler] = {
    "target": _target,
    "kube_context": _context,
    "kubeconfig": _kubeconfig,
    "feature": _feature,
}


# Positions


def _key_lines(text: str) -> tuple[dict[Key, int], list[tuple[Key, int]]]:
    """The line of every key (and list item) in valid JSON text, and repeated keys.

    json keeps no positions, so this walks the text once more, tracking the
    path from the root: each open object's current key, each list's index.
    """
    lines: dict[Key, int] = {}
    duplicates: list[tuple[Key, int]] = []
    # One frame per open container: [current key or index, expecting, seen keys]
    # where expecting is True before an object's key or a list's next item.
    stack: list[list[Any]] = []
    kinds: list[str] = []
    line, i, n = 1, 0, len(text)

    def path() -> Key:
        return tuple(frame[0] for frame in stack)

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c in " \t\r:":
            pass
        elif c == ",":
            if kinds[-1] == "list":
                stack[-1][0] += 1
            stack[-1][1] = True
        elif c in "}]":
            stack.pop()
            kinds.pop()
        else:
            if stack and kinds[-1] == "list" and stack[-1][1]:
                lines.setdefault(path(), line)
                stack[-1][1] = False
            if c == '"':
                end = i + 1
                while text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                if stack and kinds[-1] == "object" and stack[-1][1]:
                    name = json.loads(text[i : end + 1])
                    stack[-1][0], stack[-1][1] = name, False
                    if name in stack[-1][2]:
                        duplicates.append((path(), line))
                    stack[-1][2].add(name)
                    lines.setdefault(path(), line)
                i = end
            elif c == "{":
                stack.append([None, True, set()])
                kinds.append("object")
            elif c == "[":
                stack.append([0, True, None])
                kinds.append("list")
        i += 1
    return lines, duplicates


def _dotted(key: Key) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _json_type(value: Any) -> str:
    return describe_value(value, mapping="an object")
