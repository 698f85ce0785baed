"""What the user sees when something is wrong, and what is left behind afterwards.

Before COMMAND starts (bad option, bad agent command, an agent that dies or talks garbage):
exit status 2, one line on stderr, no traceback, and COMMAND never ran (it would have
created a marker file). During a run (the agent killed mid-download): COMMAND's
connections fail like a broken network, one line says the agent was lost, mirrortrace
returns COMMAND's own status and does not hang. After every run nothing of ours is left:
no supervisor, agent or COMMAND process, and the pod's namespace holds only its own
dnsmasq and web server again.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cluster import WEB_IP, WEB_PORT, Cluster

pytestmark = pytest.mark.integration

BIG = 200 * 1024 * 1024
MARK_VAR = "MT_ERRORS_TEST_RUN"


# --------------------------------------------------------------------------- helpers


def _processes_with(token: str) -> list[str]:
    """'PID ARGS' of every live process whose environment carries token."""
    found = []
    needle = f"{MARK_VAR}={token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        found.append(f"{entry} {args.strip()}")
    return found


def _netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(w) for w in out.split()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pod_extras(cluster: Cluster) -> list[str]:
    """Processes in the pod namespace other than its own dnsmasq and web server."""
    own = ("podweb.py", "dnsmasq")
    return [
        f"{pid} {_cmdline(pid)}"
        for pid in _netns_pids(cluster.pod_ns)
        if _cmdline(pid) and not any(name in _cmdline(pid) for name in own)
    ]


def assert_nothing_left(cluster: Cluster, token: str, wait: float = 3.0) -> None:
    """No process of this run survives it, and both namespaces are as before."""
    deadline = time.monotonic() + wait
    while True:
        left = _processes_with(token)
        pod = _pod_extras(cluster)
        laptop = [f"{p} {_cmdline(p)}" for p in _netns_pids(cluster.laptop_ns) if _cmdline(p)]
        if not (left or pod or laptop) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == [], f"processes of the run still alive: {left}"
    assert pod == [], f"left in the pod namespace: {pod}"
    assert laptop == [], f"left in the laptop namespace: {laptop}"
    pod_pids = _netns_pids(cluster.pod_ns)
    assert len(pod_pids) == 2, [f"{p} {_cmdline(p)}" for p in pod_pids]


def run_marked(
    cluster: Cluster, argv: Sequence[str], *, timeout: float = 20, **kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """cluster.run with a unique environment marker, then check nothing is left behind."""
    token = secrets.token_hex(8)
    env = {**kwargs.pop("env", {}), MARK_VAR: token}
    res = cluster.run(argv, env=env, timeout=timeout, **kwargs)
    assert_nothing_left(cluster, token)
    return res


def one_error_line(res: subprocess.CompletedProcess[Any]) -> str:
    """Exit status 2 and exactly one line on stderr, ours, with no traceback."""
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1, f"want one line on stderr, got: {res.stderr!r}"
    assert lines[0].startswith("mirrortrace: "), lines[0]
    return lines[0]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "command-started"


def _touch(marker: Path) -> list[str]:
    """A COMMAND whose only effect is to create marker: proof that it ran."""
    return ["touch", str(marker)]


# --------------------------------------------------------------------------- before COMMAND


def test_marker_command_works(cluster: Cluster, marker: Path) -> None:
    """The marker COMMAND does create its file when run: its absence below means something."""
    res = run_marked(cluster, _touch(marker))
    assert res.returncode == 0, res.stderr
    assert marker.exists()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--bogus"], "--bogus"),
        (["--outgoing", "sideways"], "--outgoing"),
        (["--local-cidr", "198.18.0.1/24"], "--local-cidr"),
        (["--ui", "fancy"], "--ui"),
        (["--events", "/nonexistent-dir/events.jsonl"], "--events"),
    ],
    ids=["unknown", "outgoing-value", "cidr-host-bits", "ui-value", "events-folder"],
)
def test_bad_option(cluster: Cluster, marker: Path, options: list[str], words: str) -> None:
    res = run_marked(cluster, _touch(marker), mt_args=options)
    line = one_error_line(res)
    assert words in line
    assert not marker.exists(), "COMMAND ran despite the bad option"


def test_agent_command_does_not_exist(cluster: Cluster, marker: Path) -> None:
    res = run_marked(cluster, _touch(marker), agent_exec="/nonexistent/agent", timeout=15)
    line = one_error_line(res)
    assert "/nonexistent/agent" in line
    assert not marker.exists()


def test_agent_exits_before_handshake(cluster: Cluster, marker: Path) -> None:
    agent = 'sh -c "echo boom >&2; exit 3"'
    res = run_marked(cluster, _touch(marker), agent_exec=agent, timeout=15)
    line = one_error_line(res)
    assert "boom" in line or "status 3" in line, line
    assert not marker.exists()


def test_agent_talks_garbage(cluster: Cluster, marker: Path) -> None:
    res = run_marked(cluster, _touch(marker), agent_exec="sh -c 'echo garbage'", timeout=15)
    line = one_error_line(res)
    assert re.search(r"protocol|handshake", line, re.I), line
    assert not marker.exists()


def test_agent_talks_garbage_and_stays(cluster: Cluster, marker: Path) -> None:
    """Garbage from an agent that does not exit: no waiting for it to go away by itself."""
    agent = "sh -c 'echo garbage; exec sleep 60'"
    start = time.monotonic()
    res = run_marked(cluster, _touch(marker), agent_exec=agent, timeout=15)
    line = one_error_line(res)
    assert re.search(r"protocol|handshake", line, re.I), line
    assert time.monotonic() - start < 10
    assert not marker.exists()


def test_command_not_found(cluster: Cluster) -> None:
    """Like a shell: a clear line naming the command, and status 127."""
    res = run_marked(cluster, ["no-such-command-mt"])
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "no-such-command-mt" in lines[0], res.stderr
    assert "not found" in lines[0]
    assert res.returncode == 127


def test_command_exit_status_and_signal_are_passed_on(cluster: Cluster) -> None:
    assert run_marked(cluster, ["sh", "-c", "exit 42"]).returncode == 42
    assert run_marked(cluster, ["sh", "-c", "kill -TERM $$"]).returncode == 128 + 15


# --------------------------------------------------------------------------- agent lost


def _agent_pids(cluster: Cluster, token: str) -> list[int]:
    """Processes of this run inside the pod's namespace: the agent."""
    ours = {int(line.split()[0]) for line in _processes_with(token)}
    return [pid for pid in _netns_pids(cluster.pod_ns) if pid in ours]


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _kill_agent(cluster: Cluster, token: str) -> None:
    pids = _wait_for(lambda: _agent_pids(cluster, token), 10, "the agent process in the pod")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _stop(cluster: Cluster, proc: subprocess.Popen[Any]) -> None:
    """Kill a spawned run that is still going (never signal a pid already reaped)."""
    if proc.poll() is None:
        cluster.stop(proc, signal.SIGKILL, timeout=5)


def _finish(cluster: Cluster, proc: subprocess.Popen[Any], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        cluster.stop(proc, signal.SIGKILL)
        pytest.fail(f"mirrortrace did not end within {timeout} s after the agent was killed")


def test_agent_killed_during_download_curl(cluster: Cluster, tmp_path: Path) -> None:
    """curl's transfer breaks (exit 18 partial file, or 56 receive failure), mirrortrace says
    once that the agent was lost and returns curl's status, promptly."""
    token = secrets.token_hex(8)
    out = tmp_path / "big.bin"
    err = tmp_path / "stderr.txt"
    argv = ["curl", "-sS", "--limit-rate", "4M", "--max-time", "40", "-o", str(out)]
    argv.append(f"http://web:{WEB_PORT}/bytes/{BIG}")
    with open(err, "wb") as errf:
        proc = cluster.spawn(
            argv, env={MARK_VAR: token}, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf
        )
    try:
        _wait_for(lambda: out.exists() and out.stat().st_size > 0, 10, "the first bytes")
        _kill_agent(cluster, token)
        status = _finish(cluster, proc, 15)
    finally:
        _stop(cluster, proc)
    text = err.read_text(errors="replace")
    assert status in (18, 56), (status, text)
    assert out.stat().st_size < BIG
    lost = [line for line in text.splitlines() if "agent" in line.lower()]
    assert len(lost) == 1, text
    assert "lost" in lost[0].lower(), lost
    assert "Traceback" not in text
    assert_nothing_left(cluster, token)


AFTER_LOSS = f"""
    import errno, socket, sys, urllib.request
    resp = urllib.request.urlopen("http://web:{WEB_PORT}/bytes/{BIG}", timeout=30)
    got = len(resp.read(65536))
    print("started", got, flush=True)
    try:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        print("download finished", got, flush=True)
    except Exception as exc:
        print("download failed", type(exc).__name__, flush=True)
    s = socket.socket()
    s.settimeout(20)
    try:
        s.connect(("{WEB_IP}", {WEB_PORT}))
        print("new connect ok", flush=True)
    except OSError as exc:
        print("new connect", errno.errorcode.get(exc.errno, exc.errno), flush=True)
    try:
        socket.getaddrinfo("db.other.svc.cluster.local", {WEB_PORT}, type=socket.SOCK_STREAM)
        print("lookup ok", flush=True)
    except socket.gaierror:
        print("lookup failed", flush=True)
"""


def test_agent_killed_then_new_connect_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """After the agent is gone, the broken download raises in the program, a new
    connection fails at once with ECONNREFUSED, and a name lookup fails at once (the
    pod's DNS server refuses), like a network that refuses."""
    token = secrets.token_hex(8)
    err = tmp_path / "stderr.txt"
    argv = [sys.executable, "-I", "-c", textwrap.dedent(AFTER_LOSS)]
    with open(err, "wb") as errf:
        proc = cluster.spawn(
            argv,
            env={MARK_VAR: token, "RES_OPTIONS": "timeout:25 attempts:1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errf,
        )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "the download did not start"
        first = proc.stdout.readline().decode()
        assert first.startswith("started"), (first, err.read_text())
        _kill_agent(cluster, token)
        status = _finish(cluster, proc, 30)
        lines = [first.strip(), *proc.stdout.read().decode().splitlines()]
    finally:
        _stop(cluster, proc)
        if proc.stdout is not None:
            proc.stdout.close()
    text = err.read_text(errors="replace")
    assert lines[1].startswith("download failed"), (lines, text)
    assert lines[2] == "new connect ECONNREFUSED", (lines, text)
    # The lookup fails at once too: the pod's DNS refuses. Had it been dropped, the
    # resolver would wait out RES_OPTIONS' 25 s and the run would overrun _finish.
    assert lines[3].startswith("lookup failed"), (lines, text)
    assert status == 0, text  # the program's own status
    lost = [line for line in text.splitlines() if "agent" in line.lower()]
    assert len(lost) == 1 and "lost" in lost[0].lower(), text
    assert_nothing_left(cluster, token)


# --------------------------------------------------------------------------- clean after runs


def test_nothing_left_after_a_normal_run(cluster: Cluster) -> None:
    res = run_marked(cluster, ["curl", "-sS", "--max-time", "10", f"http://web:{WEB_PORT}/hello"])
    assert res.stdout == "hello from web\n", res.stderr


def test_nothing_left_after_a_background_child(cluster: Cluster) -> None:
    """COMMAND exits while a child it started in the background still runs (and holds a
    connection to the pod): like a container's main process ending, the child goes too."""
    code = f'import socket, time; s = socket.create_connection(("{WEB_IP}", {WEB_PORT})); '
    code += "time.sleep(60)"
    script = f"{sys.executable} -I -c '{code}' & sleep 0.5; echo started"
    start = time.monotonic()
    res = run_marked(cluster, ["sh", "-c", script])
    assert res.stdout == "started\n", res.stderr
    assert time.monotonic() - start < 15


def test_nothing_left_after_sigterm(cluster: Cluster) -> None:
    """SIGTERM to mirrortrace reaches COMMAND; everything ends."""
    token = secrets.token_hex(8)
    proc = cluster.spawn(
        ["sleep", "60"],
        env={MARK_VAR: token},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _agent_pids(cluster, token), 10, "the agent")
        _wait_for(
            lambda: any(p.split(None, 1)[1] == "sleep 60" for p in _processes_with(token)),
            10,
            "COMMAND",
        )
        os.kill(proc.pid, signal.SIGTERM)
        status = _finish(cluster, proc, 10)
    finally:
        _stop(cluster, proc)
    assert status == 128 + signal.SIGTERM
    assert_nothing_left(cluster, token)
