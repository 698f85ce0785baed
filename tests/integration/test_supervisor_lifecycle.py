"""What the supervisor guarantees about itself: it dies cleanly and its relay is private."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cluster import WEB_IP, WEB_PORT, Cluster

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _wait_for(predicate: object, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_a_killed_supervisor_takes_command_and_agent_with_it(cluster: Cluster) -> None:
    proc = cluster.spawn(["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(_children(proc.pid)) >= 2, 20)  # COMMAND and the agent
        kids = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the kernel must
        proc.wait(10)
        for pid in kids:
            assert _gone(pid, 10), f"pid {pid} outlived the supervisor"
    finally:
        cluster.stop(proc, signal.SIGKILL, timeout=5)


def test_the_relay_accepts_only_the_traced_programs_connections(cluster: Cluster) -> None:
    """The relay listens on loopback, where any local user could reach it; a stranger
    must get nothing through it, while the traced program's connection works."""
    script = (
        "import socket, time\n"
        f"s = socket.create_connection(('{WEB_IP}', {WEB_PORT}))\n"
        "print('connected', flush=True)\n"
        "time.sleep(8)\n"
        f"s.sendall(b'GET /hello HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n')\n"
        "print(s.recv(4096).split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')\n"
    )
    proc = cluster.spawn(["python3", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "connected\n"
        listing = subprocess.run(
            ["ip", "netns", "exec", cluster.laptop_ns, "ss", "-Htlnp"],
            capture_output=True, text=True, check=True,
        ).stdout
        ports = [
            int(m.group(1))
            for line in listing.splitlines()
            if f"pid={proc.pid}," in line
            for m in [re.search(r"(?:127\.0\.0\.1|\[::1\]):(\d+)", line)]
            if m
        ]
        assert ports, f"no relay listener of pid {proc.pid} in:\n{listing}"
        probe = (
            "import socket, sys\n"
            "for port in map(int, sys.argv[1:]):\n"
            "    for host in ('127.0.0.1', '::1'):\n"
            "        try:\n"
            "            c = socket.create_connection((host, port), timeout=3)\n"
            "        except OSError:\n"
            "            continue\n"
            "        c.sendall(b'GET /hello HTTP/1.0\\r\\n\\r\\n')\n"
            "        try:\n"
            "            data = c.recv(100)\n"
            "        except OSError:\n"
            "            data = b''\n"
            "        print(port, host, repr(data))\n"
        )
        out = cluster.laptop_run(["python3", "-c", probe, *map(str, ports)]).stdout
        assert out.strip(), "the stranger could not even connect: the test proves nothing"
        for line in out.splitlines():
            assert line.endswith("b''"), f"a stranger got data through the relay: {line}"
        rest, _ = proc.communicate(timeout=30)
        assert rest == "hello from web\n"  # the traced program's own stream still works
        assert proc.returncode == 0
    finally:
        cluster.stop(proc, signal.SIGKILL, timeout=5)
