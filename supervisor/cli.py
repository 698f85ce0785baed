"""The mirrortrace command line.

Every command checks all of its input before it starts anything, and every
error the user can fix is a :class:`MirrortraceError` printed as one line,
``mirrortrace: <what>; <what to do>``, with exit status 2 — click's own usage
errors included, which is why the app runs click in non-standalone mode
inside :class:`_Group` instead of letting it print its multi-line boxes.

Startup time counts (``mirrortrace run -- true`` should take well under a
third of a second), so this module imports only typer and the small errors
module at load time; everything else is imported inside the command that
needs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer 0.2x carries its own copy of click and raises its exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # older typer uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

from supervisor.errors import MirrortraceError

LOCAL_AGENT_NOTICE = (
    "mirrortrace: no target or agent configured; using a local agent — "
    "{name} sees this machine's network and files"
)


def _say(line: str) -> None:
    print(f"mirrortrace: {line}", file=sys.stderr, flush=True)


def _usage_line(err: click_errors.UsageError, args: list[str]) -> str:
    if isinstance(err, click_errors.NoSuchOption):
        message = f"no such option: {err.option_name}"
        if err.possibilities:
            message += f" (did you mean {', '.join(sorted(err.possibilities))}?)"
    else:
        message = " ".join(err.format_message().split()).rstrip(".")
        if message[:1].isupper() and not message[1:2].isupper():
            message = message[0].lower() + message[1:]
    if err.ctx is not None:
        where = err.ctx.command_path
    else:
        # click raises some parse errors without a context; name the
        # subcommand from the arguments so the user gets the right --help.
        where = "mirrortrace"
        for arg in args:
            if arg == "--" or not arg.startswith("-"):
                if arg in _COMMANDS:
                    where += f" {arg}"
                break
    return f"{message} (see {where} --help)"


_COMMANDS = ("run", "config", "syscalls", "doctor", "demo", "replay")


def _pass_through(param: Any) -> None:
    """Let typer hand over this parameter's value as click parsed it.

    typer 0.2x coerces every value through a pydantic TypeAdapter, and the
    first one imports pydantic: about 70 ms on every `mirrortrace run`, a
    third of the startup budget. Our values are strings (lists of strings,
    bools) that supervisor.options checks itself, so a pass-through is all
    they need. A typer without this hook is left alone.
    """
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", None) is not None:
        return
    try:
        from typer._coercion import RuntimeParam
    except ImportError:
        return

    class _PassThrough(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

    param._runtime_param = _PassThrough(
        parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
    )


class _PlainParams:
    """Mixin: every parameter (the lazily made --help too) skips typer's coercion."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _pass_through(param)
        return params


def _invoke(main: Any, args: Any, prog_name: str, complete_var: Any, extra: Any) -> int:
    no_args_is_help = getattr(click_errors, "NoArgsIsHelpError", None)
    try:
        result = main(
            args=args,
            prog_name=prog_name,
            complete_var=complete_var,
            standalone_mode=False,
            **extra,
        )
    except MirrortraceError as err:
        _say(str(err))
        return err.exit_status
    except click_errors.UsageError as err:
        if no_args_is_help is not None and isinstance(err, no_args_is_help):
            assert err.ctx is not None
            print(err.ctx.get_help())
            return 2
        _say(_usage_line(err, list(sys.argv[1:] if args is None else args)))
        return 2
    except click_errors.ClickException as err:
        _say(" ".join(err.format_message().split()))
        return err.exit_code
    except typer.Abort:
        print(file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


class _Group(_PlainParams, TyperGroup):
    """Runs click without its standalone error printing, to keep errors to one line."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = _invoke(super().main, args, prog_name or "mirrortrace", complete_var, extra)
        if standalone_mode:
            sys.exit(code)
        return code


class _Command(_PlainParams, TyperCommand):
    pass


class _RunCommand(_Command):
    """A command ending in ``-- COMMAND [ARGS]...``, shown as such in its usage line."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "[OPTIONS]", "[--] COMMAND [ARGS]..."]


class _DemoCommand(_Command):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "[OPTIONS]", "[-- COMMAND [ARGS]...]"]


app = typer.Typer(
    name="mirrortrace",
    cls=_Group,
    help="Run a program as if it ran inside a Kubernetes pod, under a ptrace supervisor.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(
    name="config",
    cls=_Group,
    help="Check config files.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(config_app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"mirrortrace {version('mirrortrace')}")
        except PackageNotFoundError:
            print("mirrortrace (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Run a program as if it ran inside a Kubernetes pod, under a ptrace supervisor."""


_AGENT = "Agent"
_TRAFFIC = "Traffic and files"
_OUTPUT = "Output"

Str = str | None
Strs = list[str] | None


# The cluster options, the same for run, ls and doctor.
NamespaceOpt = Annotated[
    Str, typer.Option("-n", "--namespace", metavar="NS", help="The target's namespace.")
]
ContextOpt = Annotated[
    Str, typer.Option("--context", metavar="CTX", help="The kubeconfig context to use.")
]
KubeconfigOpt = Annotated[
    Path | None, typer.Option("--kubeconfig", metavar="FILE", help="The kubeconfig file.")
]


@app.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[
        Strs,
        typer.Argument(
            metavar="COMMAND",
            show_default=False,
            hidden=True,  # the usage line says it; typer would add "<list[str]>"
        ),
    ] = None,
    agent_exec: Annotated[
        Str,
        typer.Option(
            "--agent-exec",
            metavar="CMD",
            help="Start CMD; its stdin/stdout are the agent channel (env: MIRRORTRACE_AGENT_EXEC).",
        ),
    ] = None,
    target: Annotated[
        Str,
        typer.Option(
            "-t", "--target", help="pod/NAME, deployment/NAME, ... or targetless.", metavar="TARGET"
        ),
    ] = None,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    agent_image: Annotated[
        Str,
        typer.Option(
            "--agent-image", metavar="IMAGE", help="The agent's image for --target runs."
        ),
    ] = None,
    dns: Annotated[
        bool | None,
        typer.Option("--dns/--no-dns", help="Resolve names as in the pod.  [default: dns]"),
    ] = None,
    outgoing: Annotated[
        Str,
        typer.Option(
            metavar="MODE", help="remote|local: where connects leave from.  [default: remote]"
        ),
    ] = None,
    local_cidr: Annotated[
        Strs, typer.Option("--local-cidr", metavar="CIDR", help="Keep these destinations local.")
    ] = None,
    fs: Annotated[
        Str,
        typer.Option(
            metavar="MODE", help="local|read|write: the pod's file system.  [default: read]"
        ),
    ] = None,
    fs_remote: Annotated[
        Strs, typer.Option("--fs-remote", metavar="GLOB", help="Paths always read from the pod.")
    ] = None,
    fs_local: Annotated[
        Strs, typer.Option("--fs-local", metavar="GLOB", help="Paths always kept local.")
    ] = None,
    env: Annotated[
        Str,
        typer.Option(metavar="MODE", help="remote|local|merge: the environment.  [default: merge]"),
    ] = None,
    env_exclude: Annotated[
        Strs,
        typer.Option("--env-exclude", metavar="GLOB", help="Variables not taken from the pod."),
    ] = None,
    incoming: Annotated[
        Str,
        typer.Option(
            metavar="MODE", help="off|mirror|steal: traffic to the pod's ports.  [default: off]"
        ),
    ] = None,
    http_header_filter: Annotated[
        Str,
        typer.Option(
            "--http-header-filter",
            metavar="'NAME: REGEX'",
            help="Take only HTTP requests with a matching header.",
        ),
    ] = None,
    http_path_filter: Annotated[
        Str,
        typer.Option(
            "--http-path-filter",
            metavar="REGEX",
            help="Take only HTTP requests with a matching path.",
        ),
    ] = None,
    port_map: Annotated[
        Strs,
        typer.Option(
            "--port-map",
            metavar="LOCAL:REMOTE",
            help="COMMAND's port LOCAL stands for the pod's REMOTE.",
        ),
    ] = None,
    ui: Annotated[
        Str,
        typer.Option(
            metavar="MODE", help="live|plain|json|none.  [default: live on a terminal, else none]"
        ),
    ] = None,
    events: Annotated[
        Path | None, typer.Option("--events", metavar="FILE", help="Write events as JSON lines.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("-f", "--config", metavar="FILE", help="Config file (default: found)."),
    ] = None,
) -> None:
    """Run COMMAND with its DNS, connects and files satisfied by the agent."""
    from supervisor.options import from_command_line

    warnings: list[str] = []  # what a mirrord.json sets that means nothing here
    options = from_command_line(
        command or [],
        {
            "agent_exec": agent_exec,
            "target": target,
            "namespace": namespace,
            "context": context,
            "kubeconfig": _path(kubeconfig),
            "agent_image": agent_image,
            "dns": dns,
            "outgoing": outgoing,
            "local_cidr": local_cidr,
            "fs": fs,
            "fs_remote": fs_remote,
            "fs_local": fs_local,
            "env": env,
            "env_exclude": env_exclude,
            "incoming": incoming,
            "http_header_filter": http_header_filter,
            "http_path_filter": http_path_filter,
            "port_map": port_map,
            "ui": ui,
            "events": _path(events),
        },
        _path(config),
        warnings=warnings,
    )
    from supervisor.events import notice_text

    for warning in warnings:
        print(notice_text(options.ui, f"mirrortrace: {warning}"), file=sys.stderr)
    if options.agent_source == "local":
        name = os.path.basename(options.command[0])
        print(notice_text(options.ui, LOCAL_AGENT_NOTICE.format(name=name)), file=sys.stderr)
    link: Any
    if options.agent_source == "target":
        from supervisor.k8s_link import DEFAULT_IMAGE, KubeLink, KubeSettings

        assert options.target is not None
        settings = KubeSettings(options.target, options.namespace, options.context,
                                options.kubeconfig, options.agent_image or DEFAULT_IMAGE)
        link = KubeLink(settings, lambda text: print(notice_text(options.ui, text),
                                                     file=sys.stderr))
        link.prepare()  # the cluster work overlaps the engine's start-up
        link.wait_for_client()
    else:
        from supervisor.transport import PipeLink, spawn_agent

        # The agent's interpreter starts while ours imports the engine.
        link = PipeLink(spawn_agent(options.agent_argv))
    from supervisor.runner import run as run_supervised

    raise typer.Exit(run_supervised(options, link))


def _path(value: Any) -> Path | None:
    # A str when typer's coercion is bypassed (see _pass_through).
    return None if value is None else Path(value)


@config_app.command("check", cls=_Command)
def config_check(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The TOML file (or mirrord.json) to check.")
    ],
) -> None:
    """Check a config file; print what it sets, or the first error and its line."""
    from supervisor.config import check_config, describe, resolve_config

    path = resolve_config(Path(file))
    assert path is not None
    loaded = check_config(path)
    print(f"{file}: ok")
    for line in describe(loaded.values):
        print(f"  {line}")
    for warning in loaded.warnings:
        _say(warning)


@app.command(cls=_Command)
def syscalls() -> None:
    """Print the table of trapped syscalls: name, support level, note."""
    try:
        from syscalls.table import TABLE
    except ModuleNotFoundError as err:
        if err.name not in ("syscalls", "syscalls.table"):
            raise
        raise MirrortraceError(
            "the syscall table is not part of this build (syscalls/table.py is missing)",
            "install mirrortrace from a complete checkout",
        ) from err
    width = max((len(name) for name in TABLE), default=0)
    for name in sorted(TABLE):
        entry = TABLE[name]
        support = getattr(entry.support, "value", entry.support)
        note = entry.note or ""
        print(f"{name:<{width}}  {support!s:<8}  {note}".rstrip())


@app.command(cls=_Command)
def doctor(
    namespace: NamespaceOpt = None, context: ContextOpt = None, kubeconfig: KubeconfigOpt = None
) -> None:
    """Check that this machine can run mirrortrace, and say how to fix what is missing."""
    from supervisor.doctor import run_checks

    raise typer.Exit(run_checks(str(kubeconfig) if kubeconfig else None, context, namespace))


@app.command(name="ls", cls=_Command)
def ls(
    namespace: NamespaceOpt = None, context: ContextOpt = None, kubeconfig: KubeconfigOpt = None
) -> None:
    """List the targets in a namespace, as kind/name lines for --target."""
    from supervisor.k8s_access import targets
    from supervisor.k8s_api import connect

    kube = connect(_path(kubeconfig), context)
    for line in targets(kube, namespace or kube.namespace):
        print(line)


@app.command(cls=_DemoCommand, context_settings={"allow_interspersed_args": False})
def demo(
    command: Annotated[
        Strs, typer.Argument(metavar="COMMAND", show_default=False, hidden=True)
    ] = None,
) -> None:
    """Make a throwaway pod in new namespaces and fetch http://web/ from it under mirrortrace.

    With COMMAND, run that instead of the default client (for example
    `mirrortrace demo -- getent hosts web`).
    """
    from supervisor.demo import run_demo

    raise typer.Exit(run_demo(command or None))


@app.command(cls=_Command)
def replay(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The file written by mirrortrace run --events.")
    ],
    summary: Annotated[
        bool, typer.Option("--summary", help="Print only the summary, not the final view.")
    ] = False,
    width: Annotated[
        Str,
        typer.Option(
            "--width", metavar="COLUMNS", help="Columns to fit.  [default: the terminal's, or 100]"
        ),
    ] = None,
) -> None:
    """Show a recorded session again: its final dashboard and summary, from an --events file."""
    from supervisor.replay import make_console
    from supervisor.replay import replay as replay_file

    replay_file(Path(file), make_console(width), live=not summary)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``mirrortrace``."""
    command = typer.main.get_command(app)
    sys.exit(command.main(args=argv, prog_name="mirrortrace", standalone_mode=False))


if __name__ == "__main__":
    main()
