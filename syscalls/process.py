"""Process-level calls: keep every child traced, and show the pod's hostname.

A child that escaped tracing would still run under the inherited seccomp
filter, and with no tracer every trapped syscall fails with ENOSYS; so no
child may escape: CLONE_UNTRACED is stripped from clone(2) here, and clone3(2)
(whose flags sit in memory where the filter cannot see them) and
io_uring_setup(2) (which would do I/O the supervisor never sees) are refused
with ENOSYS in the filter itself, so libc falls back to clone and programs to
plain syscalls.
"""

from __future__ import annotations

from syscalls.base import PASS, Call, ExitCall, Outcome, Pass, Rewrite, Session

CLONE_UNTRACED = 0x00800000
_UTS_FIELD = 65  # struct utsname: six char[65] fields; nodename is the second


def clone(call: Call, session: Session) -> Outcome:
    """Pass through clone(2) with CLONE_UNTRACED cleared, so every child stays traced."""
    flags = call.args[0]
    if flags & CLONE_UNTRACED:
        return Rewrite({0: flags & ~CLONE_UNTRACED})
    return PASS


def uname(call: Call, session: Session) -> Outcome:
    """Pass through uname(2), replacing the nodename with the pod's hostname."""
    nodename = session.nodename
    if not nodename:
        return PASS
    buf = call.args[0]

    def patch(e: ExitCall) -> None:
        if e.result == 0:
            name = nodename.encode()[: _UTS_FIELD - 1]
            e.write(buf + _UTS_FIELD, name + bytes(_UTS_FIELD - len(name)))

    return Pass(on_exit=patch)
