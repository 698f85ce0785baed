"""The syscall table: one place that names every trapped syscall and builds the filter."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
from test_seccomp import run as run_bpf  # the cBPF interpreter of the filter tests
from test_seccomp import validate

from supervisor import kernel as k
from supervisor.runner import build_program
from supervisor.seccomp import (
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_TRACE,
)
from syscalls.table import FULL, PARTIAL, REFUSED, TABLE

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def test_table_is_alphabetical_so_it_reads_in_one_place() -> None:
    assert list(TABLE) == sorted(TABLE)


@pytest.mark.skipif(not UNISTD.exists(), reason="kernel headers (linux-libc-dev) not installed")
def test_every_name_resolves_to_its_x86_64_number() -> None:
    numbers = dict(re.findall(r"#define __NR_(\w+) (\d+)", UNISTD.read_text()))
    for name in TABLE:
        assert k.SYSCALL_NUMBERS[name] == int(numbers[name]), name


def test_entries_are_consistent() -> None:
    for name, entry in TABLE.items():
        assert entry.support in (FULL, PARTIAL, REFUSED), name
        assert entry.note, f"{name} needs a note"
        if entry.support == REFUSED:
            assert entry.handler is None and entry.refuse, name
        else:
            assert entry.handler is not None and entry.refuse is None, name
            doc = entry.handler.__doc__ or ""
            assert doc.startswith(("Divert ", "Pass through ")), f"{name}: {doc!r}"
            assert f"{name}(2)" in doc or name in ("faccessat2",), f"{name}: {doc!r}"


def test_the_filters_trap_exactly_the_table() -> None:
    program, pod_program, handlers = build_program()
    validate(program)
    validate(pod_program)
    table_numbers = {k.SYSCALL_NUMBERS[name]: entry for name, entry in TABLE.items()}
    for nr in range(0, 460):
        args = (0, 0, 0, 0, 1, 0)  # arg 4 set: the conditional entries trap too
        action = run_bpf(program, nr, AUDIT_ARCH_X86_64, args)
        later = run_bpf(pod_program, nr, AUDIT_ARCH_X86_64, args)
        entry = table_numbers.get(nr)
        if entry is None:
            assert action == later == SECCOMP_RET_ALLOW, nr
        elif entry.refuse is not None:
            assert action == SECCOMP_RET_ERRNO | entry.refuse, nr
            assert nr not in handlers
        elif entry.pod_only:
            assert (action, later) == (SECCOMP_RET_ALLOW, SECCOMP_RET_TRACE), nr
            assert handlers[nr] is entry.handler
        else:
            assert action == SECCOMP_RET_TRACE, nr
            assert handlers[nr] is entry.handler


@pytest.mark.parametrize(("name", "flags_arg"), [("newfstatat", 3), ("statx", 2)])
def test_fstat_forms_stop_only_once_the_pod_filter_is_added(name: str, flags_arg: int) -> None:
    program, pod_program, _ = build_program()
    nr = k.SYSCALL_NUMBERS[name]
    by_path = [0] * 6
    by_path[flags_arg] = 0x100  # AT_SYMLINK_NOFOLLOW: still a path lookup
    by_fd = [0] * 6
    by_fd[flags_arg] = 0x1000 | 0x100  # AT_EMPTY_PATH: fstat of the dirfd
    assert run_bpf(program, nr, AUDIT_ARCH_X86_64, tuple(by_path)) == SECCOMP_RET_TRACE
    assert run_bpf(pod_program, nr, AUDIT_ARCH_X86_64, tuple(by_path)) == SECCOMP_RET_ALLOW
    assert run_bpf(program, nr, AUDIT_ARCH_X86_64, tuple(by_fd)) == SECCOMP_RET_ALLOW
    assert run_bpf(pod_program, nr, AUDIT_ARCH_X86_64, tuple(by_fd)) == SECCOMP_RET_TRACE


def test_recvfrom_without_an_address_costs_nothing() -> None:
    program, _, _ = build_program()
    nr = k.SYSCALL_NUMBERS["recvfrom"]
    assert run_bpf(program, nr, AUDIT_ARCH_X86_64, (3, 0, 100, 0, 0, 0)) == SECCOMP_RET_ALLOW


def test_escape_hatches_are_refused_in_the_filter() -> None:
    program, _, _ = build_program()
    for name in ("clone3", "io_uring_setup"):
        action = run_bpf(program, k.SYSCALL_NUMBERS[name], AUDIT_ARCH_X86_64)
        assert action == SECCOMP_RET_ERRNO | errno.ENOSYS, name
