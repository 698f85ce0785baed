"""`mirrortrace run`: put the pieces together in the one order that loses nothing.

1. Resolve COMMAND and build the seccomp filter (bad input fails here, exit 2,
   before anything starts).
2. Fork COMMAND's process while we are still single-threaded; it waits on a
   pipe. Seize it (PTRACE_O_EXITKILL: if we die, it dies).
3. Start the agent and shake hands. If that fails COMMAND is told to quit
   without ever having run, and the error is one line, exit 2.
4. Say go: the child installs the filter and execs COMMAND; an exec failure
   comes back over a close-on-exec pipe.
5. Trace until every tracee is gone; return COMMAND's status (128+N for a
   signal), like a shell would.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

from supervisor import kernel as k
from supervisor.display import Display
from supervisor.environment import describe_env, encode_environ, parse_environ, resolve_env
from supervisor.errors import CommandNotFoundError, MirrortraceError
from supervisor.events import make_bus
from supervisor.fs_policy import FsPolicy
from supervisor.options import RunOptions
from supervisor.seccomp import TrapRule, build_filter, install_filter
from supervisor.session import Session
from supervisor.tracer import Tracer
from supervisor.transport import AgentLink
from syscalls.table import TABLE

SEIZE_OPTIONS = (
    k.PTRACE_O_EXITKILL
    | k.PTRACE_O_TRACESECCOMP
    | k.PTRACE_O_TRACECLONE
    | k.PTRACE_O_TRACEFORK
    | k.PTRACE_O_TRACEVFORK
    | k.PTRACE_O_TRACEEXEC
    | k.PTRACE_O_TRACESYSGOOD
)
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_IGNORED = (signal.SIGINT, signal.SIGQUIT)  # the terminal sends them to COMMAND too


AT_EMPTY_PATH = 0x1000


def build_program() -> tuple[bytes, bytes, dict[int, Any]]:
    """The seccomp filters and the nr -> handler map, all from syscalls.table.

    The first filter is installed before COMMAND starts; the second (the table's
    pod_only calls) is added to a process when it first uses a pod path.
    """
    rules: dict[int, TrapRule] = {}
    later: dict[int, TrapRule] = {}
    handlers: dict[int, Any] = {}
    for name, entry in TABLE.items():
        nr = k.SYSCALL_NUMBERS[name]
        if entry.refuse is not None:
            rules[nr] = TrapRule("errno", errno=entry.refuse)
            continue
        handlers[nr] = entry.handler
        if entry.pod_only:
            later[nr] = TrapRule("trace")
        elif entry.empty_path_arg is not None:
            rules[nr] = TrapRule("trace", only_if_bits=(entry.empty_path_arg, AT_EMPTY_PATH,
                                                        False))
            later[nr] = TrapRule("trace", only_if_bits=(entry.empty_path_arg, AT_EMPTY_PATH,
                                                        True))
        else:
            rules[nr] = TrapRule("trace", only_if_arg_nonzero=entry.only_if_arg)
    return build_filter(rules), build_filter(later), handlers


def resolve_command(argv: list[str], env: dict[str, str]) -> str:
    name = argv[0]
    if "/" in name:
        if not os.path.exists(name):
            raise CommandNotFoundError(f"{name}: no such file", "check the path of COMMAND")
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise CommandNotFoundError(f"{name}: command not found", "check COMMAND and your PATH")
    return found


class Child:
    """COMMAND's process before it runs: forked, seized, waiting for go."""

    def __init__(self, program: str, argv: list[str], bpf: bytes,
                 setup: Callable[[], None] | None = None) -> None:
        """`setup` runs first thing in the child (e.g. taking a pty as its terminal)."""
        go_r, self._go_w = os.pipe2(os.O_CLOEXEC)
        self._err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(self._go_w)  # or closing ours would never reach it as EOF
            os.close(self._err_r)
            _child(go_r, err_w, program, argv, bpf, setup)
        os.close(go_r)
        os.close(err_w)
        self.pid = pid
        try:
            k.seize(pid, SEIZE_OPTIONS)
        except OSError as exc:
            self.abort()
            raise MirrortraceError(
                f"cannot trace COMMAND: ptrace failed ({exc.strerror})",
                "check /proc/sys/kernel/yama/ptrace_scope and that no other tracer "
                "(a debugger, strace) holds this process",
            ) from None

    def go(self, env: dict[str, str]) -> None:
        """Let COMMAND start, with env: known only now, after the agent answered."""
        data = b"g" + encode_environ(env)
        view = memoryview(data)
        while view:
            view = view[os.write(self._go_w, view) :]
        os.close(self._go_w)

    def exec_error(self) -> int | None:
        """Block until COMMAND has exec'd (None) or failed to (its errno)."""
        data = os.read(self._err_r, 16)
        os.close(self._err_r)
        return int(data) if data else None

    def abort(self) -> None:
        """COMMAND must never run: the child ends without exec'ing, and is reaped."""
        os.close(self._go_w)  # EOF: the child exits by itself...
        os.close(self._err_r)
        try:
            os.kill(self.pid, signal.SIGKILL)  # ...or now, whatever it was doing
            os.waitpid(self.pid, k.WALL)
        except (ProcessLookupError, ChildProcessError):
            pass


def _child(go_r: int, err_w: int, program: str, argv: list[str], bpf: bytes,
           setup: Callable[[], None] | None) -> None:  # pragma: no cover - runs in the child
    try:
        if setup is not None:
            setup()
        chunks = []
        while chunk := os.read(go_r, 1 << 16):
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data.startswith(b"g"):
            os._exit(0)  # closed without a go: COMMAND must never run
        env = {k.encode(): v.encode() for k, v in parse_environ(data[1:]).items()}
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        install_filter(bpf)
        os.execve(program, argv, env)
    except OSError as exc:
        os.write(err_w, str(exc.errno or errno.ENOEXEC).encode())
    finally:
        os._exit(127)


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run(options: RunOptions, link: AgentLink) -> int:
    """Run COMMAND under the supervisor; returns its exit code.

    `link` reaches the agent (the caller starts it early: see supervisor/transport.py);
    it is ended here whatever happens.
    """
    bus = make_bus(options.ui, options.events_file)
    display = Display(options, bus)
    session = Session(
        link,
        bus,
        dns=options.dns,
        outgoing=options.outgoing,
        local_cidrs=options.local_cidrs,
        want_env=options.env != "local",
        fs_policy=_fs_policy(options),
    )
    tracer: Tracer | None = None
    inactive = _inactive_options(options)
    if inactive:
        bus.notice(
            f"mirrortrace: {', '.join(inactive)} not active in this build yet: COMMAND "
            "receives no incoming traffic"
        )
    try:
        env = dict(os.environ)
        program = resolve_command(options.command, env)
        bpf, pod_bpf, handlers = build_program()
        sys.stdout.flush()
        sys.stderr.flush()
        child = Child(program, options.command, bpf, display.child_setup)
        try:
            session.start()
        except BaseException:
            child.abort()
            raise
        tracer = Tracer(handlers, session, session.wake_fd, session.take_wakeups,
                        pod_filter=pod_bpf if session.fs is not None else None)
        tracer.adopt_main(child.pid)
        if link.pid is not None:
            tracer.foreign[link.pid] = lambda status: None
        tracer.install_sigchld()
        _take_signals(child.pid, tracer, display)
        command_env, from_pod = resolve_env(
            options.env, env, session.pod_env, options.env_exclude,
            include=options.env_include, override=options.env_override,
        )
        if options.ui in ("plain", "live"):
            described = describe_env(command_env, from_pod, session.pod_env is not None)
            bus.notice("mirrortrace: " + described)
        display.start(session)
        child.go(command_env)
        # The child's execve is itself a trapped call, so the tracer must be running
        # for it to happen: whether it failed is read once everything has ended.
        status = tracer.run()
        err = child.exec_error()
        if err is not None:
            display.close()  # the error is the last word, not a summary of nothing
            raise CommandNotFoundError(
                f"{options.command[0]}: cannot execute: {os.strerror(err)}",
                "check that COMMAND is an executable for this machine",
            )
        display.finish(exit_code(status))
        return exit_code(status)
    finally:
        if tracer is not None:
            tracer.kill_all()
            tracer.close()
        display.close()
        _restore_signals()
        session.close()
        bus.close()


def _inactive_options(options: RunOptions) -> list[str]:
    """Options the interface accepts whose features are not in this build yet."""
    out = []
    if options.incoming != "off" or options.port_map:
        out.append("--incoming")
    return out


def _fs_policy(options: RunOptions) -> FsPolicy:
    program = options.command[0]
    return FsPolicy(
        options.fs,
        remote=options.fs_remote,
        local=options.fs_local,
        cwd=os.getcwd(),
        home=os.environ.get("HOME"),
        program=shutil.which(program) if "/" not in program else program,
    )


def _take_signals(pid: int, tracer: Tracer, display: Display) -> None:
    """Signals for us go to COMMAND; terminal signals reach it by themselves, or, when
    it runs on a pty of ours (--ui live), through that pty.

    Ctrl-Z is special: we must let COMMAND stop first (its stop passes through
    our tracer) and only then stop ourselves, or COMMAND would stop only when
    we come back and the shell's `fg` would leave it stopped.
    """

    def interrupt(signum: int, _frame: Any) -> None:
        display.interrupt(signum)

    on_terminal_key = interrupt if display.terminal is not None else signal.SIG_IGN
    for sig in _IGNORED:
        signal.signal(sig, on_terminal_key)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)

    def suspend(_signum: int, _frame: Any) -> None:
        display.suspend()
        tracer.request_self_stop()

    def resume(_signum: int, _frame: Any) -> None:
        display.resume()

    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, resume)


def _restore_signals() -> None:
    for sig in (*_IGNORED, *_FORWARDED, signal.SIGTSTP, signal.SIGCONT):
        signal.signal(sig, signal.SIG_DFL)
