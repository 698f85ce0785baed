"""What a syscall handler sees and what it may answer.

A handler is a plain function `(call, session) -> Outcome`. It never calls ptrace:
it reads the tracee through `call` and returns one of the outcomes below, and the
engine (supervisor/tracer.py) applies it. The two Protocol classes here are the
whole contract between the engine and the handlers, so handlers are tested with
fakes and imports run one way: supervisor -> syscalls -> agent_image.protocol.

Outcomes (PRoot's model: answer a call by skipping it at entry and writing the
result at exit):

    Pass(on_exit)      run the syscall unchanged; optionally look at its result
    Rewrite(args, ..)  run it with some argument registers changed; the engine
                       restores them at exit, so the program's registers are intact
    Return(value)      do not run it; the program sees `value` (-errno for errors)
    Park(future, then) hold the thread where it is until `future` completes (the
                       agent answered), then call `then(call, result)` for the real
                       outcome. A signal arriving meanwhile interrupts the call the
                       way the kernel would (-ERESTARTSYS), so the program's
                       handler runs and SA_RESTART decides whether it re-enters.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Call(Protocol):
    """A syscall stopped at entry (or, for exit hooks, at exit)."""

    tid: int
    tgid: int
    nr: int
    name: str
    args: list[int]
    started: float

    @property
    def comm(self) -> str: ...

    def read(self, addr: int, size: int) -> bytes: ...

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...

    def scratch(self, data: bytes) -> int:
        """Copy `data` into tracee memory reserved for this thread until the call exits."""
        ...

    def dup_fd(self, fd: int) -> int:
        """Our duplicate of the tracee's fd (same open file description); caller closes."""
        ...

    def pod_aware(self) -> None:
        """Called before giving the program a pod path: the engine first adds the filter
        that traps fstat and getcwd to this process (and then runs the handler again)."""
        ...


class ExitCall(Call, Protocol):
    result: int

    def set_result(self, value: int) -> None: ...


ExitHook = Callable[[ExitCall], None]


@dataclass(slots=True)
class Pass:
    on_exit: ExitHook | None = None


@dataclass(slots=True)
class Rewrite:
    args: dict[int, int]
    on_exit: ExitHook | None = None


@dataclass(slots=True)
class Return:
    value: int


@dataclass(slots=True)
class Park:
    future: concurrent.futures.Future[Any]
    then: Callable[[Call, Any], Outcome]
    on_abandon: Callable[[], None] | None = None


Outcome = Pass | Rewrite | Return | Park
PASS = Pass()


def fail(errno: int) -> Return:
    return Return(-errno)


Addr = tuple[str, int]
Future = concurrent.futures.Future[Any]


class Policy(Protocol):
    def decide_connect(self, addr: Any, sock_type: int) -> Any:
        """A decision with `.diverted` (bool) and `.reason` (str)."""
        ...


MISSING_HERE = "the pod's: not on this machine"
"""The rule for a path the policy gave the pod only because it is not here."""


class Files(Protocol):
    """The pod's file system as handlers see it (supervisor/remote_files.py).

    Futures complete in the session's thread with the answer or an ErrorReply
    (agent_image.protocol) carrying the pod's errno. `root` is the session's
    private cache directory: a pod path P is mirrored at root + P.
    """

    root: bytes
    mode: str  # "read" or "write"
    quick_local: Any  # a compiled bytes regex: a match is local, no more to decide; or None
    active: bool  # a pod path has been used: fstat and getcwd need a look from now on

    def decide(self, path: bytes, in_pod: bool) -> tuple[bool, str]:
        """(is it the pod's, the rule that decided)."""
        ...

    def open(self, path: bytes, flags: int, mode: int, umask: int) -> Future:
        """Make the cached copy ready for this open: its local path (bytes)."""
        ...

    def chdir(self, path: bytes) -> Future:
        """A pod directory, mirrored in the cache: its local path (bytes)."""
        ...

    def stat(self, path: bytes, follow: bool) -> Future:
        """The pod's metadata (StatInfo), or the cached copy's when it has local changes."""
        ...

    def copy_meta(self, path: bytes) -> Any:
        """Metadata for an fd on the cached copy of path (no round trip), or None."""
        ...

    def access(self, path: bytes, mode: int, follow: bool) -> Future: ...

    def readlink(self, path: bytes) -> Future:
        """The link's target (bytes)."""
        ...

    def unlink(self, path: bytes, directory: bool) -> Future: ...

    def rename(self, src: bytes, dst: bytes, flags: int) -> Future: ...

    def mkdir(self, path: bytes, mode: int) -> Future: ...

    def truncate(self, path: bytes, length: int) -> Future: ...


class Session(Protocol):
    """What handlers may ask of the running session (supervisor/session.py and its
    relays implement it; tests use fakes). Everything here is safe to call from the
    tracer thread; futures complete in the session's thread."""

    policy: Policy
    nodename: str | None
    pod_files: dict[bytes, bytes]  # pod path -> the path the program opens instead
    fs: Files | None  # None with --fs local
    PENDING: object  # what `within` gives when the time ran out first
    tcp_inflight: dict[int, tuple[Future, Addr]]  # socket inode -> pod-side connect
    tcp_remote: dict[Addr, Addr]  # program socket's local address -> remote
    tcp_local: dict[Addr, Addr | None]  # program socket's local address -> pod-side one
    udp_remote: dict[Addr, Addr]  # relay address -> remote
    udp_sources: dict[Addr, Any]  # program sockets sending diverted datagrams

    def emit(self, call: Call, kind: str, target: str, via: str, result: int | str, *,
             detail: dict[str, Any] | None = None) -> None: ...

    def open_tcp(self, host: str, port: int) -> Future:
        """Connect from the pod: a bridge object, or an ErrorReply."""
        ...

    def within(self, fut: Future, seconds: float) -> Future: ...

    def start_pending(self, sock: Any, remote: Addr, fut: Future) -> None: ...

    def relay_address(self, family: int, v6only: bool) -> tuple[int, Addr] | None: ...

    def expect_tcp(self, peer: Addr, bridge: Any, remote: Addr) -> None: ...

    def abandon_tcp(self, bridge: Any) -> None: ...

    def is_tcp_relay(self, addr: Addr) -> bool: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...

    def udp_relay(self, remote: Addr, family: int) -> tuple[Addr, str]: ...

    def udp_source(self, src: Addr, pid: int, comm: str, family: int) -> None: ...

    def source_for(self, host: str) -> Future: ...


Handler = Callable[[Call, Any], Outcome]
