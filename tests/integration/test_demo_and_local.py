"""The two things a new user runs first: `mirrortrace demo` and `mirrortrace run ./app`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import REPO, Cluster

pytestmark = pytest.mark.integration

USERNS = Path("/proc/sys/kernel/unprivileged_userns_clone")


def _demo(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


def _check_demo(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr
    assert "hello from the demo pod" in out.stdout
    assert "calls diverted to the pod" in out.stderr
    assert "the pod is gone" in out.stderr


def test_demo_runs_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root; the unprivileged demo is tested below")
    _check_demo(_demo([sys.executable, "-m", "supervisor.cli", "demo"], cwd=REPO))


def test_demo_runs_as_an_unprivileged_user(cluster: Cluster) -> None:
    if USERNS.exists() and USERNS.read_text().strip() == "0":
        pytest.skip("unprivileged user namespaces are disabled on this kernel")
    python = cluster.unprivileged_python()
    home = cluster.home_of("nobody")
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            python, "-m", "supervisor.cli", "demo"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home)}
    _check_demo(_demo(argv, cwd=home, env=env))


def test_run_without_any_agent_uses_a_local_one(tmp_path: Path) -> None:
    """No target, agent or config: the program works as without mirrortrace, every call
    it makes is shown, and one line says a local agent is used."""
    events = tmp_path / "events.jsonl"
    code = (
        "import http.server, socket, threading, urllib.request\n"
        "srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n"
        "threading.Thread(target=srv.handle_request, daemon=True).start()\n"
        "url = 'http://127.0.0.1:%d/' % srv.server_port\n"
        "print(urllib.request.urlopen(url).status)\n"
        "print(socket.gethostname() == open('/etc/hostname').read().strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "run", "--events", str(events), "--",
         sys.executable, "-c", code],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "True"]
    assert "using a local agent" in out.stderr
    kinds = {json.loads(line)["kind"] for line in events.read_text().splitlines()}
    assert {"connect", "listen", "open"} <= kinds
