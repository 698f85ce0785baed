"""COMMAND's own terminal: a pty between it and the real one, so a dashboard can share the screen.

Without it COMMAND writes straight to the real terminal and its output tears through the
live dashboard. With it, those of COMMAND's stdin/stdout/stderr that were terminals are
the slave side of a pseudo-terminal (a redirected one stays redirected): COMMAND still
sees a terminal (isatty, the real window size and termios, its own raw mode), and the
supervisor reads all it writes from the master and draws it above the live area.

Kernel facts this relies on, each checked by tests/unit/test_terminal.py:

- COMMAND becomes the session leader of the pty: setsid(), then TIOCSCTTY (the other
  order fails with EPERM). From then on the pty's line discipline, not we, turns ^C ^\\ ^Z
  into SIGINT/SIGQUIT/SIGTSTP for COMMAND's foreground process group, and TIOCSWINSZ on
  the master sends that group SIGWINCH.
- The real terminal keeps ISIG, so ^C still signals the supervisor's process group; the
  supervisor passes it on with interrupt(), which types the pty's own VINTR/VQUIT/VSUSP
  character. A raw-mode COMMAND reads the byte, a cooked one gets the signal: what a real
  terminal would do.
- COMMAND's process group is orphaned (its parent, the supervisor, is in another
  session), so the kernel discards a default-action SIGTSTP/SIGTTIN/SIGTTOU sent to it
  (kernel/signal.c, get_signal): ^Z alone never stops a cooked COMMAND. suspend() stops
  it with SIGSTOP, which always works, and resume() continues it.
- A read of the master fails with EIO once every slave fd is closed, after what was
  already written has been read: that is the end of the output, not an error. The parent
  may close its slave as soon as the child is forked: the child's copy keeps it open.
- tcgetattr and tcgetpgrp on the master answer for the slave, from outside its session.
- Job control: a background supervisor (`&`, or ^Z then `bg`) must not read or set its
  controlling terminal, or SIGTTIN/SIGTTOU stops it. With the signal blocked in the
  calling thread the kernel instead fails the read with EIO and lets a set through
  (drivers/tty/tty_jobctrl.c, __tty_check_change). A terminal that is not our
  controlling one never stops us (tcgetpgrp says ENOTTY).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType, TracebackType
from typing import Any

from supervisor.errors import MirrortraceError

__all__ = ["AppTerminal", "passthrough_mode"]

_CHUNK = 1 << 16
_KEYS = {
    signal.SIGINT: termios.VINTR,
    signal.SIGQUIT: termios.VQUIT,
    signal.SIGTSTP: termios.VSUSP,
}
_VDISABLE = b"\x00"  # _POSIX_VDISABLE on Linux
_BACKGROUND_POLL = 0.2  # seconds between looks of a stdin pump that finds us in the background
_JOIN_TIMEOUT = 1.0

Termios = list[Any]  # termios.tcgetattr's [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def passthrough_mode(saved: Termios) -> Termios:
    """The real terminal's mode while COMMAND runs: keys go to the pty untouched.

    Echo, line editing, flow control and CR translation are the pty's business now (it
    has the same settings), or they would happen twice. ISIG stays, so ^C ^\\ ^Z still
    reach the supervisor as signals, and OPOST stays for our own drawing.
    """
    mode = [*saved[:6], list(saved[6])]
    mode[0] &= ~(
        termios.BRKINT | termios.ICRNL | termios.INLCR | termios.IGNCR
        | termios.INPCK | termios.ISTRIP | termios.IXON | termios.PARMRK
    )
    mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ECHONL | termios.IEXTEN)
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    return mode


class AppTerminal:
    """The pty COMMAND runs on, and the two pumps between it and the real terminal.

    Life: open() before the fork; child_setup() in the child; start() in the parent
    right after the fork; close() at the end (also via `with`, and atexit).
    """

    def __init__(self, master: int, slave: int, targets: tuple[int, ...], keys: int | None,
                 size_from: int) -> None:
        self.master = master
        self.targets = targets  # COMMAND's fds that become the slave
        self._slave: int | None = slave
        self._keys = keys  # our stdin when it is a terminal: where keys come from
        self._size_from = size_from
        self._saved: Termios | None = None  # the real terminal's mode, taken once
        self._applied = False
        self._stopped_pgrp: int | None = None
        self._stop_r = self._stop_w = -1
        self._threads: list[threading.Thread] = []
        self._old_winch: Any = None
        self._winch_installed = False
        self._started = False
        self._closed = False

    @classmethod
    def open(cls, fds: Sequence[int] = (0, 1, 2), real: Sequence[int] | None = None
             ) -> AppTerminal | None:
        """A pty for COMMAND if any of our fds is a terminal, else None (nothing to share).

        `fds` are COMMAND's fds; `real` (default: the same numbers) are ours that they
        stand for, so tests can play the real terminal with a pty of their own. Only the
        fds whose real one is a terminal are replaced: `> out.txt` stays a file.
        """
        real = tuple(fds) if real is None else tuple(real)
        if len(real) != len(fds):
            raise ValueError("fds and real must pair up")
        ttys = [fd for fd in real if os.isatty(fd)]
        if not ttys:
            return None
        try:
            master, slave = os.openpty()  # both close-on-exec (PEP 446): never in COMMAND
        except OSError as exc:
            raise MirrortraceError(
                f"cannot open a pseudo-terminal for COMMAND ({exc.strerror})",
                "check that /dev/ptmx and /dev/pts are usable here, or run with --ui plain",
            ) from exc
        try:
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(ttys[0]))
            _copy_size(ttys[0], slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        targets = tuple(fd for fd, r in zip(fds, real, strict=True) if os.isatty(r))
        keys = next((r for fd, r in zip(fds, real, strict=True) if fd == 0 and os.isatty(r)),
                    None)
        return cls(master, slave, targets, keys, ttys[0])

    def child_setup(self) -> None:
        """Make the pty COMMAND's controlling terminal; call in the child, before exec.

        setsid() first: TIOCSCTTY is refused (EPERM) to a process that is not a session
        leader. Uses only system calls, as it runs between fork and exec.
        """
        slave = self._slave
        if slave is None:
            raise RuntimeError("child_setup after start: the slave is closed")
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in self.targets:
            os.dup2(slave, fd)
        if slave not in self.targets:
            os.close(slave)
        os.close(self.master)

    def start(self, on_output: Callable[[bytes], None]) -> None:
        """Begin pumping, once the child is forked; call from the main thread.

        on_output gets COMMAND's bytes as they come (up to 64 KiB a call, on a thread of
        ours), after the pty's output processing, e.g. "\\n" as "\\r\\n" under ONLCR.
        """
        if self._started or self._closed:
            raise RuntimeError("AppTerminal.start: already started or closed")
        self._started = True
        if self._slave is not None:
            # Ours only: the forked child holds its own copy, so no EIO on the master.
            os.close(self._slave)
            self._slave = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        atexit.register(self.close)
        self._old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        self._winch_installed = True
        self.resize()  # the real size may have changed since open()
        self._spawn("mirrortrace-pty-out", self._pump_output, on_output)
        if self._keys is not None:
            self._take_terminal()
            self._spawn("mirrortrace-pty-in", self._pump_keys)

    def interrupt(self, sig: int) -> None:
        """Pass on ^C (SIGINT), ^\\ (SIGQUIT) or ^Z (SIGTSTP) the supervisor received.

        Typing the pty's own character lets its line discipline decide, as a real
        terminal's would: a cooked COMMAND gets the signal, a raw one reads the byte.
        With the character disabled, or the pty's input full (a write would block our
        main thread), the signal goes straight to the foreground process group.
        """
        if self._closed:
            return
        key = _pty_char(self.master, _KEYS[sig])
        if key != _VDISABLE and _write_now(self.master, key):
            return
        with contextlib.suppress(OSError):  # COMMAND is gone: nobody to interrupt
            os.killpg(os.tcgetpgrp(self.master), sig)

    def suspend(self) -> None:
        """Before the supervisor stops itself (^Z): stop COMMAND, hand the terminal back.

        SIGSTOP because COMMAND's orphaned process group ignores a default SIGTSTP, and
        the shell that takes over expects the terminal as it lent it to us.
        """
        if self._closed:
            return
        with contextlib.suppress(OSError):  # COMMAND is gone: nothing to stop
            pgrp = os.tcgetpgrp(self.master)
            os.killpg(pgrp, signal.SIGSTOP)
            self._stopped_pgrp = pgrp
        self._give_terminal_back()

    def resume(self) -> None:
        """On SIGCONT: take the terminal again if in the foreground, continue COMMAND.

        The size may have changed while we were stopped (no SIGWINCH reaches a stopped
        process), and after `fg` of a job started with `&` this is the first time the
        terminal is ours to set.
        """
        if self._closed or not self._started:
            return
        if self._keys is not None:
            self._take_terminal()
        self.resize()
        pgrp, self._stopped_pgrp = self._stopped_pgrp, None
        if pgrp is not None:
            with contextlib.suppress(OSError):  # COMMAND is gone
                os.killpg(pgrp, signal.SIGCONT)

    def resize(self) -> None:
        """Give the pty the real terminal's size; the kernel then sends COMMAND SIGWINCH."""
        if self._closed:
            return
        with contextlib.suppress(OSError):  # the real terminal hung up: keep the last size
            _copy_size(self._size_from, self.master)

    def close(self, drain_timeout: float = 0.5) -> None:
        """Drain what COMMAND wrote, give the terminal back exactly as it was, free the fds.

        The drain ends at EIO (every slave closed: COMMAND and its children are gone) or
        after drain_timeout, when a background grandchild still holds the pty.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self._threads:
                self._threads[0].join(drain_timeout)
                os.write(self._stop_w, b"x")
                for thread in self._threads:
                    thread.join(_JOIN_TIMEOUT)
        finally:
            try:
                self._give_terminal_back()
            finally:
                self._restore_winch()
                self._close_fds()

    def __enter__(self) -> AppTerminal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- the real terminal ------------------------------------------------------------

    def _take_terminal(self) -> None:
        keys = self._keys
        assert keys is not None
        if self._applied or not _in_foreground(keys):
            return  # in the background: its mode belongs to the foreground job
        if self._saved is None:
            self._saved = termios.tcgetattr(keys)
        _set_mode(keys, passthrough_mode(self._saved))
        self._applied = True

    def _give_terminal_back(self) -> None:
        if not self._applied:
            return
        assert self._keys is not None and self._saved is not None
        self._applied = False
        try:
            _set_mode(self._keys, self._saved)
        except termios.error as exc:
            if exc.args[0] != errno.EIO:
                raise
            # EIO: the terminal hung up, there is no mode left to restore.

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        self.resize()
        if callable(self._old_winch):
            self._old_winch(signum, frame)

    def _restore_winch(self) -> None:
        if not self._winch_installed or threading.current_thread() is not threading.main_thread():
            return  # signal.signal works only there; our handler does nothing once closed
        self._winch_installed = False
        old = self._old_winch
        signal.signal(signal.SIGWINCH, old if old is not None else signal.SIG_DFL)

    def _close_fds(self) -> None:
        if any(thread.is_alive() for thread in self._threads):
            # A pump is stuck (in on_output, or writing to a full pty): closing the fds
            # under it could hand their numbers to someone else; they go when we exit.
            return
        for fd in (self._slave, self.master, self._stop_r, self._stop_w):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._slave = None
        self._stop_r = self._stop_w = -1

    # --- the pumps --------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _pump_output(self, on_output: Callable[[bytes], None]) -> None:
        while True:
            ready, _, _ = select.select([self.master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.master, _CHUNK)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return  # every slave fd is closed: COMMAND and its children are gone
                raise
            if not data:
                return
            on_output(data)

    def _pump_keys(self) -> None:
        keys = self._keys
        assert keys is not None
        # Blocked here only: a read from the background then fails with EIO instead of
        # stopping the whole supervisor with SIGTTIN.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTIN, signal.SIGTTOU})
        while True:
            if not _in_foreground(keys):
                if self._stop_requested(_BACKGROUND_POLL):
                    return
                continue
            ready, _, _ = select.select([keys, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(keys, _CHUNK)
            except OSError as exc:
                if exc.errno == errno.EIO and not _in_foreground(keys):
                    continue  # moved to the background between the look and the read
                if exc.errno != errno.EIO:
                    raise
                data = b""  # EIO in the foreground: the other end of our terminal closed
            if not data:
                # Our terminal is gone: COMMAND sees end of input, as after ^D.
                eof = _pty_char(self.master, termios.VEOF)
                if eof != _VDISABLE:
                    with contextlib.suppress(OSError):  # COMMAND is gone too
                        _write_all(self.master, eof)
                return
            try:
                _write_all(self.master, data)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return  # COMMAND is gone
                raise

    def _stop_requested(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._stop_r], [], [], timeout)
        return bool(ready)


def _copy_size(src: int, dst: int) -> None:
    fcntl.ioctl(dst, termios.TIOCSWINSZ, fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8))


def _pty_char(master: int, index: int) -> bytes:
    """One of the slave's control characters as COMMAND set it; _VDISABLE if unknown."""
    try:
        return termios.tcgetattr(master)[6][index]
    except termios.error:  # termios.error is no OSError: this runs in signal handlers
        return _VDISABLE


def _in_foreground(fd: int) -> bool:
    """Whether job control lets us read and set fd's terminal now."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        # ENOTTY: not our controlling terminal, which never stops us; EIO: hung up,
        # and the read that follows will say so.
        return True


@contextlib.contextmanager
def _blocked(*sigs: int) -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _set_mode(fd: int, mode: Termios) -> None:
    # SIGTTOU blocked: if we were just put in the background, a stop here would leave
    # the terminal in our mode until someone resumed us.
    with _blocked(signal.SIGTTOU):
        termios.tcsetattr(fd, termios.TCSADRAIN, mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_now(fd: int, data: bytes) -> bool:
    """Write data if the pty can take it without blocking; whether it did."""
    _, ready, _ = select.select([], [fd], [], 0)
    if not ready:
        return False
    try:
        return os.write(fd, data) == len(data)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return False  # every slave closed
        raise
