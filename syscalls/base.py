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


class Session(Protocol):
    """What handlers may ask of the running session (implemented in supervisor/)."""

    def emit(
        self,
        call: Call,
        kind: str,
        target: str,
        via: str,
        result: int | str,
        *,
        detail: dict[str, Any] | None = None,
    ) -> None: ...

    def __getattr__(self, name: str) -> Any: ...


Handler = Callable[[Call, Any], Outcome]
