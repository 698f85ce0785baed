"""The classic ptrace-supervisor bugs, one test each, with real programs on the simulated cluster.

Every program runs in the laptop namespace, whose only way to the pod network is mirrortrace:
an undiverted connect there fails with ENETUNREACH, so each passing assertion on a body, an
address or an errno means the supervisor got that case right. The C programs live in
tests/programs/tracer (built by tracer_programs.py); each says in its header what it does and
prints "key value" lines that these tests check.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cluster import (
    CLOSED_PORT,
    DNS_IP,
    TIMEOUT_IP,
    UNREACHABLE_IP,
    WEB_FQDN,
    WEB_IP,
    WEB_IP6,
    WEB_PORT,
    Cluster,
)
from podweb import deterministic_bytes
from programs import Programs
from tracer_programs import TracerPrograms, tracer_bins_fixture  # noqa: F401

pytestmark = pytest.mark.integration

HELLO = "hello from web\n"
WEB = f"{WEB_IP}:{WEB_PORT}"
DNS = f"{DNS_IP}:53"


# --- helpers ----------------------------------------------------------------------------------


def shown(res: subprocess.CompletedProcess[Any]) -> str:
    """Everything a run printed, for assertion messages."""
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}--- stderr ---\n{res.stderr}"


def fields(stdout: str) -> dict[str, str]:
    """The first value of each ``key value`` line."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, value)
    return out


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, T, t, Z...), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_for_state(pid: int, states: str, timeout: float) -> str | None:
    """Poll until PID's state is one of ``states``; returns the last state seen."""
    deadline = time.monotonic() + timeout
    state = proc_state(pid)
    while (state is None or state not in states) and time.monotonic() < deadline:
        time.sleep(0.02)
        state = proc_state(pid)
    return state


def gone_or_zombie(pid: int, timeout: float) -> str | None:
    """Wait until PID no longer runs: gone from /proc, or a zombie waiting for init to reap
    it (reaping an orphan is init's job, not mirrortrace's). Returns the last state seen."""
    deadline = time.monotonic() + timeout
    state = proc_state(pid)
    while state not in (None, "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.02)
        state = proc_state(pid)
    return state


class Background:
    """A mirrortrace run in the background whose stdout the test reads line by line."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.seen = ""

    def line(self, timeout: float = 10) -> str:
        """The next stdout line (without the newline); fails the test on EOF or timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"no line from the program within {timeout} s; {self.report()}")
            chunk = os.read(fd, 1)
            if not chunk:
                pytest.fail(f"the program's stdout ended; {self.report()}")
            buf += chunk
        text = buf.decode(errors="replace")
        self.seen += text
        return text.rstrip("\n")

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the exit; returns (mirrortrace's exit status, the rest of stdout)."""
        assert self.proc.stdout is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mirrortrace did not exit within {timeout} s; {self.report()}")
        rest = self.proc.stdout.read().decode(errors="replace")
        self.seen += rest
        return rc, rest

    def report(self) -> str:
        err = ""
        with contextlib.suppress(OSError):
            err = self.stderr_path.read_text(errors="replace")
        return f"stdout so far:\n{self.seen}--- stderr ---\n{err}"


@contextlib.contextmanager
def background(
    cluster: Cluster, argv: Sequence[str], *, own_group_in_our_session: bool = False
) -> Iterator[Background]:
    """Start ``argv`` under mirrortrace with stdout on a pipe; always killed afterwards.

    By default it is started like ``cluster.spawn`` does (a new session). With
    ``own_group_in_our_session`` it gets a new process group in the test's session instead,
    the way a shell starts a job: a group whose parent sits in another group of the same
    session is not orphaned, and only then does the kernel act on SIGTSTP (POSIX: stop
    signals sent to an orphaned process group are discarded).
    """
    with tempfile.NamedTemporaryFile(prefix="mt-stderr-", delete=False) as err:
        stderr_path = Path(err.name)
    try:
        with open(stderr_path, "wb") as err_file:
            if own_group_in_our_session:
                proc: subprocess.Popen[bytes] = subprocess.Popen(
                    cluster.mirrortrace_argv(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err_file,
                    process_group=0,
                    bufsize=0,
                )
            else:
                proc = cluster.spawn(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err_file,
                    bufsize=0,
                )
        bg = Background(proc, stderr_path)
        try:
            yield bg
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
    finally:
        stderr_path.unlink(missing_ok=True)


# --- 1. threads sharing a socket ------------------------------------------------------------


def test_socket_on_one_thread_connect_on_another(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["thread_connect"]], timeout=20)
    assert res.returncode == 0, shown(res)
    assert res.stdout.startswith(f"connect 0\npeer {WEB}\nstatus 200\nbody {HELLO}connect 0\n"), (
        shown(res)
    )
    whoami = fields(res.stdout)["whoami"]
    assert whoami.startswith("198.18."), f"the web server saw {whoami}, not a pod address"


# --- 2. many threads at once --------------------------------------------------------------


def _fnv1a(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def test_200_threads_connecting_at_once_each_get_their_own_stream(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    threads = 200
    res = cluster.run([tracer_bins["many_threads"], str(threads)], timeout=20)
    got = {}
    for line in res.stdout.splitlines():
        if line.startswith("thread "):
            _, index, rest = line.split(" ", 2)
            got[int(index)] = rest
    errors = {i: v for i, v in got.items() if v.startswith("error")}
    assert not errors, f"{len(errors)} threads failed, e.g. {list(errors.items())[:5]}"
    for i in range(threads):
        n = 1000 + 37 * i  # many_threads.c: BASE + 37*i
        want = f"{n} {n} {_fnv1a(deterministic_bytes(n))}"
        assert got.get(i) == want, f"thread {i} (to {WEB_IP6 if i % 2 else WEB_IP})"
    assert res.returncode == 0 and f"ok {threads}\n" in res.stdout, shown(res)


@pytest.mark.parametrize("what", ["open", "resolve"])
def test_200_threads_opening_resolver_files_at_once_all_see_the_pods(
    cluster: Cluster, tracer_bins: TracerPrograms, what: str
) -> None:
    # Each diverted open borrows scratch memory in the program for its path; with many
    # threads inside such calls at once none may fall back to the laptop's file.
    res = cluster.run([tracer_bins["many_opens"], what, "200"], timeout=20)
    bad = [line for line in res.stdout.splitlines() if " bad " in line]
    assert not bad, f"{len(bad)} threads saw the wrong thing, e.g. {bad[:5]}"
    assert res.returncode == 0 and res.stdout.endswith("ok 200\n"), shown(res)


# --- 3. non-blocking connect and connect errnos ------------------------------------------


def test_nonblocking_connect_completes_with_so_error_zero(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["connect_errors"], "nb-ok"], timeout=20)
    assert res.returncode == 0, shown(res)
    first, rest = res.stdout.split("\n", 1)
    assert first in ("connect EINPROGRESS", "connect 0"), shown(res)
    assert rest == f"epollout 1\nso_error 0\npeer {WEB}\nstatus 200\nbody {HELLO}", shown(res)


def test_nonblocking_connect_to_closed_port_gives_econnrefused(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run(
        [tracer_bins["connect_errors"], "nb-fail", WEB_IP, str(CLOSED_PORT)], timeout=20
    )
    assert res.returncode == 0, shown(res)
    assert fields(res.stdout)["result"] == "ECONNREFUSED", shown(res)


def test_nonblocking_connect_to_silent_host_returns_einprogress_then_etimedout(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    # Linux cannot know at once that SYNs will go unanswered: a non-blocking connect says
    # EINPROGRESS immediately and SO_ERROR gives ETIMEDOUT later. Holding the call until
    # the pod gives up (~3 s) would freeze every single-threaded event loop meanwhile.
    argv = [tracer_bins["connect_errors"], "nb-fail", TIMEOUT_IP, str(WEB_PORT)]
    res = cluster.run(argv, timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    assert (values["result"], values["how"]) == ("ETIMEDOUT", "so_error"), shown(res)


@pytest.mark.parametrize(
    ("ip", "port", "errno_name"),
    [
        (WEB_IP, CLOSED_PORT, "ECONNREFUSED"),
        (UNREACHABLE_IP, WEB_PORT, "EHOSTUNREACH"),
        (TIMEOUT_IP, WEB_PORT, "ETIMEDOUT"),  # ~3 s: the pod's tcp_syn_retries=1
    ],
    ids=["closed-port-econnrefused", "unreachable-ehostunreach", "silent-etimedout"],
)
def test_blocking_connect_gives_the_pods_errno(
    cluster: Cluster, tracer_bins: TracerPrograms, ip: str, port: int, errno_name: str
) -> None:
    res = cluster.run([tracer_bins["connect_errors"], "block", ip, str(port)], timeout=20)
    assert res.returncode == 0, shown(res)
    assert fields(res.stdout)["connect"] == f"-1 {errno_name}", shown(res)


def test_connect_with_sndtimeo_gives_up_with_einprogress_like_linux(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    # inet_stream_connect waits at most SO_SNDTIMEO, then returns EINPROGRESS while the
    # handshake goes on; the pod's SYNs to TIMEOUT_IP would only time out after ~3 s.
    argv = [tracer_bins["connect_errors"], "sndtimeo", TIMEOUT_IP, str(WEB_PORT), "1000"]
    res = cluster.run(argv, timeout=20)
    assert res.returncode == 0, shown(res)
    assert fields(res.stdout)["connect"] == "EINPROGRESS", shown(res)


# --- 4. connect interrupted by signals ------------------------------------------------------


def test_connect_interrupted_without_sa_restart_gives_eintr(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["connect_signal"], "eintr"], timeout=20)
    assert res.returncode == 0, shown(res)
    assert res.stdout.startswith("connect -1 EINTR\nhandler 1\n"), shown(res)


def test_connect_interrupted_with_sa_restart_carries_on(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["connect_signal"], "restart"], timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    assert values["handler"] == "1", shown(res)
    assert values["connect"] != "-1 EINTR", "SA_RESTART connect returned EINTR"
    # Linux restarts it (-ERESTARTSYS) and it waits on until the pod's SYNs time out.
    assert values["connect"] == "-1 ETIMEDOUT", shown(res)


def test_sigkill_during_a_held_connect_ends_the_run_with_137(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    with background(cluster, [tracer_bins["connect_signal"], "wait"]) as bg:
        pid = int(bg.line().split()[1])
        assert bg.line() == "connecting"
        time.sleep(0.5)  # inside the connect to TIMEOUT_IP, which takes ~3 s in the pod
        os.kill(pid, signal.SIGKILL)
        rc, _ = bg.finish(timeout=10)
        assert rc == 137, bg.report()
        assert gone_or_zombie(pid, 1) in (None, "Z", "X")


def test_ignored_sigchld_during_a_held_connect_does_not_interrupt_it(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["connect_signal"], "sigchld"], timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    assert values["connect"] == "-1 ETIMEDOUT", shown(res)
    assert values["child_reaped"] == "1", shown(res)


def test_sigstop_and_sigcont_during_a_held_connect_let_it_carry_on(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    # A stop signal has no handler: the kernel restarts the connect after SIGCONT, and it
    # ends as it would have without the stop (the pod's SYNs time out: ETIMEDOUT).
    with background(cluster, [tracer_bins["connect_signal"], "wait"]) as bg:
        pid = int(bg.line().split()[1])
        assert bg.line() == "connecting"
        time.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        state = wait_for_state(pid, "Tt", 3)
        time.sleep(0.5)
        os.kill(pid, signal.SIGCONT)
        rc, rest = bg.finish(timeout=15)
        assert state in ("T", "t"), f"not stopped by SIGSTOP during connect: state {state}"
        assert rc == 0, bg.report()
        assert rest == "connect -1 ETIMEDOUT\n", bg.report()


# --- 5. IPv6 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("native", f"connect 0\npeer [{WEB_IP6}]:{WEB_PORT}\nstatus 200\nbody {HELLO}"),
        ("mapped", f"connect 0\npeer [::ffff:{WEB_IP}]:{WEB_PORT}\nstatus 200\nbody {HELLO}"),
        # tcp_v6_connect: a v4-mapped destination on a v6-only socket is ENETUNREACH.
        ("mapped-v6only", "connect -1 ENETUNREACH\npeer -1 ENOTCONN\n"),
    ],
    ids=["native", "mapped", "mapped-v6only"],
)
def test_ipv6_connect_and_getpeername(
    cluster: Cluster, tracer_bins: TracerPrograms, mode: str, expected: str
) -> None:
    res = cluster.run([tracer_bins["ipv6"], mode], timeout=20)
    assert res.returncode == 0, shown(res)
    assert res.stdout == expected, shown(res)


# --- 6. addresses that come back out --------------------------------------------------------


def test_getpeername_of_diverted_tcp_is_the_remote_and_web_sees_the_pod(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["names"]], timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    assert values["peer"] == WEB, shown(res)
    in_pod = cluster.pod_run([tracer_bins["names"]], timeout=20)
    assert fields(in_pod.stdout)["body"] == values["body"], "web saw another client address"


def test_getsockname_of_diverted_tcp_is_the_pod_side_address(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["names"]], timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    local = values["local"]
    host = local.rsplit(":", 1)[0].strip("[]")
    assert host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), (
        f"getsockname shows the relay side {local}; in the pod it is a pod address"
    )
    # The same connection's /whoami: the address the web server saw is our local address.
    assert host == values["body"], shown(res)


@pytest.mark.parametrize(
    ("mode", "name_line"),
    [("connected", f"peer {DNS}"), ("sendto", f"from {DNS}"), ("recvmsg", f"from {DNS}")],
    ids=["connected", "sendto", "recvmsg"],
)
def test_udp_dns_query_shows_the_nameserver_as_source(
    cluster: Cluster, tracer_bins: TracerPrograms, mode: str, name_line: str
) -> None:
    res = cluster.run([tracer_bins["udp_dns"], mode], timeout=20)
    assert res.returncode == 0, shown(res)
    lines = res.stdout.splitlines()
    assert name_line in lines, shown(res)
    assert {"id_match 1", "rcode 0", f"answer {WEB_IP}"} <= set(lines), shown(res)
    if mode == "recvmsg":
        assert "namelen 16" in lines, shown(res)


# --- 7. the program's buffers, also read-only ones ----------------------------------------


def test_program_buffers_in_rodata_are_left_unchanged(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["rodata"]], timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    # The premise: both really sit in read-only pages.
    assert not values["sockaddr_perms"].startswith("rw"), shown(res)
    assert not values["path_perms"].startswith("rw"), shown(res)
    assert values["connect"] == "0" and values["body"] + "\n" == HELLO, shown(res)
    assert values["resolv_nameserver"] == DNS_IP, "the open was not diverted to the pod's file"
    assert values["sockaddr_unchanged"] == "1", shown(res)
    assert values["path_unchanged"] == "1", shown(res)


# --- 8. registers -------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["regs", "regs_static"])
def test_raw_syscalls_keep_every_preserved_register(
    cluster: Cluster, tracer_bins: TracerPrograms, program: str
) -> None:
    res = cluster.run([tracer_bins[program]], timeout=20)
    assert res.returncode == 0, shown(res)
    lines = res.stdout.splitlines()
    damaged = [line for line in lines if " reg " in line]
    assert not damaged, "registers changed across syscalls:\n" + "\n".join(damaged)
    for call in ("connect", "openat", "sendto"):
        assert f"{call} regs ok" in lines, shown(res)
    # ...and the calls really were diverted.
    assert "connect 0" in lines and f"body {HELLO.strip()}" in lines, shown(res)
    assert f"openat_nameserver {DNS_IP}" in lines, shown(res)
    assert "sendto all" in lines and f"answer {WEB_IP}" in lines, shown(res)


# --- 9. children: vfork, posix_spawn, Go, busybox -------------------------------------------


@pytest.mark.parametrize("how", ["vfork", "posix_spawn"])
def test_child_started_with_vfork_or_posix_spawn_is_diverted(
    cluster: Cluster, tracer_bins: TracerPrograms, how: str
) -> None:
    res = cluster.run([tracer_bins["spawn"], how, tracer_bins["httpget"]], timeout=20)
    assert res.returncode == 0, shown(res)
    assert res.stdout == f"{HELLO}child_status 5\n", shown(res)


def test_go_os_exec_child_is_diverted(cluster: Cluster, tracer_bins: TracerPrograms) -> None:
    argv = [tracer_bins["goexec"], tracer_bins["httpget"], WEB_IP, str(WEB_PORT), "/hello", "3"]
    res = cluster.run(argv, timeout=20)
    assert res.returncode == 0, shown(res)
    assert res.stdout == f"child_output {HELLO}child_exit 3\n", shown(res)


def test_busybox_pipeline_with_service_name(cluster: Cluster, programs: Programs) -> None:
    bb = programs.busybox
    script = f"{bb} wget -qO- http://web:{WEB_PORT}/hello | {bb} tr a-z A-Z"
    res = cluster.run([bb, "sh", "-c", script], timeout=20)
    assert res.returncode == 0, shown(res)
    assert res.stdout == HELLO.upper(), shown(res)


# --- 10. execve from a thread -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "parked"])
def test_execve_from_a_non_leader_thread(
    cluster: Cluster, tracer_bins: TracerPrograms, mode: str
) -> None:
    res = cluster.run([tracer_bins["exec_thread"], mode, tracer_bins["httpget"]], timeout=20)
    assert res.returncode == 7, shown(res)
    assert re.fullmatch(rf"leader \d+\nexec from \d+\n{HELLO}", res.stdout), shown(res)
    leader, exec_from = (int(x) for x in re.findall(r"\d+", res.stdout)[:2])
    assert leader != exec_from, "the exec must come from another thread than the leader"


# --- 11. daemons --------------------------------------------------------------------------


def test_double_forked_daemon_is_traced_and_killed_at_the_end(
    cluster: Cluster, tracer_bins: TracerPrograms, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    state_file = tmp_path / "daemon.state"
    res = cluster.run([tracer_bins["daemon"], str(state_file)], timeout=20)
    assert res.returncode == 0, shown(res)
    state = fields(state_file.read_text())
    pid = int(state["pid"])
    try:
        assert fields(res.stdout)["daemon"] == str(pid), shown(res)
        assert state["tracerpid"] != "0", "the daemon was not traced"
        assert state["connect"] == "0" and state["body"] + "\n" == HELLO, state
        left = gone_or_zombie(pid, 1)
        assert left in (None, "Z", "X"), f"the daemon {pid} still runs (state {left})"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- 12. job control ----------------------------------------------------------------------


def test_kill_stop_and_cont_really_stop_and_resume_the_program(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    with background(cluster, [tracer_bins["stopcont"], "2000"]) as bg:
        pid = int(bg.line().split()[1])
        time.sleep(0.2)
        os.kill(pid, signal.SIGSTOP)
        # A traced task in a group-stop shows "t" (TASK_TRACED); untraced it would be "T".
        state = wait_for_state(pid, "Tt", 3)
        assert state in ("T", "t"), f"not stopped after SIGSTOP: state {state}"
        for _ in range(20):  # and it stays stopped
            time.sleep(0.05)
            state = proc_state(pid)
            assert state in ("T", "t"), f"ran on after SIGSTOP: state {state}"
        os.kill(pid, signal.SIGCONT)
        rc, rest = bg.finish(timeout=15)
        assert rc == 0, bg.report()
        assert rest.endswith(f"connect 0\nstatus 200\nbody {HELLO}done\n"), bg.report()
        slept = int(fields(rest)["slept_ms"])
        assert slept >= 2000 + 700, f"slept {slept} ms: the 1 s stop did not hold it"


def test_ctrl_z_stops_mirrortrace_and_program_and_sigcont_resumes_both(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    argv = [tracer_bins["stopcont"], "1500"]
    with background(cluster, argv, own_group_in_our_session=True) as bg:
        group = bg.proc.pid
        pid = int(bg.line().split()[1])
        time.sleep(0.2)
        os.killpg(group, signal.SIGTSTP)
        program = wait_for_state(pid, "Tt", 3)
        supervisor = wait_for_state(group, "T", 3)
        assert program in ("T", "t"), f"program not stopped by Ctrl-Z: state {program}"
        assert supervisor == "T", f"mirrortrace not stopped by Ctrl-Z: state {supervisor}"
        time.sleep(0.5)
        assert proc_state(pid) in ("T", "t") and proc_state(group) == "T"
        os.killpg(group, signal.SIGCONT)
        rc, rest = bg.finish(timeout=15)
        assert rc == 0, bg.report()
        assert rest.endswith(f"connect 0\nstatus 200\nbody {HELLO}done\n"), bg.report()


# --- 13. no escape from the tracer --------------------------------------------------------


def test_clone3_and_io_uring_setup_give_enosys(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["escape"]], timeout=20)
    lines = res.stdout.splitlines()
    assert "clone3 -1 ENOSYS" in lines, shown(res)
    assert "io_uring_setup -1 ENOSYS" in lines, shown(res)


def test_clone_untraced_child_is_still_traced_and_diverted(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["escape"]], timeout=20)
    assert res.returncode == 0, shown(res)
    values = fields(res.stdout)
    assert values["child_tracerpid"] not in ("0", "-1"), shown(res)
    assert res.stdout.endswith(f"connect 0\nstatus 200\nbody {HELLO}child_status 0\n"), shown(res)


# --- 14. listening on port 0 --------------------------------------------------------------


def test_bind_port_zero_listen_and_loopback_client_stay_local(
    cluster: Cluster, tracer_bins: TracerPrograms
) -> None:
    res = cluster.run([tracer_bins["listen0"]], timeout=20)
    assert res.returncode == 0, shown(res)
    port = int(fields(res.stdout)["port"])
    assert 0 < port < 65536, shown(res)
    assert res.stdout == (
        f"port {port}\nconnect 0\npeer 127.0.0.1:{port}\naccepted 1\necho ping\n"
    ), shown(res)


# --- 15. exit status and signals ----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["sh", "-c", "exit 42"], 42),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["@exit_signal", "segv"], 128 + signal.SIGSEGV),
        (["@exit_signal", "raise", str(int(signal.SIGABRT))], 128 + signal.SIGABRT),
    ],
    ids=["exit-42", "kill-term-self", "sigsegv", "raise-sigabrt"],
)
def test_exit_status_and_death_by_signal_are_passed_on(
    cluster: Cluster, tracer_bins: TracerPrograms, argv: list[str], status: int
) -> None:
    argv = [tracer_bins[a[1:]] if a.startswith("@") else a for a in argv]
    res = cluster.run(argv, timeout=20)
    assert res.returncode == status, shown(res)


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGINT, True)],
    ids=["sigterm-to-mirrortrace", "sighup-to-mirrortrace", "ctrl-c-to-the-group"],
)
def test_signal_to_mirrortrace_reaches_the_program_and_gives_128_plus_n(
    cluster: Cluster, tracer_bins: TracerPrograms, sig: int, to_group: bool
) -> None:
    # SIGTERM/SIGHUP sent to mirrortrace alone are forwarded; Ctrl-C goes to the whole
    # foreground group, where mirrortrace ignores it and the program dies of it.
    argv = [tracer_bins["exit_signal"], "wait"]
    with background(cluster, argv, own_group_in_our_session=to_group) as bg:
        pid = int(bg.line().split()[1])
        if to_group:
            os.killpg(bg.proc.pid, sig)
        else:
            os.kill(bg.proc.pid, sig)
        rc, _ = bg.finish(timeout=10)
        assert rc == 128 + sig, bg.report()
        assert gone_or_zombie(pid, 1) in (None, "Z", "X")


# --- Go under load --------------------------------------------------------------------------


def test_static_go_thousands_of_lookups_and_connects_across_goroutines(
    cluster: Cluster, programs: Programs
) -> None:
    goroutines, iterations = 64, 25
    url = f"http://{WEB_FQDN}:{WEB_PORT}/hello"
    argv = [programs.goclient, "stress", str(goroutines), url, str(iterations)]
    res = cluster.run(argv, timeout=60)
    assert res.returncode == 0, shown(res)
    assert res.stdout == f"ok {goroutines * iterations}\n", shown(res)
