"""The seccomp program: checked by a cBPF interpreter here, then on the real kernel.

The interpreter validates programs the way the kernel does before accepting
them (bpf_check_classic + seccomp_check_filter: known opcodes only, aligned
loads inside struct seccomp_data, forward jumps that stay in the program, a
RET at the end) and runs them over struct seccomp_data bytes.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
import signal
import socket
import struct
import sys
import textwrap
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    BPF_JMP_JA,
    BPF_JMP_JEQ_K,
    BPF_JMP_JGE_K,
    BPF_JMP_JGT_K,
    BPF_JMP_JSET_K,
    BPF_LD_W_ABS,
    BPF_MAXINSNS,
    BPF_RET_K,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRACE,
    X32_SYSCALL_BIT,
    TrapRule,
    build_filter,
    install_filter,
)

SYS_recvfrom = 45
SYS_uname = 63
SYS_getppid = 110
SECCOMP_DATA = struct.Struct("<iIQ6Q")
U64 = 2**64 - 1


# --- a classic BPF interpreter, enough for seccomp -----------------------


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    assert len(program) % 8 == 0
    return [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]


def validate(program: bytes) -> None:
    insns = decode(program)
    assert 1 <= len(insns) <= BPF_MAXINSNS
    for pc, (code, jt, jf, k) in enumerate(insns):
        remaining = len(insns) - pc - 1
        if code == BPF_LD_W_ABS:
            assert k % 4 == 0 and k < SECCOMP_DATA.size, f"bad load at {pc}"
        elif code == BPF_JMP_JA:
            assert k < remaining, f"ja out of program at {pc}"
        elif code in (BPF_JMP_JEQ_K, BPF_JMP_JGT_K, BPF_JMP_JGE_K, BPF_JMP_JSET_K):
            assert jt < remaining and jf < remaining, f"jump out of program at {pc}"
        elif code == BPF_RET_K:
            pass
        else:
            raise AssertionError(f"opcode {code:#x} at {pc}")
    assert insns[-1][0] == BPF_RET_K


def run(program: bytes, nr: int, arch: int, args: tuple[int, ...] = (0,) * 6) -> int:
    data = SECCOMP_DATA.pack(nr, arch, 0x401000, *args)
    insns = decode(program)
    acc = pc = 0
    for _ in range(len(insns) + 1):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == BPF_LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == BPF_JMP_JA:
            pc += k
        elif code == BPF_JMP_JEQ_K:
            pc += jt if acc == k else jf
        elif code == BPF_JMP_JGT_K:
            pc += jt if acc > k else jf
        elif code == BPF_JMP_JGE_K:
            pc += jt if acc >= k else jf
        elif code == BPF_JMP_JSET_K:
            pc += jt if acc & k else jf
        elif code == BPF_RET_K:
            return k
    raise AssertionError("program did not return")


def expected(rules: Mapping[int, TrapRule], nr: int, arch: int, args: tuple[int, ...]) -> int:
    if arch != AUDIT_ARCH_X86_64:
        return SECCOMP_RET_KILL_PROCESS
    if nr == -1:
        return SECCOMP_RET_ALLOW
    if nr & 0xFFFFFFFF >= X32_SYSCALL_BIT:
        return SECCOMP_RET_ERRNO | errno.ENOSYS
    rule = rules.get(nr)
    if rule is None:
        return SECCOMP_RET_ALLOW
    if rule.only_if_arg_nonzero is not None and args[rule.only_if_arg_nonzero] == 0:
        return SECCOMP_RET_ALLOW
    if rule.action == "trace":
        return SECCOMP_RET_TRACE
    return SECCOMP_RET_ERRNO | rule.errno


# --- strategies -----------------------------------------------------------

trap_rules = st.one_of(
    st.builds(
        TrapRule,
        action=st.just("trace"),
        only_if_arg_nonzero=st.none() | st.integers(0, 5),
    ),
    st.builds(
        TrapRule,
        action=st.just("errno"),
        errno=st.integers(1, 4095),
        only_if_arg_nonzero=st.none() | st.integers(0, 5),
    ),
)
tables = st.dictionaries(st.integers(0, 470), trap_rules, max_size=120)
arg_values = st.sampled_from([0, 1, 1 << 32, U64, 0xFFFFFFFF]) | st.integers(0, U64)
arg_tuples = st.tuples(*[arg_values] * 6)
archs = st.sampled_from([AUDIT_ARCH_X86_64] * 6 + [AUDIT_ARCH_I386]) | st.integers(0, 2**32 - 1)


@st.composite
def table_and_call(draw: st.DrawFn) -> tuple[dict[int, TrapRule], int, int, tuple[int, ...]]:
    rules = draw(tables)
    near = st.sampled_from(sorted(rules)) if rules else st.integers(0, 470)
    nr = draw(
        near
        | near.map(lambda n: n + 1)
        | st.integers(0, 600)
        | st.integers(0, 600).map(lambda n: n | X32_SYSCALL_BIT)
        | st.integers(-(2**31), 2**31 - 1)
    )
    return rules, nr, draw(archs), draw(arg_tuples)


# --- the program's logic, through the interpreter -------------------------


@settings(max_examples=400)
@given(table_and_call())
def test_every_call_gets_the_intended_action(case: tuple) -> None:
    rules, nr, arch, args = case
    program = build_filter(rules)
    validate(program)
    assert run(program, nr, arch, args) == expected(rules, nr, arch, args)


@given(tables, st.integers(-(2**31), 2**31 - 1))
def test_wrong_arch_is_killed(rules: dict[int, TrapRule], nr: int) -> None:
    program = build_filter(rules)
    assert run(program, nr, AUDIT_ARCH_I386) == SECCOMP_RET_KILL_PROCESS
    assert run(program, nr, 0) == SECCOMP_RET_KILL_PROCESS


@given(tables, st.integers(0, 2**30 - 1))
def test_x32_syscalls_get_enosys(rules: dict[int, TrapRule], nr: int) -> None:
    program = build_filter(rules)
    assert run(program, nr | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64) == SECCOMP_RET_ERRNO | errno.ENOSYS


def test_nr_minus_one_is_allowed_so_a_skipped_call_keeps_its_result() -> None:
    program = build_filter({0: TrapRule("trace")})
    assert run(program, -1, AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW
    assert run(program, -2, AUDIT_ARCH_X86_64) == SECCOMP_RET_ERRNO | errno.ENOSYS


def test_recvfrom_traps_only_when_src_addr_is_not_null() -> None:
    program = build_filter({SYS_recvfrom: TrapRule("trace", only_if_arg_nonzero=4)})
    validate(program)

    def action(src_addr: int) -> int:
        return run(program, SYS_recvfrom, AUDIT_ARCH_X86_64, (3, 0x7FFF0000, 512, 0, src_addr, 0))

    assert action(0) == SECCOMP_RET_ALLOW
    assert action(0x7FFC1234) == SECCOMP_RET_TRACE
    assert action(1 << 32) == SECCOMP_RET_TRACE  # only the high word set
    assert action(U64) == SECCOMP_RET_TRACE


def test_other_arguments_do_not_matter_for_an_arg_rule() -> None:
    program = build_filter({SYS_recvfrom: TrapRule("trace", only_if_arg_nonzero=4)})
    noisy = (U64, U64, U64, U64, 0, U64)
    assert run(program, SYS_recvfrom, AUDIT_ARCH_X86_64, noisy) == SECCOMP_RET_ALLOW


def test_empty_table_allows_everything_native() -> None:
    program = build_filter({})
    validate(program)
    for nr in (0, 1, 59, 435, 1000):
        assert run(program, nr, AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize("with_args", [False, True])
def test_all_syscalls_trapped_still_assembles_with_valid_offsets(with_args: bool) -> None:
    rules = {
        nr: TrapRule(
            "errno" if nr % 3 else "trace",
            errno=(nr % 4095) + 1 if nr % 3 else 0,
            only_if_arg_nonzero=nr % 6 if with_args else None,
        )
        for nr in range(463)
    }
    program = build_filter(rules)
    validate(program)
    # Far branches went through JA trampolines.
    assert any(code == BPF_JMP_JA for code, *_ in decode(program))
    for nr in range(-1, 470):
        for args in ((0,) * 6, (1,) * 6, (1 << 63,) * 6):
            assert run(program, nr, AUDIT_ARCH_X86_64, args) == expected(
                rules, nr, AUDIT_ARCH_X86_64, args
            )


def test_program_over_the_kernel_limit_is_refused() -> None:
    rules = {nr: TrapRule("trace", only_if_arg_nonzero=0) for nr in range(1000)}
    with pytest.raises(ValueError, match="4096"):
        build_filter(rules)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"action": "kill"},
        {"action": "errno"},
        {"action": "errno", "errno": 4096},
        {"action": "trace", "errno": 1},
        {"action": "trace", "only_if_arg_nonzero": 6},
    ],
)
def test_bad_rules_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrapRule(**kwargs)


@pytest.mark.parametrize("nr", [-1, X32_SYSCALL_BIT, 2**32])
def test_numbers_outside_the_native_table_are_refused(nr: int) -> None:
    with pytest.raises(ValueError):
        build_filter({nr: TrapRule("trace")})


# --- the real kernel ------------------------------------------------------


def in_child(body: Callable[[], int]) -> int:
    """Run body in a forked child and return its raw wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def libc_syscall(*args: int | ctypes.c_void_p | ctypes.Array) -> tuple[int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    rc = libc.syscall(*conv)
    return rc, ctypes.get_errno()


def status_line(name: str) -> str:
    with open("/proc/self/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(name + ":"))


def test_installed_filter_fails_uname_with_enosys_and_leaves_getppid_alone() -> None:
    def body() -> int:
        install_filter(build_filter({SYS_uname: TrapRule("errno", errno=errno.ENOSYS)}))
        if status_line("NoNewPrivs") != "1" or status_line("Seccomp") != "2":
            return 3
        buf = ctypes.create_string_buffer(6 * 65)
        if libc_syscall(SYS_uname, ctypes.addressof(buf)) != (-1, errno.ENOSYS):
            return 4
        rc, _ = libc_syscall(SYS_getppid)
        return 0 if rc > 0 else 5

    status = in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_filter_survives_execve() -> None:
    script = textwrap.dedent(
        f"""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(390)
        rc = libc.syscall(ctypes.c_long({SYS_uname}), buf)
        sys.exit(0 if rc == -1 and ctypes.get_errno() == {errno.ENOSYS} else 1)
        """
    )

    def body() -> int:
        install_filter(build_filter({SYS_uname: TrapRule("errno", errno=errno.ENOSYS)}))
        os.execv(sys.executable, [sys.executable, "-I", "-c", script])

    status = in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_arg_rule_checks_both_halves_on_the_real_kernel() -> None:
    def body() -> int:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.send(b"x")
        install_filter(
            build_filter({SYS_recvfrom: TrapRule("errno", errno.EPERM, only_if_arg_nonzero=4)})
        )
        buf = ctypes.create_string_buffer(16)
        addr = ctypes.create_string_buffer(128)
        addrlen = ctypes.c_uint(128)
        null = ctypes.c_void_p(0)
        # NULL src_addr: allowed, receives the datagram.
        if libc_syscall(SYS_recvfrom, a.fileno(), buf, 16, 0, null, null)[0] != 1:
            return 3
        # Real pointer: refused by the filter.
        got = libc_syscall(SYS_recvfrom, a.fileno(), buf, 16, 0, addr, ctypes.byref(addrlen))
        if got != (-1, errno.EPERM):
            return 4
        # Only the high word set: refused before the kernel could EFAULT on it.
        got = libc_syscall(SYS_recvfrom, a.fileno(), buf, 16, 0, 1 << 32, ctypes.byref(addrlen))
        return 0 if got == (-1, errno.EPERM) else 5

    status = in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def int80_getpid() -> int:
    """Call i386 getpid (20) through `int 0x80` from this 64-bit process."""
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"  # mov eax, 20; int 0x80; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    func = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return func()


def test_int80_from_a_64_bit_process_is_killed() -> None:
    control = in_child(lambda: 0 if int80_getpid() == os.getpid() else 3)
    if not (os.WIFEXITED(control) and os.WEXITSTATUS(control) == 0):
        pytest.skip(f"no working int 0x80 here (ia32 emulation off?), status {control:#x}")

    def body() -> int:
        install_filter(build_filter({}))
        int80_getpid()
        return 4

    status = in_child(body)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, status


def test_install_filter_refuses_a_malformed_program() -> None:
    with pytest.raises(ValueError):
        install_filter(b"\x06\x00")


def test_kernel_rejects_a_bad_program_with_einval() -> None:
    bad_load = struct.pack("<HBBI", BPF_LD_W_ABS, 0, 0, 64) + struct.pack(
        "<HBBI", BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW
    )

    def body() -> int:
        try:
            install_filter(bad_load)
        except OSError as e:
            return 0 if e.errno == errno.EINVAL else 3
        return 4

    status = in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
