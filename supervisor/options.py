"""Everything `mirrortrace run` accepts, validated, in one value.

The CLI and the config loader turn text into typed values with the ``parse_*``
and ``check_*`` helpers below (each raises :class:`UsageError` with a sentence
the user can act on); :func:`build_run_options` makes a :class:`RunOptions`
of them and checks the rules that span several options, and
:func:`from_command_line` does all of it for `mirrortrace run`: the command
line over the config file, and where the agent comes from. Nothing
here starts a process or touches the network, so it is safe to run before
anything else: a bad value stops mirrortrace before COMMAND is started.

Path patterns (``fs_remote``, ``fs_local``) are globs (``/etc/app/**``), or,
when they start with ``re:``, a Python regular expression searched for in the
whole absolute path (``re.search``, as mirrord matches its own patterns;
anchor it with ``^...$`` to match all of the path). A mirrord.json's
``feature.fs`` patterns arrive in that form. Environment patterns
(``env_include``, ``env_exclude``) are always globs over variable names.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from supervisor.errors import CommandNotFoundError, UsageError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

AGENT_SOURCES = ("agent-exec", "env", "config", "target", "local")
OUTGOING_MODES = ("remote", "local")
FS_MODES = ("local", "read", "write")
ENV_MODES = ("remote", "local", "merge")
INCOMING_MODES = ("off", "mirror", "steal")
UI_MODES = ("live", "plain", "json", "none")
TARGET_KINDS = ("pod", "deployment", "statefulset", "daemonset", "job")

# An HTTP header name is an RFC 9110 token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# A Kubernetes object name: DNS-1123 subdomain (pods) or label (containers).
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass
class RunOptions:
    """What one `mirrortrace run` was asked to do.

    ``agent_source`` says which rule chose the agent: ``agent-exec`` (the
    flag), ``env`` (MIRRORTRACE_AGENT_EXEC), ``target`` (a Kubernetes target,
    from the flag or the config file), ``config`` (``agent-exec`` in the
    config file) or ``local``. For every source but ``target``,
    ``agent_exec`` holds the command to start; for ``local`` it is this
    Python running ``-m agent_image``.
    """

    command: list[str]
    agent_exec: str | None = None
    agent_source: str = "local"
    config_path: Path | None = None
    target: str | None = None
    namespace: str | None = None
    context: str | None = None
    kubeconfig: Path | None = None
    agent_image: str | None = None  # the agent's image for --target runs (default: pinned)
    dns: bool = True
    outgoing: str = "remote"
    local_cidrs: list[IPNetwork] = field(default_factory=list)
    fs: str = "read"
    fs_remote: list[str] = field(default_factory=list)
    fs_local: list[str] = field(default_factory=list)
    env: str = "merge"
    env_exclude: list[str] = field(default_factory=list)
    # Globs: when non-empty, only matching names are taken from the pod.
    env_include: list[str] = field(default_factory=list)
    # Set last, over the pod's and this machine's variables alike.
    env_override: dict[str, str] = field(default_factory=dict)
    incoming: str = "off"
    http_header_filter: str | None = None
    http_path_filter: str | None = None
    port_map: list[tuple[int, int]] = field(default_factory=list)
    ui: str = "none"
    events_file: Path | None = None

    @property
    def agent_argv(self) -> list[str]:
        """The agent command split like a shell would (empty for a target)."""
        return shlex.split(self.agent_exec) if self.agent_exec else []

    def validate(self) -> RunOptions:
        """Check every field and the rules between them; return self."""
        if not self.command:
            raise UsageError(
                "missing COMMAND",
                "usage: mirrortrace run [OPTIONS] -- COMMAND [ARGS...]",
            )
        check_choice("agent source", self.agent_source, AGENT_SOURCES)
        check_choice("--outgoing", self.outgoing, OUTGOING_MODES)
        check_choice("--fs", self.fs, FS_MODES)
        check_choice("--env", self.env, ENV_MODES)
        check_choice("--incoming", self.incoming, INCOMING_MODES)
        check_choice("--ui", self.ui, UI_MODES)
        if self.agent_source == "target":
            if not self.target:
                raise UsageError("agent source is a target but no target is set")
            check_target(self.target)
        elif self.agent_exec is None:
            raise UsageError(f"agent source {self.agent_source} needs an agent command")
        else:
            check_agent_exec(self.agent_exec)
        if self.http_header_filter is not None:
            parse_header_filter(self.http_header_filter)
        if self.http_path_filter is not None:
            check_regex("--http-path-filter", self.http_path_filter)
        filters = self.http_header_filter is not None or self.http_path_filter is not None
        if filters and self.incoming == "off":
            raise UsageError(
                "an HTTP filter only applies to incoming traffic, and --incoming is off",
                "add --incoming steal (or mirror)",
            )
        for pattern in self.fs_remote:
            check_path_pattern("--fs-remote", pattern)
        for pattern in self.fs_local:
            check_path_pattern("--fs-local", pattern)
        env_globs = (("--env-exclude", self.env_exclude), ("env-include", self.env_include))
        for option, globs in env_globs:
            if not all(globs):
                raise UsageError(f"an empty pattern in {option}")
        for name, value in self.env_override.items():
            check_env_name("env-override", name)
            if not isinstance(value, str) or "\0" in value:
                raise UsageError(f"env-override: the value of {name} must be text without NUL")
        if self.events_file is not None:
            check_events_file(self.events_file)
        return self


def build_run_options(
    command: list[str],
    values: Mapping[str, Any],
    *,
    agent_source: str,
    config_path: Path | None = None,
) -> RunOptions:
    """Make validated RunOptions from already-parsed values.

    ``values`` is keyed by RunOptions field names; keys that are absent or
    None keep the defaults. Unknown keys are a bug in the caller.
    """
    known = {f.name for f in fields(RunOptions)}
    unknown = set(values) - known
    if unknown:
        raise TypeError(f"unknown RunOptions fields: {sorted(unknown)}")
    given = {k: v for k, v in values.items() if v is not None}
    options = RunOptions(
        command=list(command), agent_source=agent_source, config_path=config_path, **given
    )
    return options.validate()


def from_command_line(
    command: list[str],
    cli: Mapping[str, Any],
    config: Path | None,
    *,
    warnings: list[str] | None = None,
) -> RunOptions:
    """Merge the command line over the config file into validated RunOptions.

    ``cli`` maps the parameter names of `mirrortrace run` (``local_cidr``,
    ``events``, ...) to their raw values, None (or []) when not given;
    ``config`` is the --config path, if any, else the config is searched
    for. Nothing is started here: a bad value anywhere is a UsageError or a
    ConfigError before COMMAND or the agent runs. The config file's warnings
    (what a mirrord.json sets that has no meaning here) are appended to
    ``warnings`` once everything has been checked, so an error stays the only
    line printed.
    """
    from supervisor.config import read_config, resolve_config

    if not command:
        raise UsageError("missing COMMAND", "usage: mirrortrace run [OPTIONS] -- COMMAND [ARGS...]")
    parse_list = {
        "local_cidr": ("local_cidrs", parse_cidr),
        "port_map": ("port_map", parse_port_map),
        "fs_remote": ("fs_remote", lambda v: check_path_pattern("--fs-remote", v)),
        "fs_local": ("fs_local", lambda v: check_path_pattern("--fs-local", v)),
        "env_exclude": ("env_exclude", None),
    }
    choices = {
        "outgoing": OUTGOING_MODES,
        "fs": FS_MODES,
        "env": ENV_MODES,
        "incoming": INCOMING_MODES,
        "ui": UI_MODES,
    }
    given: dict[str, Any] = {}
    for key, value in cli.items():
        # None means "not on the command line"; an empty list from typer too.
        if value is None or value == []:
            continue
        if key in parse_list:
            field, parse = parse_list[key]
            given[field] = [parse(v) for v in value] if parse else list(value)
        elif key in choices:
            given[key] = check_choice(f"--{key}", value, choices[key])
        elif key == "agent_exec":
            given[key] = check_agent_exec(value)
        elif key == "target":
            given[key] = check_target(value)
        elif key == "http_header_filter":
            parse_header_filter(value)
            given[key] = value
        elif key == "http_path_filter":
            given[key] = check_regex("--http-path-filter", value)
        elif key == "events":
            given["events_file"] = value
        else:
            given[key] = value

    config_path = resolve_config(config)
    loaded = read_config(config_path) if config_path is not None else None
    from_file = loaded.values if loaded is not None else {}
    values = {**from_file, **given}

    # Where the agent comes from: the first rule that applies (CONTRACT.md).
    env_exec = os.environ.get("MIRRORTRACE_AGENT_EXEC", "").strip()
    if "agent_exec" in given and "target" in given:
        raise UsageError("give --agent-exec or --target, not both")
    if "agent_exec" in given:
        source = "agent-exec"
    elif env_exec:
        source = "env"
        try:
            values["agent_exec"] = check_agent_exec(env_exec)
        except UsageError as err:
            raise UsageError(
                err.message.replace("--agent-exec", "MIRRORTRACE_AGENT_EXEC"), err.hint
            ) from None
    elif "target" in given:
        source = "target"
    elif "agent_exec" in from_file:
        source = "config"
    elif "target" in from_file:
        source = "target"
    else:
        source = "local"
        from supervisor.transport import local_agent_argv

        values["agent_exec"] = shlex.join(local_agent_argv())
    if source == "target":
        values["agent_exec"] = None
    else:
        values["target"] = None
    if values.get("ui") is None:
        values["ui"] = "live" if sys.stderr.isatty() else "none"

    options = build_run_options(command, values, agent_source=source, config_path=config_path)
    _check_command(command[0])
    if warnings is not None and loaded is not None:
        warnings.extend(loaded.warnings)
    return options


def _check_command(program: str) -> None:
    """Fail before starting anything if COMMAND cannot be executed."""
    if "/" in program:
        if not os.path.exists(program):
            raise CommandNotFoundError(f"{program}: no such file")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise CommandNotFoundError(
                f"{program}: not an executable file", f"make it executable: chmod +x {program}"
            )
    elif shutil.which(program) is None:
        raise CommandNotFoundError(f"{program}: command not found")


def check_choice(option: str, value: str, choices: Iterable[str]) -> str:
    """Return value if it is one of choices, else raise UsageError naming them."""
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(
            f"{option} must be one of {', '.join(choices)}, not {value!r}",
            f"for example: {option} {choices[0]}" if option.startswith("--") else None,
        )
    return value


def parse_bool(option: str, value: str | bool) -> bool:
    """Accept a bool, or yes/no/true/false/on/off/1/0 text."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{option} must be true or false, not {value!r}")


def parse_cidr(text: str) -> IPNetwork:
    """Parse ``10.0.0.0/8``, ``fd00::/8`` or a bare address (a /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as err:
        hint = "write an address or a network, like 10.0.0.0/8 or 192.168.1.5"
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise UsageError(f"--local-cidr: {text!r} is not a network ({err})", hint) from None
        raise UsageError(
            f"--local-cidr: {text!r} has host bits set", f"did you mean {loose}?"
        ) from None


def parse_port_map(text: str) -> tuple[int, int]:
    """Parse ``LOCAL:REMOTE`` into two ports in 1..65535."""
    hint = "write LOCAL:REMOTE, for example --port-map 8080:80"
    local, sep, remote = text.strip().partition(":")
    if not sep:
        raise UsageError(f"--port-map: {text!r} is not LOCAL:REMOTE", hint)
    ports = []
    for part in (local, remote):
        part = part.strip()
        if not part.isdigit():
            raise UsageError(f"--port-map: {part!r} in {text!r} is not a port number", hint)
        port = int(part)
        if not 1 <= port <= 65535:
            raise UsageError(f"--port-map: port {port} in {text!r} is not in 1-65535", hint)
        ports.append(port)
    return ports[0], ports[1]


def check_regex(option: str, pattern: str) -> str:
    """Return pattern if it compiles as a Python regular expression."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise UsageError(
            f"{option}: {pattern!r} is not a valid regular expression ({err})",
            "escape special characters such as ( [ { with a backslash",
        ) from None
    return pattern


def check_path_pattern(option: str, pattern: str) -> str:
    """Check a path pattern: a glob, or ``re:REGEX`` (see the module docstring)."""
    if not pattern:
        raise UsageError(f"{option}: an empty pattern", "give a glob such as /etc/app/**")
    if pattern.startswith("re:"):
        regex = pattern[3:]
        if not regex:
            raise UsageError(f"{option}: {pattern!r} has no regular expression after re:")
        check_regex(option, regex)
    return pattern


def check_env_name(option: str, name: str) -> str:
    """Check an environment variable name: not empty, no ``=`` and no NUL."""
    if not name or "=" in name or "\0" in name:
        raise UsageError(
            f"{option}: {name!r} is not an environment variable name",
            "a name is not empty and has no '=' in it",
        )
    return name


def parse_header_filter(text: str) -> tuple[str, re.Pattern[str]]:
    """Parse ``Name: regex`` into the header name and the compiled regex."""
    name, sep, pattern = text.partition(":")
    name, pattern = name.strip(), pattern.strip()
    hint = "write 'Name: regex', for example --http-header-filter 'x-user: alice'"
    if not sep or not name:
        raise UsageError(f"--http-header-filter: {text!r} is not 'Name: regex'", hint)
    if not _HEADER_NAME.match(name):
        raise UsageError(f"--http-header-filter: {name!r} is not an HTTP header name", hint)
    check_regex("--http-header-filter", pattern)
    return name, re.compile(pattern)


def check_target(text: str) -> str:
    """Check a target: KIND/NAME[/container/CNAME] or ``targetless``."""
    if text == "targetless":
        return text
    hint = (
        "write KIND/NAME or KIND/NAME/container/CNAME with KIND one of "
        f"{', '.join(TARGET_KINDS)}, or targetless"
    )
    parts = text.split("/")
    if len(parts) not in (2, 4) or parts[0] not in TARGET_KINDS:
        raise UsageError(f"--target: {text!r} is not a target", hint)
    if len(parts) == 4 and parts[2] != "container":
        raise UsageError(f"--target: {text!r} is not a target", hint)
    for name in parts[1::2]:
        if not _K8S_NAME.match(name) or len(name) > 253:
            raise UsageError(f"--target: {name!r} in {text!r} is not a Kubernetes name", hint)
    return text


def check_agent_exec(text: str) -> str:
    """Check that an agent command splits into at least one word."""
    try:
        argv = shlex.split(text)
    except ValueError as err:
        raise UsageError(
            f"--agent-exec: cannot split {text!r} like a shell would ({err})",
            "check the quotes in the agent command",
        ) from None
    if not argv:
        raise UsageError(
            "--agent-exec is empty",
            "give a command such as 'kubectl exec -i POD -- mirrortrace-agent'",
        )
    return text


def check_events_file(path: Path) -> Path:
    """Check that the --events file can be created (its folder exists)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--events: {path} is a directory", "give a file name")
    if not parent.is_dir():
        raise UsageError(
            f"--events: folder {parent} does not exist", "create it or give another path"
        )
    return path
