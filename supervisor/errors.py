"""Errors mirrortrace reports to its user.

Every error the user can cause or fix is one of these, and each carries a hint
saying what to do about it. The CLI catches only :class:`MirrortraceError`,
prints ``mirrortrace: <message>; <hint>`` on one line and exits with status 2.
Third-party exceptions (tomllib, subprocess, the kubernetes client) are
translated into this tree at one boundary with ``raise ... from``; errors meant
for the traced program are errno values, never exceptions.

The tree::

    MirrortraceError
    ├── UsageError              a bad option or argument on the command line
    ├── ConfigError             a bad config file (carries path and line)
    ├── AgentError              anything about the agent and its channel
    │   ├── AgentStartError     the agent could not start, or exited before the handshake
    │   ├── AgentLostError      the agent died or the channel closed during a run
    │   └── ChannelProtocolError  the other end does not speak our protocol
    ├── TargetError             a Kubernetes target could not be found or reached
    └── CommandNotFoundError    COMMAND cannot be executed
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AgentError",
    "AgentLostError",
    "AgentStartError",
    "ChannelProtocolError",
    "CommandNotFoundError",
    "ConfigError",
    "MirrortraceError",
    "TargetError",
    "UsageError",
]


class MirrortraceError(Exception):
    """Base of every error mirrortrace shows to its user.

    ``message`` says what went wrong; ``hint`` says what to do about it.
    Subclasses supply a default hint, so ``raise AgentStartError("...")`` is
    already actionable.
    """

    default_hint: str | None = None

    exit_status = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text}; {self.hint}"
        # One line, always: a message built from a subprocess's stderr may
        # carry newlines, and the CLI promises a single line.
        return " ".join(text.split())


class UsageError(MirrortraceError):
    """A bad option or argument on the command line."""

    default_hint = "see mirrortrace run --help"


class ConfigError(MirrortraceError):
    """A bad config file; names the file, and the line when known."""

    default_hint = "fix the file, then check it with: mirrortrace config check FILE"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        path: Path | str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        location = ""
        if self.path is not None:
            location = str(self.path) if line is None else f"{self.path}:{line}"
            location += ": "
        super().__init__(location + message, hint)
        self.reason = message


class AgentError(MirrortraceError):
    """Anything about the agent and the channel to it."""

    default_hint = "check that the agent command works on its own"


class AgentStartError(AgentError):
    """The agent could not start, or exited before the handshake."""

    default_hint = (
        "run the --agent-exec command by hand: it must start mirrortrace-agent "
        "with stdin/stdout as the channel"
    )


class AgentLostError(AgentError):
    """The agent died or the channel closed while COMMAND was running."""

    default_hint = (
        "diverted calls now fail like a broken network; check the pod or the "
        "agent command and run again"
    )


class ChannelProtocolError(AgentError):
    """The other end of the channel does not speak the mirrortrace protocol."""

    default_hint = (
        "the agent command must run mirrortrace-agent of the same version "
        "and print nothing else on stdout"
    )


class TargetError(MirrortraceError):
    """A Kubernetes target could not be found, reached or injected."""

    default_hint = "check the target with: mirrortrace ls -n NAMESPACE, and mirrortrace doctor"


class CommandNotFoundError(MirrortraceError):
    """COMMAND cannot be executed (missing, not executable, bad format).

    Exits 127 like a shell, `env` or `timeout` would, so scripts can tell "no
    such program" from a usage error.
    """

    default_hint = "check the command name and your PATH"
    exit_status = 127
