"""Build and install the classic-BPF seccomp filter the tracee runs under.

The filter decides, in the kernel and before any ptrace stop, which syscalls
the supervisor sees at all: SECCOMP_RET_TRACE for the few a handler cares
about, SECCOMP_RET_ERRNO for the ones we refuse outright (clone3,
io_uring_setup), SECCOMP_RET_ALLOW for everything else, so untouched syscalls
cost nothing (seccomp(2), "SECCOMP_RET_TRACE"; PTRACE_O_TRACESECCOMP in
ptrace(2)).

Program layout (offsets into struct seccomp_data, see seccomp(2)):

    ld  [4]                       arch
    jeq AUDIT_ARCH_X86_64 ? next : kill
    ret KILL_PROCESS              i386 `int 0x80` / sysenter: other table
    ld  [0]                       nr
    jeq 0xffffffff ? allow        nr == -1: a tracer skipped the call
    jge X32_SYSCALL_BIT ? enosys  x32 ABI numbers (and anything absurd)
    <binary search over the sorted trapped numbers, actions inline>
    ret ALLOW

Why each guard is there:

- The arch check comes first because a 64-bit process may still enter the
  kernel through `int 0x80`, which uses the i386 table: number 5 is open
  there, not fstat. Such a call arrives with arch AUDIT_ARCH_I386 and is
  killed, since a program doing it on purpose is trying to slip past us.
- x32 calls arrive with arch AUDIT_ARCH_X86_64 and nr | 0x40000000 (the
  __X32_SYSCALL_BIT), reaching the same handlers under other numbers. We
  answer them ERRNO(ENOSYS), exactly what a kernel built without x32
  support gives, so a probing program falls back gracefully instead of
  dying. The kernel reads nr as a signed int; cBPF loads it as u32, so the
  single unsigned JGE also covers negative numbers.
- nr == -1 is let through: since Linux 4.8 the filter runs *after* the
  ptrace syscall-entry stop, so a tracer that skips a call at that stop
  (orig_rax = -1, rax = result) would otherwise get its rax overwritten by
  -ENOSYS from the x32 guard. The kernel does nothing for nr -1 and leaves
  rax alone (arch/x86/entry/common.c, do_syscall_64).

Note for the engine: a syscall whose number the tracer changes at a seccomp
stop is run through the filter again (kernel/seccomp.c, recheck_after_trace),
where TRACE counts as ALLOW but ERRNO and KILL still apply; an injected
syscall must not be one that the filter refuses.

cBPF jump offsets jt/jf are 8-bit; only JA has a 32-bit offset. The
assembler below lays the program out, and any conditional branch whose
target ends up more than 255 instructions ahead is routed through a JA
trampoline placed right after it; layout is repeated until stable.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

# Return actions, include/uapi/linux/seccomp.h.
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_KILL = SECCOMP_RET_KILL_THREAD
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# include/uapi/linux/audit.h: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
# arch/x86/include/uapi/asm/unistd.h
X32_SYSCALL_BIT = 0x40000000

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4
SECCOMP_DATA_IP = 8
SECCOMP_DATA_ARGS = 16
SECCOMP_DATA_SIZE = 64

# Classic BPF opcodes, include/uapi/linux/filter.h (bpf_common.h).
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JMP_JA = 0x05  # BPF_JMP | BPF_JA
BPF_JMP_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JMP_JGT_K = 0x25  # BPF_JMP | BPF_JGT | BPF_K
BPF_JMP_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JMP_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
BPF_MAXINSNS = 4096
SOCK_FILTER = struct.Struct("<HBBI")  # struct sock_filter {u16 code; u8 jt, jf; u32 k}

MAX_ERRNO = 4095  # the kernel caps SECCOMP_RET_ERRNO data at MAX_ERRNO
_ENOSYS_RET = SECCOMP_RET_ERRNO | errno_mod.ENOSYS
_LINEAR_MAX = 3  # up to this many numbers, a JEQ chain is as short as another JGE level


@dataclass(frozen=True)
class TrapRule:
    """What the filter does with one syscall number.

    action "trace" stops the tracee for the supervisor (SECCOMP_RET_TRACE);
    "errno" fails the call with -errno without running it. With
    only_if_arg_nonzero = i the rule applies only when the 64-bit argument i
    is non-zero and the call is allowed otherwise (recvfrom with a NULL
    src_addr needs no rewriting, so it should not cost a stop).
    """

    action: Literal["trace", "errno"]
    errno: int = 0
    only_if_arg_nonzero: int | None = None
    # (argument index, bits, fire when set): e.g. (3, AT_EMPTY_PATH, False) traps
    # newfstatat only when its flags do not ask for fstat semantics.
    only_if_bits: tuple[int, int, bool] | None = None

    def __post_init__(self) -> None:
        if self.action == "trace":
            if self.errno != 0:
                raise ValueError("a 'trace' rule takes no errno")
        elif self.action == "errno":
            if not 1 <= self.errno <= MAX_ERRNO:
                raise ValueError(f"errno must be in 1..{MAX_ERRNO}, got {self.errno}")
        else:
            raise ValueError(f"action must be 'trace' or 'errno', got {self.action!r}")
        if self.only_if_arg_nonzero is not None and not 0 <= self.only_if_arg_nonzero <= 5:
            raise ValueError(f"argument index must be in 0..5, got {self.only_if_arg_nonzero}")
        if self.only_if_bits is not None:
            index, bits, _ = self.only_if_bits
            if not 0 <= index <= 5 or not 0 < bits <= 0xFFFFFFFF:
                raise ValueError(f"bad argument condition {self.only_if_bits!r}")
            if self.only_if_arg_nonzero is not None:
                raise ValueError("one argument condition per rule")

    @property
    def ret(self) -> int:
        """The SECCOMP_RET_* value the filter returns when the rule fires."""
        if self.action == "trace":
            return SECCOMP_RET_TRACE
        return SECCOMP_RET_ERRNO | self.errno


# --- a tiny assembler with labels and automatic JA trampolines -------------


class _Label:
    __slots__ = ()


@dataclass
class _Insn:
    code: int
    k: int = 0
    # Conditional jumps: a label, or None for "the instruction after me".
    jt: _Label | None = None
    jf: _Label | None = None
    far_t: bool = False
    far_f: bool = False

    @property
    def conditional(self) -> bool:
        return self.code in (BPF_JMP_JEQ_K, BPF_JMP_JGT_K, BPF_JMP_JGE_K, BPF_JMP_JSET_K)

    @property
    def size(self) -> int:
        return 1 + self.far_t + self.far_f


def _layout(items: list[_Insn | _Label]) -> tuple[list[int], dict[_Label, int], int]:
    addrs: list[int] = []
    labels: dict[_Label, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, _Label):
            labels[item] = pc
            addrs.append(pc)
        else:
            addrs.append(pc)
            pc += item.size
    return addrs, labels, pc


def _assemble(items: list[_Insn | _Label]) -> bytes:
    """Resolve labels, widening far conditional branches through JA until stable.

    Offsets count from the instruction after the jump. A branch too far for
    8 bits gets `ja target` right after the conditional (jt or jf = 0 points
    at it); widening only moves targets further away, so the loop ends.
    """
    while True:
        addrs, labels, _ = _layout(items)
        changed = False
        for item, pc in zip(items, addrs, strict=True):
            if isinstance(item, _Label) or not item.conditional:
                continue
            t, f = _targets(item, pc, labels)
            if not item.far_t and t - (pc + 1) > 255:
                item.far_t = changed = True
            if not item.far_f and f - (pc + 1) > 255:
                item.far_f = changed = True
        if not changed:
            break

    addrs, labels, total = _layout(items)
    if total > BPF_MAXINSNS:
        raise ValueError(f"filter needs {total} instructions, the kernel allows {BPF_MAXINSNS}")
    out = bytearray()
    for item, pc in zip(items, addrs, strict=True):
        if isinstance(item, _Label):
            continue
        if not item.conditional:
            out += SOCK_FILTER.pack(item.code, 0, 0, item.k)
        else:
            t, f = _targets(item, pc, labels)
            tramps = [x for x, far in ((t, item.far_t), (f, item.far_f)) if far]
            jt = 0 if item.far_t else _forward(t, pc + 1)
            jf = len(tramps) - 1 if item.far_f else _forward(f, pc + 1)
            assert jt <= 255 and jf <= 255
            out += SOCK_FILTER.pack(item.code, jt, jf, item.k)
            for i, target in enumerate(tramps):
                out += SOCK_FILTER.pack(BPF_JMP_JA, 0, 0, _forward(target, pc + 2 + i))
    return bytes(out)


def _targets(item: _Insn, pc: int, labels: dict[_Label, int]) -> tuple[int, int]:
    after = pc + item.size  # "next" means past any trampolines
    t = labels[item.jt] if item.jt is not None else after
    f = labels[item.jf] if item.jf is not None else after
    return t, f


def _forward(target: int, base: int) -> int:
    # cBPF only jumps forward: the kernel's checker rejects anything else.
    if target < base:
        raise AssertionError("backward jump in seccomp program")
    return target - base


# --- the filter ------------------------------------------------------------


def _ld(offset: int) -> _Insn:
    return _Insn(BPF_LD_W_ABS, offset)


def _ret(value: int) -> _Insn:
    return _Insn(BPF_RET_K, value)


def _action_block(rule: TrapRule) -> list[_Insn | _Label]:
    if rule.only_if_bits is not None:
        # Flags arguments are ints: their low word is all there is to test.
        index, bits, when_set = rule.only_if_bits
        fire, allow = _Label(), _Label()
        return [
            _ld(SECCOMP_DATA_ARGS + 8 * index),
            _Insn(BPF_JMP_JSET_K, bits, jt=fire if when_set else allow,
                  jf=allow if when_set else fire),
            fire,
            _ret(rule.ret),
            allow,
            _ret(SECCOMP_RET_ALLOW),
        ]
    if rule.only_if_arg_nonzero is None:
        return [_ret(rule.ret)]
    # A 64-bit argument is non-zero when either 32-bit half is; x86_64 is
    # little-endian so the low word comes first in seccomp_data.args[i].
    low = SECCOMP_DATA_ARGS + 8 * rule.only_if_arg_nonzero
    fire, allow = _Label(), _Label()
    return [
        _ld(low),
        _Insn(BPF_JMP_JEQ_K, 0, jt=None, jf=fire),
        _ld(low + 4),
        _Insn(BPF_JMP_JEQ_K, 0, jt=allow, jf=None),
        fire,
        _ret(rule.ret),
        allow,
        _ret(SECCOMP_RET_ALLOW),
    ]


def _search(numbers: list[int], rules: Mapping[int, TrapRule]) -> list[_Insn | _Label]:
    """Binary search over sorted numbers; the accumulator holds nr on entry."""
    if len(numbers) <= _LINEAR_MAX:
        items: list[_Insn | _Label] = []
        for nr in numbers:
            miss = _Label()
            items.append(_Insn(BPF_JMP_JEQ_K, nr, jt=None, jf=miss))
            items += _action_block(rules[nr])
            items.append(miss)
        items.append(_ret(SECCOMP_RET_ALLOW))
        return items
    mid = len(numbers) // 2
    upper = _Label()
    return [
        _Insn(BPF_JMP_JGE_K, numbers[mid], jt=upper, jf=None),
        *_search(numbers[:mid], rules),
        upper,
        *_search(numbers[mid:], rules),
    ]


def build_filter(trapped: Mapping[int, TrapRule]) -> bytes:
    """Assemble the seccomp program for these x86_64 syscall numbers.

    Returns the raw array of struct sock_filter (8 bytes each), ready for
    install_filter. Raises ValueError for numbers outside the native table
    or a program longer than BPF_MAXINSNS.
    """
    for nr, rule in trapped.items():
        if not isinstance(nr, int) or not 0 <= nr < X32_SYSCALL_BIT:
            raise ValueError(f"not a native x86_64 syscall number: {nr!r}")
        if not isinstance(rule, TrapRule):
            raise TypeError(f"syscall {nr}: expected a TrapRule, got {type(rule).__name__}")
    kill, allow, enosys = _Label(), _Label(), _Label()
    items: list[_Insn | _Label] = [
        _ld(SECCOMP_DATA_ARCH),
        _Insn(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, jt=None, jf=kill),
        _ld(SECCOMP_DATA_NR),
        _Insn(BPF_JMP_JEQ_K, 0xFFFFFFFF, jt=allow, jf=None),
        _Insn(BPF_JMP_JGE_K, X32_SYSCALL_BIT, jt=enosys, jf=None),
        *_search(sorted(trapped), trapped),
        kill,
        _ret(SECCOMP_RET_KILL_PROCESS),
        allow,
        _ret(SECCOMP_RET_ALLOW),
        enosys,
        _ret(_ENOSYS_RET),
    ]
    return _assemble(items)


# --- installing it ---------------------------------------------------------

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SYS_seccomp = 317  # x86_64


class _SockFprog(ctypes.Structure):
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(program: bytes) -> None:
    """Install program as a seccomp filter on the calling thread.

    Meant for a forked child just before execve: the filter survives execve
    and is inherited by every descendant (seccomp(2)). PR_SET_NO_NEW_PRIVS
    is set first, which is what lets an unprivileged process install a
    filter at all (otherwise EACCES) and is harmless for the tracee, since
    set-uid binaries could not be traced usefully anyway. Uses seccomp(2)
    and falls back to prctl(PR_SET_SECCOMP) on kernels before 3.17.
    Raises OSError with the kernel's errno on failure.
    """
    if not program or len(program) % SOCK_FILTER.size:
        raise ValueError("a seccomp program is a non-empty array of 8-byte instructions")
    count = len(program) // SOCK_FILTER.size
    if count > BPF_MAXINSNS:
        raise ValueError(f"program has {count} instructions, the kernel allows {BPF_MAXINSNS}")
    libc = ctypes.CDLL(None, use_errno=True)
    # Both buffers must stay alive until the call returns; the kernel copies
    # the program (seccomp_prepare_filter), so nothing is needed afterwards.
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    c_long = ctypes.c_long

    if libc.prctl(c_long(PR_SET_NO_NEW_PRIVS), c_long(1), c_long(0), c_long(0), c_long(0)):
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {errno_mod.errorcode.get(err, err)}")

    rc = libc.syscall(
        c_long(SYS_seccomp), c_long(SECCOMP_SET_MODE_FILTER), c_long(0), ctypes.byref(fprog)
    )
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err == errno_mod.ENOSYS:
        rc = libc.prctl(
            c_long(PR_SET_SECCOMP),
            c_long(SECCOMP_MODE_FILTER),
            ctypes.byref(fprog),
            c_long(0),
            c_long(0),
        )
        if rc == 0:
            return
        err = ctypes.get_errno()
    raise OSError(err, f"installing the seccomp filter failed: {errno_mod.errorcode.get(err, err)}")
