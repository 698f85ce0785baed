"""AppTerminal with real processes on a real pty; a second pty plays the real terminal.

No root needed. Each child is forked, runs child_setup() and execs Python, as runner's
Child will. The kernel facts the module's docstring relies on are tested here too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.terminal import AppTerminal, passthrough_mode

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A bug must fail its test, not hang the suite."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("the test took over 30 s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


class Outer:
    """The "real terminal": we hold its slave as our stdin/stdout/stderr."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.set_size(24, 80)
        self.terms: list[AppTerminal] = []

    @property
    def real(self) -> tuple[int, int, int]:
        return (self.slave, self.slave, self.slave)

    def set_size(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def open(self, real: tuple[int, ...] | None = None) -> AppTerminal:
        term = AppTerminal.open(fds=(0, 1, 2), real=real or self.real)
        assert term is not None
        self.terms.append(term)
        return term

    def hang_up(self) -> None:
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        for term in self.terms:  # those a failed test left open
            term.close(drain_timeout=0)
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def outer() -> Iterator[Outer]:
    term = Outer()
    yield term
    term.close()


class Sink:
    """on_output for tests: keeps every chunk, lets the test wait for a token."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self._cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self._cond:
            self.chunks.append(data)
            self._cond.notify_all()

    @property
    def data(self) -> bytes:
        with self._cond:
            return b"".join(self.chunks)

    def wait_for(self, token: bytes, timeout: float = 10.0) -> bytes:
        with self._cond:
            found = self._cond.wait_for(lambda: token in b"".join(self.chunks), timeout)
        assert found, f"{token!r} never came; got {self.data!r}"
        return self.data


def spawn(term: AppTerminal, code: str, before: Callable[[], None] | None = None) -> int:
    """Fork COMMAND the way runner's Child will: child_setup(), then exec."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGQUIT must not dump core
            if before is not None:
                before()
            term.child_setup()
            os.execv(sys.executable, [sys.executable, "-c", textwrap.dedent(code)])
        finally:
            os._exit(127)
    return pid


def wait_status(pid: int, timeout: float = 10.0, options: int = 0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got, status = os.waitpid(pid, os.WNOHANG | options)
        if got:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not change state in {timeout} s")


def no_change(pid: int, options: int, delay: float) -> bool:
    time.sleep(delay)
    got, _ = os.waitpid(pid, os.WNOHANG | options)
    return got == 0


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- kernel facts the module relies on ------------------------------------------------


def test_master_read_gives_buffered_output_then_eio_once_every_slave_is_closed() -> None:
    master, slave = os.openpty()
    os.write(slave, b"last words")
    os.close(slave)
    assert os.read(master, 100) == b"last words"
    with pytest.raises(OSError) as caught:
        os.read(master, 100)
    assert caught.value.errno == errno.EIO
    os.close(master)


def test_parent_may_close_its_slave_right_after_fork() -> None:
    master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        time.sleep(0.3)
        os.write(slave, b"late")
        os._exit(0)
    os.close(slave)  # before the child has written anything: its copy keeps the pty
    ready, _, _ = select.select([master], [], [], 0.1)
    assert not ready  # no EIO yet
    assert os.read(master, 100) == b"late"
    wait_status(pid)
    os.close(master)


def test_tiocsctty_is_refused_before_setsid() -> None:
    master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        except OSError as exc:
            os._exit(exc.errno or 1)
        os._exit(0)
    status = wait_status(pid)
    os.close(master)
    os.close(slave)
    assert os.WEXITSTATUS(status) == errno.EPERM


# --- open ------------------------------------------------------------------------------


def test_open_gives_none_when_no_fd_is_a_terminal(tmp_path: Path) -> None:
    r, w = os.pipe()
    f = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    before = open_fds()
    assert AppTerminal.open(fds=(0, 1, 2), real=(r, w, f)) is None
    assert open_fds() == before
    for fd in (r, w, f):
        os.close(fd)


def test_child_sees_terminals_where_we_had_them_and_keeps_a_redirected_fd(
        outer: Outer, tmp_path: Path) -> None:
    log = os.open(tmp_path / "err.txt", os.O_WRONLY | os.O_CREAT)
    term = outer.open(real=(outer.slave, outer.slave, log))
    assert term.targets == (0, 1)
    sink = Sink()
    pid = spawn(term, """
        import os, sys
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:
                pass
        print("tty", [os.isatty(fd) for fd in (0, 1, 2)])
        print("master leaked:", any(link.endswith("ptmx") for link in links))
        print("leader:", os.getsid(0) == os.getpid(), os.tcgetpgrp(1) == os.getpgrp())
        os.write(os.open("/dev/tty", os.O_WRONLY), b"via /dev/tty\\n")
        sys.stderr.write("to-the-file\\n")
        print("done", flush=True)
    """, before=lambda: os.dup2(log, 2))
    term.start(sink)
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)
    os.close(log)
    out = sink.data
    assert b"tty [True, True, False]" in out
    assert b"master leaked: False" in out
    assert b"leader: True True" in out
    assert b"via /dev/tty" in out  # the pty is its controlling terminal
    assert b"to-the-file" not in out
    assert (tmp_path / "err.txt").read_text() == "to-the-file\n"


# --- output ----------------------------------------------------------------------------


def test_output_with_colours_reaches_on_output_byte_exact(outer: Outer) -> None:
    payload = b"\x1b[31mred\x1b[0m plain\n\x1b[1;32mbold green\x1b[0m\t\x07end\n"
    bulk = bytes((i % 94) + 33 for i in range(300_000))
    term = outer.open()
    sink = Sink()
    pid = spawn(term, f"""
        import sys
        sys.stdout.buffer.write({payload!r} + bytes((i % 94) + 33 for i in range(300_000)))
    """)
    term.start(sink)
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)
    # ONLCR is on in the real terminal, so it is on the pty: "\n" arrives as "\r\n".
    assert sink.data == payload.replace(b"\n", b"\r\n") + bulk
    assert max(len(chunk) for chunk in sink.chunks) <= 1 << 16


def test_child_gets_the_real_terminals_termios(outer: Outer) -> None:
    mode = termios.tcgetattr(outer.slave)
    mode[1] &= ~termios.ONLCR
    mode[6][termios.VERASE] = b"\x08"
    termios.tcsetattr(outer.slave, termios.TCSANOW, mode)
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import termios
        mode = termios.tcgetattr(0)
        print("erase", mode[6][termios.VERASE], "onlcr", bool(mode[1] & termios.ONLCR))
    """)
    term.start(sink)
    wait_status(pid)
    term.close(drain_timeout=5)
    assert sink.data == b"erase b'\\x08' onlcr False\n"  # and no "\r": ONLCR really is off


def test_child_sees_the_window_size_and_a_resize(outer: Outer) -> None:
    outer.set_size(40, 132)
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import os, signal, time
        print("size %dx%d" % os.get_terminal_size(1), flush=True)
        resized = []
        signal.signal(signal.SIGWINCH, lambda *_: resized.append(os.get_terminal_size(1)))
        print("ready", flush=True)
        while not resized:
            time.sleep(0.01)
        print("resized %dx%d" % resized[0], flush=True)
    """)
    theirs: list[int] = []
    before = signal.signal(signal.SIGWINCH, lambda signum, _frame: theirs.append(signum))
    try:
        term.start(sink)
        assert b"size 132x40" in sink.wait_for(b"ready")
        outer.set_size(50, 100)
        os.kill(os.getpid(), signal.SIGWINCH)  # the kernel would send it to the real job
        sink.wait_for(b"resized 100x50")
        assert os.WEXITSTATUS(wait_status(pid)) == 0
        term.close()
        assert theirs == [signal.SIGWINCH]  # the handler we replaced still ran
        assert signal.getsignal(signal.SIGWINCH) is not None
        os.kill(os.getpid(), signal.SIGWINCH)
        assert theirs == [signal.SIGWINCH] * 2  # and is back in place after close
    finally:
        signal.signal(signal.SIGWINCH, before)


# --- keys and interrupts -------------------------------------------------------------


def test_keys_typed_on_the_real_terminal_reach_a_raw_child_unchanged(outer: Outer) -> None:
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import os, tty
        tty.setraw(0)
        print("ready", end="\\r\\n", flush=True)
        got = b""
        while len(got) < 4:
            got += os.read(0, 16)
        print(repr(got), end="\\r\\n", flush=True)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    assert not termios.tcgetattr(term.master)[3] & termios.ICANON  # the master sees the slave
    os.write(outer.master, b"a\rb\x11")  # no newline, a CR and ^Q: all must pass as they are
    sink.wait_for(b"'a\\rb\\x11'")
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)
    echoed, _, _ = select.select([outer.master], [], [], 0.1)
    assert not echoed  # the real terminal echoed nothing: the pty does that


def test_a_typed_line_reaches_a_cooked_child_which_echoes_it(outer: Outer) -> None:
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        print("ready", flush=True)
        import sys
        print("got", repr(sys.stdin.readline()), flush=True)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    os.write(outer.master, b"hello\r")
    out = sink.wait_for(b"got 'hello\\n'")
    assert b"hello\r\n" in out  # echoed by the pty, as the real terminal would have
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)


def test_the_real_terminal_passes_keys_through_but_keeps_isig(outer: Outer) -> None:
    before = termios.tcgetattr(outer.slave)
    with outer.open() as term:
        term.start(Sink())
        during = termios.tcgetattr(outer.slave)
    assert during == passthrough_mode(before)
    assert during[3] & termios.ISIG and during[1] & termios.OPOST
    assert not during[3] & (termios.ICANON | termios.ECHO)
    assert not during[0] & (termios.IXON | termios.ICRNL)


def test_hangup_of_the_real_terminal_gives_the_child_end_of_input(outer: Outer) -> None:
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        print("ready", flush=True)
        import sys
        print("read", repr(sys.stdin.read()), flush=True)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    outer.hang_up()
    sink.wait_for(b"read ''")
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)  # the terminal is gone: nothing to restore, no error


@pytest.mark.parametrize(("sig", "echo"), [(signal.SIGINT, b"^C"), (signal.SIGQUIT, b"^\\")])
def test_interrupt_kills_a_cooked_child_through_its_terminal(
        outer: Outer, sig: int, echo: bytes) -> None:
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print("ready", flush=True)
        time.sleep(20)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    term.interrupt(sig)
    status = wait_status(pid)
    term.close(drain_timeout=5)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig
    assert echo in sink.data  # the key went through the pty, not a kill from us


@pytest.mark.parametrize(("sig", "key"), [
    (signal.SIGINT, b"\x03"), (signal.SIGQUIT, b"\x1c"), (signal.SIGTSTP, b"\x1a"),
])
def test_interrupt_gives_a_raw_child_the_key(outer: Outer, sig: int, key: bytes) -> None:
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import os, tty
        tty.setraw(0)
        print("ready", end="\\r\\n", flush=True)
        print(repr(os.read(0, 1)), end="\\r\\n", flush=True)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    term.interrupt(sig)
    sink.wait_for(repr(key).encode())
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)


def test_interrupt_signals_the_foreground_group_when_the_key_is_disabled(outer: Outer) -> None:
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import signal, termios, time
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        mode = termios.tcgetattr(0)
        mode[6][termios.VINTR] = b"\\0"
        termios.tcsetattr(0, termios.TCSANOW, mode)
        print("ready", flush=True)
        time.sleep(20)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    term.interrupt(signal.SIGINT)
    status = wait_status(pid)
    term.close(drain_timeout=5)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT


def test_ctrl_z_alone_cannot_stop_the_child_so_suspend_stops_it(outer: Outer) -> None:
    before = termios.tcgetattr(outer.slave)
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        print("ready", flush=True)
        import time
        time.sleep(1)
        print("alive", flush=True)
    """)
    term.start(sink)
    sink.wait_for(b"ready")
    term.interrupt(signal.SIGTSTP)
    sink.wait_for(b"^Z")  # the pty took the key and signalled...
    # ...but the child's process group is orphaned: the kernel drops a default SIGTSTP.
    assert no_change(pid, os.WUNTRACED, 0.3)
    term.suspend()
    status = wait_status(pid, options=os.WUNTRACED)
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
    assert termios.tcgetattr(outer.slave) == before  # the shell gets its terminal back
    term.resume()
    assert os.WIFCONTINUED(wait_status(pid, options=os.WCONTINUED))
    assert termios.tcgetattr(outer.slave) == passthrough_mode(before)
    sink.wait_for(b"alive")
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    term.close(drain_timeout=5)
    assert termios.tcgetattr(outer.slave) == before


# --- close -----------------------------------------------------------------------------


def test_close_restores_the_terminal_exactly_and_leaks_no_fd(outer: Outer) -> None:
    mode = termios.tcgetattr(outer.slave)
    mode[3] &= ~termios.ECHOCTL  # something unusual, to see it come back
    termios.tcsetattr(outer.slave, termios.TCSANOW, mode)
    before_mode = termios.tcgetattr(outer.slave)
    before_fds = open_fds()
    term = outer.open()
    pid = spawn(term, 'print("hi")')
    term.start(Sink())
    assert termios.tcgetattr(outer.slave) != before_mode
    wait_status(pid)
    term.close(drain_timeout=5)
    term.close()  # idempotent
    assert termios.tcgetattr(outer.slave) == before_mode
    assert open_fds() == before_fds


def test_close_before_start_frees_the_pty(outer: Outer) -> None:
    before = open_fds()
    outer.open().close()
    assert open_fds() == before


def test_an_exception_inside_with_still_restores_the_terminal(outer: Outer) -> None:
    before = termios.tcgetattr(outer.slave)
    with pytest.raises(RuntimeError, match="boom"), outer.open() as term:
        term.start(Sink())
        assert termios.tcgetattr(outer.slave) != before
        raise RuntimeError("boom")
    assert termios.tcgetattr(outer.slave) == before


def test_close_gives_up_on_a_grandchild_that_keeps_the_pty(outer: Outer) -> None:
    before = open_fds()
    term = outer.open()
    sink = Sink()
    pid = spawn(term, """
        import subprocess
        sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
        print("grandchild", sleeper.pid, flush=True)
    """)
    term.start(sink)
    assert os.WEXITSTATUS(wait_status(pid)) == 0
    grandchild = int(sink.wait_for(b"\n").split()[1])
    try:
        started = time.monotonic()
        term.close(drain_timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert open_fds() == before
    finally:
        os.kill(grandchild, signal.SIGKILL)


def run_script(script: str, *fds: int) -> dict[str, object]:
    """Run script in its own session (a process of its own is needed to play job control)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, fds)],
        pass_fds=fds, start_new_session=True, capture_output=True, timeout=20,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_the_terminal_comes_back_at_exit_without_close(outer: Outer) -> None:
    before = termios.tcgetattr(outer.slave)
    result = run_script("""
        import json, sys, termios
        from supervisor.terminal import AppTerminal
        fd = int(sys.argv[1])
        term = AppTerminal.open(fds=(0, 1, 2), real=(fd, fd, fd))
        term.start(lambda data: None)
        print(json.dumps({"changed": not termios.tcgetattr(fd)[3] & termios.ICANON}))
        sys.exit(0)  # no close(): atexit must do it
    """, outer.slave)
    assert result == {"changed": True}
    assert termios.tcgetattr(outer.slave) == before


def test_in_the_background_it_neither_reads_nor_sets_the_terminal_until_fg() -> None:
    result = run_script("""
        import fcntl, json, os, select, signal, termios, time
        from supervisor.terminal import AppTerminal, passthrough_mode

        def queued(fd):
            return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), "little")

        def stopped(pid):  # by job control: SIGTTIN or SIGTTOU
            got, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
            return bool(got) and os.WIFSTOPPED(status)

        def wait_until(test):
            end = time.monotonic() + 5
            while not test() and time.monotonic() < end:
                time.sleep(0.02)
            return test()

        # This process plays the shell: a session leader on its own terminal.
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        before = termios.tcgetattr(slave)
        started_r, started_w = os.pipe()
        job = os.fork()
        if job == 0:
            # `mirrortrace run ... &`: a process group of its own, not the foreground
            # one, and not orphaned (the shell is its parent): job control applies.
            os.setpgid(0, 0)
            term = AppTerminal.open(real=(slave, slave, slave))
            signal.signal(signal.SIGCONT, lambda *_: term.resume())
            signal.signal(signal.SIGTERM, lambda *_: (term.close(), os._exit(0)))
            term.start(lambda data: None)
            os.write(started_w, b"x")
            while True:
                signal.pause()
        os.setpgid(job, job)
        if not select.select([started_r], [], [], 5)[0]:
            print(json.dumps({"never started; stopped": stopped(job)}))
            os.kill(job, signal.SIGKILL)
            raise SystemExit(0)
        os.write(master, b"typed\\r")
        time.sleep(0.5)
        out = {"stopped_in_background": stopped(job),
               "set_in_background": termios.tcgetattr(slave) != before,
               "left_unread": queued(slave)}
        os.tcsetpgrp(slave, job)  # `fg`: the job gets the terminal...
        os.killpg(job, signal.SIGCONT)  # ...and SIGCONT
        out["set_in_foreground"] = wait_until(
            lambda: termios.tcgetattr(slave) == passthrough_mode(before))
        out["read_in_foreground"] = wait_until(lambda: queued(slave) == 0)
        out["stopped_in_foreground"] = stopped(job)
        os.kill(job, signal.SIGTERM)
        out["job_status"] = os.waitpid(job, 0)[1]
        out["restored"] = termios.tcgetattr(slave) == before
        print(json.dumps(out))
    """)
    assert result == {
        "stopped_in_background": False,
        "set_in_background": False,
        "left_unread": 6,  # "typed\n" still waits for the shell
        "set_in_foreground": True,
        "read_in_foreground": True,
        "stopped_in_foreground": False,
        "job_status": 0,
        "restored": True,
    }
