"""The ptrace engine: one thread that owns every tracee and applies handler outcomes.

Shape of the loop: drain waitpid(-1, WNOHANG|__WALL) until it has nothing more,
then sleep. While no thread is parked only a child can need us, so the sleep is
a blocking waitpid itself: measured here, it serves a stop in about two thirds
of the time a poll-and-wake-up round takes. While some thread is parked, sleep
in poll() on two fds: the SIGCHLD wake-up pipe (Python's set_wakeup_fd, written
by the C signal handler the instant a child changes state) and the session's
wake-up pipe (an agent answer for a parked thread). Draining before sleeping
makes the pair race-free. The poll then times out every few milliseconds to
look for signals the parked thread should see.

Stops and what we do with them (ptrace(2), all under PTRACE_SEIZE):

  seccomp stop (PTRACE_EVENT_SECCOMP)  syscall entry: run the handler, apply outcome
  syscall-exit stop (SIGTRAP|0x80)     only when an outcome asked for it
  fork/vfork/clone event               learn the new thread/process and its memory
  exec event                           new address space; a non-leader exec takes
                                       over the leader's tid (GETEVENTMSG = old tid)
  PTRACE_EVENT_STOP with a stop signal group-stop: PTRACE_LISTEN so SIGCONT works
  PTRACE_EVENT_STOP otherwise          new child's first stop or an interrupt: resume
  other stops                          signal-delivery-stop: deliver the signal as is

Memory the handlers need to write (rewritten paths) lives in scratch mappings
per address space, made by turning the first trapped syscall after an exec into
an mmap and then re-executing the original syscall (rip -= 2); each thread in a
rewritten call holds a slot until the call exits, and when all are held another
mapping is made the same way. Nothing is ever
written below the stack pointer: Go's goroutine stacks are too small for that.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor import kernel as k
from syscalls.base import PASS, Call, Outcome, Park, Pass, Return, Rewrite

ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
SCRATCH_SLOT = 4096
SCRATCH_SLOTS = 64
SYS_MMAP = 9
# The wait status of a seccomp stop: stopped (0x7f) by SIGTRAP, event SECCOMP.
SECCOMP_STOP = (k.PTRACE_EVENT_SECCOMP << 16) | (signal.SIGTRAP << 8) | 0x7F
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
PARK_POLL_MS = 10
CLONE_VM = 0x00000100
CLONE_THREAD = 0x00010000
_U64 = (1 << 64) - 1


class NeedScratch(Exception):
    """A handler asked for scratch memory while every slot is in use."""


class NeedPodFilter(Exception):
    """A handler is about to give a process a pod path, and the process has not yet the
    filter that traps what then matters (fstat of the copy, getcwd in a pod dir)."""


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class AddressSpace:
    """One mm: shared by threads and vfork children, copied by fork."""

    def __init__(self, opener: int, regions: tuple[int, ...] = ()) -> None:
        self.opener = opener
        self.regions: list[int] = []  # scratch mappings made in this mm
        self.free: list[int] = []  # addresses of unused slots
        self.scratch_failed = False
        self._mem: k.Memory | None = None
        for base in regions:
            self.add_region(base)

    def add_region(self, base: int) -> None:
        self.regions.append(base)
        self.free.extend(base + i * SCRATCH_SLOT for i in range(SCRATCH_SLOTS - 1, -1, -1))

    @property
    def mem(self) -> k.Memory:
        if self._mem is None:
            self._mem = k.Memory(self.opener)
        return self._mem

    def close(self) -> None:
        if self._mem is not None:
            self._mem.close()
            self._mem = None


class Process:
    def __init__(self, tgid: int, mm: AddressSpace) -> None:
        self.tgid = tgid
        self.mm = mm
        self.threads: set[int] = set()
        self.pod_filter = False  # the second filter is installed (inherited by children)
        self._pidfd = -1
        self._comm: str | None = None

    @property
    def comm(self) -> str:
        if self._comm is None:
            self._comm = k.read_comm(self.tgid)
        return self._comm

    def pidfd(self) -> int:
        if self._pidfd < 0:
            self._pidfd = k.pidfd_open(self.tgid)
        return self._pidfd

    def exec_happened(self) -> None:
        self._comm = None

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


@dataclass(slots=True)
class ExitPlan:
    call: CallView | None = None
    restore: dict[int, int] | None = None
    hook: Callable[[Any], None] | None = None
    result: int | None = None
    inject: k.Regs | None = None  # regs to restore after an injected syscall (mmap, seccomp)
    injected: Callable[[Thread, int], None] | None = None  # gets the injected call's result
    interrupted_nr: int | None = None  # a parked call we broke off for a signal


@dataclass(slots=True)
class Parked:
    call: CallView
    future: concurrent.futures.Future[Any]
    then: Callable[[Call, Any], Outcome]
    on_abandon: Callable[[], None] | None


@dataclass(slots=True)
class Thread:
    tid: int
    proc: Process
    exit: ExitPlan | None = None
    parked: Parked | None = None
    slot: int | None = None
    held_status: list[int] = field(default_factory=list)


class CallView:
    """The Call a handler sees (syscalls/base.py), backed by one stopped thread."""

    __slots__ = ("_tracer", "thread", "regs", "tid", "tgid", "nr", "args", "started",
                 "result")

    def __init__(self, tracer: Tracer, thread: Thread, regs: k.Regs, nr: int) -> None:
        self._tracer = tracer
        self.thread = thread
        self.regs = regs
        self.tid = thread.tid
        self.tgid = thread.proc.tgid
        self.nr = nr
        self.args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9]
        self.started = time.monotonic()
        self.result = 0

    @property
    def name(self) -> str:
        return k.SYSCALL_NAMES.get(self.nr, str(self.nr))

    @property
    def comm(self) -> str:
        return self.thread.proc.comm

    def read(self, addr: int, size: int) -> bytes:
        return self.thread.proc.mm.mem.read(addr, size)

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        return self.thread.proc.mm.mem.read_cstring(addr, limit)

    def write(self, addr: int, data: bytes) -> None:
        self.thread.proc.mm.mem.write(addr, data)

    def scratch(self, data: bytes) -> int:
        mm = self.thread.proc.mm
        if len(data) > SCRATCH_SLOT or mm.scratch_failed:
            raise OSError(errno.ENOMEM, "no scratch memory in the tracee")
        if self.thread.slot is None:
            if not mm.free:
                raise NeedScratch  # the engine maps more and runs the handler again
            self.thread.slot = mm.free.pop()
        mm.mem.write(self.thread.slot, data)
        return self.thread.slot

    def dup_fd(self, fd: int) -> int:
        return k.pidfd_getfd(self.thread.proc.pidfd(), fd)

    def pod_aware(self) -> None:
        if self._tracer.pod_filter is not None and not self.thread.proc.pod_filter:
            raise NeedPodFilter

    def set_result(self, value: int) -> None:
        self.result = value
        self.regs.rax = value & _U64


class Tracer:
    """Runs the tracee tree to completion; see the module docstring for the loop."""

    def __init__(
        self,
        handlers: dict[int, Callable[[Call, Any], Outcome]],
        session: Any,
        wake_fd: int,
        take_wakeups: Callable[[], list[tuple[int, concurrent.futures.Future[Any]]]],
        pod_filter: bytes | None = None,
    ) -> None:
        self.handlers = handlers
        if pod_filter is not None and len(pod_filter) + 16 > SCRATCH_SLOT:
            raise ValueError("the pod filter does not fit in a scratch slot")
        self.pod_filter = pod_filter
        self.session = session
        self.threads: dict[int, Thread] = {}
        self.main_pid = 0
        self.main_status: int | None = None
        self.foreign: dict[int, Callable[[int], None]] = {}
        self._wake_fd = wake_fd
        self._take_wakeups = take_wakeups
        self._parked: set[int] = set()
        self._unknown_stops: dict[int, list[int]] = {}
        self._chld_r, self._chld_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._chld_r, select.POLLIN)
        self._poll.register(wake_fd, select.POLLIN)
        self._old_wakeup = -1
        self._group_stopped: set[int] = set()
        self._self_stop_at: float | None = None

    # --- setup ------------------------------------------------------------------------

    def adopt_main(self, pid: int) -> None:
        """Take the freshly forked, already seized COMMAND as the first tracee."""
        self.main_pid = pid
        proc = Process(pid, AddressSpace(pid))
        self._add_thread(pid, proc)

    def _add_thread(self, tid: int, proc: Process) -> Thread:
        th = Thread(tid, proc)
        proc.threads.add(tid)
        self.threads[tid] = th
        return th

    def install_sigchld(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._old_wakeup = signal.set_wakeup_fd(self._chld_w, warn_on_full_buffer=False)

    def close(self) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(self._old_wakeup)
        for th in self.threads.values():
            th.proc.close()
            th.proc.mm.close()
        os.close(self._chld_r)
        os.close(self._chld_w)

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve stops until every tracee is gone; returns the main process's wait status."""
        woken = True
        while True:
            self._drain_waits()
            if woken:
                # Only when poll said so: most loops serve one stop and nothing else,
                # and a read that fails with EAGAIN costs an exception every time.
                self._drain_wakeups()
                woken = False
            if not self.threads:
                break
            if self._self_stop_at is not None:
                self._maybe_stop_self()
            elif not self._parked:
                self._wait_blocking()
                continue
            timeout = PARK_POLL_MS if self._parked or self._self_stop_at else None
            for fd, _ in self._poll.poll(timeout):
                if fd == self._chld_r:
                    try:
                        os.read(self._chld_r, 4096)  # more than that: poll says so again
                    except BlockingIOError:
                        pass
                else:
                    woken = True
            if self._parked:
                self._check_parked_signals()
        assert self.main_status is not None
        return self.main_status

    def _wait_blocking(self) -> None:
        """Nothing is parked, so only a child can need us: wait in waitpid itself,
        which saves a poll and a pipe read on every stop."""
        try:
            tid, status = os.waitpid(-1, k.WALL)
        except ChildProcessError:
            return
        if tid in self.foreign:
            if not os.WIFSTOPPED(status):
                self.foreign.pop(tid)(status)
            return
        self._on_status(tid, status)

    def _drain_waits(self) -> None:
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | k.WALL)
            except ChildProcessError:
                return
            if tid == 0:
                return
            if tid in self.foreign:
                if not os.WIFSTOPPED(status):
                    self.foreign.pop(tid)(status)
                continue
            self._on_status(tid, status)

    def _drain_wakeups(self) -> None:
        for tid, fut in self._take_wakeups():
            th = self.threads.get(tid)
            if th is None or th.parked is None or th.parked.future is not fut:
                continue
            parked = th.parked
            th.parked = None
            self._parked.discard(tid)
            exc = fut.exception()
            result = exc if exc is not None else fut.result()
            try:
                self._apply(th, parked.call, parked.then(parked.call, result))
            except ProcessLookupError:
                pass  # killed while parked (SIGKILL wakes a ptrace-stopped thread): exit follows

    # --- stops --------------------------------------------------------------------------

    def _on_status(self, tid: int, status: int) -> None:
        th = self.threads.get(tid)
        if status == SECCOMP_STOP and th is not None:
            # The stop nearly every wait returns: straight to the handler.
            if self._group_stopped:
                self._group_stopped.discard(tid)
            try:
                self._on_syscall_entry(th)
            except ProcessLookupError:
                pass  # killed while stopped: its exit comes next
            return
        if not os.WIFSTOPPED(status):
            if th is not None:
                self._forget_thread(th)
            if tid == self.main_pid:
                self.main_status = status
                self.kill_all()
            return
        if th is None:
            # A new child's first stop can beat its parent's fork event.
            self._unknown_stops.setdefault(tid, []).append(status)
            return
        sig = os.WSTOPSIG(status)
        event = status >> 16
        self._group_stopped.discard(tid)
        try:
            if sig == (signal.SIGTRAP | 0x80):
                self._on_syscall_exit(th)
            elif event == k.PTRACE_EVENT_SECCOMP:
                self._on_syscall_entry(th)
            elif event == k.PTRACE_EVENT_STOP:
                if sig in STOP_SIGNALS:
                    self._group_stopped.add(tid)
                    k.listen(tid)
                else:
                    k.cont(tid)
            elif event in (k.PTRACE_EVENT_FORK, k.PTRACE_EVENT_VFORK, k.PTRACE_EVENT_CLONE):
                self._on_new_child(th, event)
                k.cont(tid)
            elif event == k.PTRACE_EVENT_EXEC:
                self._on_exec(th)
            elif event:
                k.cont(tid)
            else:
                k.cont(tid, sig)  # signal-delivery-stop: deliver it untouched
        except ProcessLookupError:
            # Killed while stopped (SIGKILL, or its group exec'd): its exit comes next.
            pass

    def request_self_stop(self) -> None:
        """Ctrl-Z: stop ourselves once COMMAND has stopped (called from a signal handler)."""
        self._self_stop_at = time.monotonic() + 0.25

    def _maybe_stop_self(self) -> None:
        assert self._self_stop_at is not None
        if self.main_pid in self._group_stopped or time.monotonic() >= self._self_stop_at:
            self._self_stop_at = None
            os.kill(os.getpid(), signal.SIGSTOP)

    def _forget_thread(self, th: Thread) -> None:
        self._group_stopped.discard(th.tid)
        self.threads.pop(th.tid, None)
        self._parked.discard(th.tid)
        if th.parked is not None and th.parked.on_abandon is not None:
            th.parked.on_abandon()
        self._free_slot(th)
        th.proc.threads.discard(th.tid)
        if not th.proc.threads:
            th.proc.close()

    def kill_all(self) -> None:
        """End every tracee: when COMMAND is gone (like a container whose main process
        ended, nothing outlives it), and as a last resort on the way out."""
        for tgid in {th.proc.tgid for th in self.threads.values()}:
            try:
                os.kill(tgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _on_new_child(self, parent: Thread, event: int) -> None:
        child = k.event_msg(parent.tid)
        if child in self.threads:
            return
        flags = 0
        if event == k.PTRACE_EVENT_CLONE:
            flags = k.get_regs(parent.tid).rdi
        elif event == k.PTRACE_EVENT_VFORK:
            flags = CLONE_VM
        if flags & CLONE_THREAD:
            proc = parent.proc
        else:
            pmm = parent.proc.mm
            mm = pmm if flags & CLONE_VM else AddressSpace(child, tuple(pmm.regions))
            proc = Process(child, mm)
            proc.pod_filter = parent.proc.pod_filter  # seccomp filters are inherited
        self._add_thread(child, proc)
        for status in self._unknown_stops.pop(child, []):
            self._on_status(child, status)

    def _on_exec(self, th: Thread) -> None:
        """A new program in this process: new memory, and only one thread left.

        When a non-leader thread execs, the kernel reports the exec under the
        leader's tid (the thread takes it over; GETEVENTMSG has its old tid) and
        every other thread is gone (de_thread), so whatever state the old
        leader's entry held is stale.
        """
        proc = th.proc
        for tid in list(proc.threads):
            if tid != th.tid:
                self.threads.pop(tid, None)
                proc.threads.discard(tid)
                self._parked.discard(tid)
                self._group_stopped.discard(tid)
        th.exit = None
        th.parked = None
        th.slot = None
        self._parked.discard(th.tid)
        old_mm = proc.mm
        proc.mm = AddressSpace(th.tid)
        if all(t.proc.mm is not old_mm for t in self.threads.values()):
            old_mm.close()  # a vfork parent may still share it
        proc.exec_happened()
        k.cont(th.tid)

    def _on_syscall_entry(self, th: Thread) -> None:
        regs = k.get_regs(th.tid)
        nr = _signed(regs.orig_rax)
        mm = th.proc.mm
        if not mm.regions and not mm.scratch_failed:
            self._inject_mmap(th, regs)
            return
        handler = self.handlers.get(nr)
        if handler is None:
            k.cont(th.tid)
            return
        call = CallView(self, th, regs, nr)
        try:
            outcome = handler(call, self.session)
            if outcome is PASS and th.slot is None:
                k.cont(th.tid)  # the commonest answer: nothing to do
                return
        except NeedScratch:
            # Every slot is held by a thread inside a rewritten call: map another
            # region, then this syscall runs again and the handler with it (handlers
            # are idempotent at entry, as ERESTARTSYS demands anyway). Handlers never
            # change registers themselves, so `regs` is still the entry state.
            self._inject_mmap(th, regs)
            return
        except NeedPodFilter:
            if not mm.scratch_failed:
                self._inject_pod_filter(th, regs)
                return
            th.proc.pod_filter = True  # nowhere to stage it: go on without it
            outcome = handler(call, self.session)
        self._apply(th, call, outcome)

    def _apply(self, th: Thread, call: CallView, outcome: Outcome) -> None:
        tid = th.tid
        if isinstance(outcome, Pass):
            if outcome.on_exit is None:
                self._free_slot(th)
                k.cont(tid)
            else:
                th.exit = ExitPlan(call=call, hook=outcome.on_exit)
                k.resume_to_exit(tid)
        elif isinstance(outcome, Return):
            # orig_rax = -1 skips the call; the kernel leaves rax as we set it
            # (do_syscall_64 does nothing for nr -1), so no exit stop is needed.
            regs = call.regs
            regs.orig_rax = _U64
            regs.rax = outcome.value & _U64
            k.set_regs(tid, regs)
            self._free_slot(th)
            k.cont(tid)
        elif isinstance(outcome, Rewrite):
            regs = call.regs
            restore = {}
            for index, value in outcome.args.items():
                name = ARG_REGS[index]
                restore[index] = getattr(regs, name)
                setattr(regs, name, value & _U64)
            k.set_regs(tid, regs)
            th.exit = ExitPlan(call=call, restore=restore, hook=outcome.on_exit)
            k.resume_to_exit(tid)
        elif isinstance(outcome, Park):
            th.parked = Parked(call, outcome.future, outcome.then, outcome.on_abandon)
            self._parked.add(tid)
            outcome.future.add_done_callback(self.session.waker(tid))
        else:
            raise TypeError(f"handler for {call.name} returned {outcome!r}")

    def _on_syscall_exit(self, th: Thread) -> None:
        plan, th.exit = th.exit, None
        tid = th.tid
        if plan is None:
            k.cont(tid)
            return
        regs = k.get_regs(tid)
        if plan.inject is not None:
            self._finish_inject(th, regs, plan)
            return
        if plan.interrupted_nr is not None:
            self._finish_interrupt(th, regs, plan.interrupted_nr)
            return
        call = plan.call
        assert call is not None
        call.regs = regs
        call.result = _signed(regs.rax)
        if plan.restore:
            for index, value in plan.restore.items():
                setattr(regs, ARG_REGS[index], value)
        if plan.result is not None:
            regs.rax = plan.result & _U64
        if plan.hook is not None:
            plan.hook(call)
        if plan.restore or plan.hook is not None or plan.result is not None:
            k.set_regs(tid, regs)
        self._free_slot(th)
        k.cont(tid)

    def _free_slot(self, th: Thread) -> None:
        if th.slot is not None:
            th.proc.mm.free.append(th.slot)
            th.slot = None

    # --- scratch memory ---------------------------------------------------------------

    def _inject(self, th: Thread, regs: k.Regs, nr: int, args: tuple[int, ...],
                done: Callable[[Thread, int], None]) -> None:
        """Turn this stop's syscall into another (nr, args); at its exit done(thread,
        result) runs, and the original syscall is entered again, handler and all."""
        saved = k.Regs.from_buffer_copy(regs)
        regs.orig_rax = nr
        for name, value in zip(ARG_REGS, args, strict=False):
            setattr(regs, name, value & _U64)
        k.set_regs(th.tid, regs)
        th.exit = ExitPlan(inject=saved, injected=done)
        k.resume_to_exit(th.tid)

    def _finish_inject(self, th: Thread, regs: k.Regs, plan: ExitPlan) -> None:
        assert plan.inject is not None and plan.injected is not None
        plan.injected(th, _signed(regs.rax))
        # Re-execute the original syscall: back up over the 2-byte syscall
        # instruction with rax = its number, as the kernel's own restart does.
        saved = plan.inject
        saved.rip -= 2
        saved.rax = saved.orig_rax
        k.set_regs(th.tid, saved)
        k.cont(th.tid)

    def _inject_mmap(self, th: Thread, regs: k.Regs) -> None:
        # PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, fd -1
        self._inject(th, regs, SYS_MMAP, (0, SCRATCH_SLOT * SCRATCH_SLOTS, 0x3, 0x22, -1, 0),
                     self._mapped)

    @staticmethod
    def _mapped(th: Thread, addr: int) -> None:
        mm = th.proc.mm
        if addr < 0:
            mm.scratch_failed = True
        else:
            mm.add_region(addr)

    def _inject_pod_filter(self, th: Thread, regs: k.Regs) -> None:
        """Make this syscall a seccomp(SET_MODE_FILTER, TSYNC) adding the pod filter to
        every thread of the process; the original call runs again afterwards.

        The filter program and its sock_fprog go into a scratch slot. TSYNC keeps the
        process's threads on one filter tree, which later clones inherit."""
        assert self.pod_filter is not None
        mm = th.proc.mm
        if not mm.free:
            self._inject_mmap(th, regs)  # the handler asks again once there is room
            return
        slot = mm.free.pop()
        count = len(self.pod_filter) // 8
        fprog = count.to_bytes(2, "little") + bytes(6) + (slot + 16).to_bytes(8, "little")
        mm.mem.write(slot, fprog + self.pod_filter)
        th.slot = slot
        self._inject(th, regs, SYS_SECCOMP,
                     (SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, slot),
                     self._filtered)

    def _filtered(self, th: Thread, result: int) -> None:
        # Marked done even on failure: a process that cannot take it (its threads on
        # diverging filters) keeps working, with fstat of copies showing the copy.
        th.proc.pod_filter = True
        self._free_slot(th)

    # --- parked threads and signals ---------------------------------------------------

    def _check_parked_signals(self) -> None:
        for tid in list(self._parked):
            th = self.threads.get(tid)
            if th is None or th.parked is None:
                self._parked.discard(tid)
                continue
            if k.deliverable_signal_pending(tid):
                try:
                    self._interrupt(th)
                except ProcessLookupError:
                    pass  # it was SIGKILL: the thread is gone and its exit follows

    def _interrupt(self, th: Thread) -> None:
        """Break off a parked call because a signal wants the thread.

        The call is skipped now and, at its exit stop, made to return -ERESTARTSYS
        with its number back in orig_rax: the kernel's signal code then either
        restarts it (SA_RESTART, or a signal with no handler) or turns it into
        EINTR, exactly as for a call blocked in the kernel (arch/x86/kernel/signal.c).
        """
        parked = th.parked
        assert parked is not None
        th.parked = None
        self._parked.discard(th.tid)
        regs = parked.call.regs
        nr = parked.call.nr
        regs.orig_rax = _U64
        k.set_regs(th.tid, regs)
        th.exit = ExitPlan(interrupted_nr=nr)
        k.resume_to_exit(th.tid)

    def _finish_interrupt(self, th: Thread, regs: k.Regs, nr: int) -> None:
        if k.deliverable_signal_pending(th.tid):
            regs.orig_rax = nr
            regs.rax = (-k.ERESTARTSYS) & _U64
        else:
            # The signal went elsewhere meanwhile: re-enter the call ourselves.
            regs.rip -= 2
            regs.rax = nr
        k.set_regs(th.tid, regs)
        self._free_slot(th)
        k.cont(th.tid)

