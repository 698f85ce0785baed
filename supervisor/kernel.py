"""The kernel interfaces the tracer needs, in snake_case, and the one import of python-ptrace.

python-ptrace gives us the x86_64 register layout and syscall names; everything it
lacks (PTRACE_SEIZE/LISTEN/INTERRUPT, seccomp events, pidfds, process_vm_readv)
and its per-stop cost (it polls each pid with sleeps) are why the calls
themselves are made here through ctypes. Ordinary events are return values;
only real failures raise OSError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from ptrace.binding.linux_struct import user_regs_struct as Regs  # the one python-ptrace import
from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES

__all__ = ["Regs", "SYSCALL_NAMES", "SYSCALL_NUMBERS"]

# Numbers 512-547 in python-ptrace's table are the x32 ABI's; they must not shadow
# the x86_64 numbers of the same names.
SYSCALL_NUMBERS: dict[str, int] = {name: nr for nr, name in SYSCALL_NAMES.items() if nr < 512}
# Newer than python-ptrace's table.
SYSCALL_NUMBERS.update(
    {
        "clone3": 435,
        "openat2": 437,
        "pidfd_open": 434,
        "pidfd_getfd": 438,
        "faccessat2": 439,
        "io_uring_setup": 425,
        "statx": 332,
    }
)

PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SYSCALL = 24
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACESYSGOOD = 1
PTRACE_O_TRACEFORK = 1 << 1
PTRACE_O_TRACEVFORK = 1 << 2
PTRACE_O_TRACECLONE = 1 << 3
PTRACE_O_TRACEEXEC = 1 << 4
PTRACE_O_TRACESECCOMP = 1 << 7
PTRACE_O_EXITKILL = 1 << 20

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for threads and children of any kind

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
ERESTARTSYS = 512

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return result


def seize(pid: int, options: int) -> None:
    _check(_ptrace(PTRACE_SEIZE, pid, None, options))


def cont(tid: int, sig: int = 0) -> None:
    _check(_ptrace(PTRACE_CONT, tid, None, sig))


def resume_to_exit(tid: int, sig: int = 0) -> None:
    """Resume and stop again at this syscall's exit (PTRACE_SYSCALL)."""
    _check(_ptrace(PTRACE_SYSCALL, tid, None, sig))


def listen(tid: int) -> None:
    """Leave a group-stopped tracee stopped but let the kernel resume it on SIGCONT."""
    _check(_ptrace(PTRACE_LISTEN, tid, None, None))


def interrupt(tid: int) -> None:
    _check(_ptrace(PTRACE_INTERRUPT, tid, None, None))


def get_regs(tid: int) -> Regs:
    regs = Regs()
    _check(_ptrace(PTRACE_GETREGS, tid, None, ctypes.addressof(regs)))
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    _check(_ptrace(PTRACE_SETREGS, tid, None, ctypes.addressof(regs)))


def event_msg(tid: int) -> int:
    value = ctypes.c_ulong()
    _check(_ptrace(PTRACE_GETEVENTMSG, tid, None, ctypes.addressof(value)))
    return value.value


def pidfd_open(pid: int) -> int:
    return _check(_syscall(SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0)))


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """Duplicate a tracee's fd into ours: the same open file description, so a
    socket operation on the copy acts on the tracee's socket (Linux >= 5.6)."""
    return _check(
        _syscall(SYS_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
    )


class Memory:
    """Reads and writes one address space through /proc/PID/mem.

    Writes go through the kernel's FOLL_FORCE path, so read-only pages (string
    literals, sockaddrs in .rodata) can be patched too; process_vm_writev could
    not. The file must be reopened after exec: it is bound to the old mm.
    """

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)

    def read(self, addr: int, size: int) -> bytes:
        data = os.pread(self.fd, size, addr)
        if len(data) != size:
            raise OSError(14, "short read of tracee memory")
        return data

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """Read a NUL-terminated string of at most limit bytes (a longer one is
        ENAMETOOLONG) without crossing into an unmapped page."""
        out = b""
        while len(out) < limit:
            # Up to the end of the page: one read for nearly every path, and never
            # into a next page that may not be mapped.
            chunk = min(4096 - (addr % 4096), limit - len(out) + 1)
            try:
                data = os.pread(self.fd, chunk, addr)
            except OSError:
                data = b""
            if not data:
                raise OSError(14, "bad address")
            nul = data.find(b"\0")
            if nul >= 0:
                return out + data[:nul]
            out += data
            addr += len(data)
        raise OSError(36, "string too long")

    def write(self, addr: int, data: bytes) -> None:
        if os.pwrite(self.fd, data, addr) != len(data):
            raise OSError(14, "short write to tracee memory")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def proc_status_fields(tid: int, names: tuple[str, ...]) -> dict[str, str]:
    """A few fields of /proc/TID/status (signal masks, Tgid)."""
    out: dict[str, str] = {}
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in names:
                out[key] = value.strip()
    return out


def read_comm(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def deliverable_signal_pending(tid: int) -> bool:
    """Is a signal pending that the thread does not block?

    Only such a signal can interrupt a syscall the supervisor is holding; after
    the thread leaves its ptrace stop the kernel recomputes TIF_SIGPENDING from
    exactly these masks (recalc_sigpending_tsk in ptrace_stop).
    """
    try:
        f = proc_status_fields(tid, ("SigPnd", "ShdPnd", "SigBlk"))
    except OSError:
        return False
    pending = int(f.get("SigPnd", "0"), 16) | int(f.get("ShdPnd", "0"), 16)
    return bool(pending & ~int(f.get("SigBlk", "0"), 16))
