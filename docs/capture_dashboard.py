#!/usr/bin/env python3
"""Capture the live view of a real session as SVG, for the README.

    sudo .venv/bin/python docs/capture_dashboard.py

Builds the simulated cluster of tests/integration/cluster.py (root: network namespaces)
and the Kubernetes API double serving deployment/web (benches/bench_kube.py's setup),
runs a small start-up script under ``mirrortrace run -t deployment/web -n dev`` in a tmux
pane of its own (so the view is drawn on a real terminal, as a user sees it), captures
the pane with its colours while the script runs and again after it exits, and writes
docs/dashboard-live.svg and docs/dashboard-summary.svg through rich's SVG export. The
command line in the picture is shortened to what a user types: the real one runs in the
laptop's network namespace and names the double's kubeconfig.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "benches"))

import cluster as cm  # noqa: E402  (the tests' simulated cluster)
from bench_kube import DEPLOYMENT, kube_setup  # noqa: E402

WIDTH, HEIGHT = 118, 44
# A client that does what services do at start-up: read its config, resolve names,
# call a service a few times, and try one that is down.
SCRIPT = (
    "printf '\\033[1;32m[orders]\\033[0m starting, config from %s\\n' /etc/resolv.conf; "
    "head -1 /etc/resolv.conf; "
    f"for i in 1 2 3; do curl -s --max-time 5 http://web:{cm.WEB_PORT}/hello; done; "
    f"curl -s --max-time 5 -o /dev/null http://{cm.WEB_IP}:{cm.WEB_PORT}/bytes/2000000; "
    f"curl -s --max-time 5 http://{cm.WEB_IP}:{cm.CLOSED_PORT}/ "
    "|| printf '\\033[1;31m[orders]\\033[0m payments is down (curl exit %d)\\n' $?; "
    "echo snap-$((40+2)); sleep 4"
)


def tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], check=True, capture_output=True,
                          text=True, timeout=10).stdout


def wait_for(sock: str, needle: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while needle not in tmux(sock, "capture-pane", "-p", "-t", "t"):
        if time.monotonic() > deadline:
            raise SystemExit(f"capture: no {needle!r} on the screen in {timeout:.0f}s")
        time.sleep(0.1)


def save(ansi: str, path: Path, title: str) -> None:
    console = Console(record=True, width=WIDTH, force_terminal=True, color_system="truecolor",
                      file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    lines = ansi.rstrip("\n").split("\n")
    console.print(Text("\n").join(Text.from_ansi(line) for line in lines))
    console.save_svg(str(path), title=title)
    print(f"wrote {path.relative_to(REPO)}")


def main() -> int:
    reason = cm.unavailable_reason()
    if reason:
        raise SystemExit(f"capture: cannot build the simulated cluster: {reason}")
    sock = f"mt-capture-{os.getpid()}"
    with kube_setup(cm, {}) as s, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "start-orders.sh"
        script.write_text("#!/bin/sh\n" + SCRIPT + "\n")
        script.chmod(0o755)
        os.chmod(tmp, 0o755)
        argv = s.argv("kube", [str(script)])
        subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "t",
                        "-x", str(WIDTH), "-y", str(HEIGHT), "bash --norc --noprofile"],
                       check=True, env={**os.environ, "PS1": "$ ", "TERM": "xterm-256color"})
        try:
            tmux(sock, "send-keys", "-t", "t", "-l", "clear; " + shlex.join(argv))
            tmux(sock, "send-keys", "-t", "t", "Enter")
            wait_for(sock, "snap-42")
            time.sleep(1.0)  # a few frames after the last call
            live = tmux(sock, "capture-pane", "-p", "-e", "-t", "t")
            wait_for(sock, "mirrortrace summary", timeout=30)
            time.sleep(0.3)
            done = tmux(sock, "capture-pane", "-p", "-e", "-t", "t", "-S", "-60")
        finally:
            path = subprocess.run(["tmux", "-L", sock, "display-message", "-p", "#{socket_path}"],
                                  capture_output=True, text=True).stdout.strip()
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
            if path:
                Path(path).unlink(missing_ok=True)  # kill-server leaves its socket file
    command_line = f"$ mirrortrace run -t deployment/{DEPLOYMENT} -- ./start-orders.sh"
    # From the script's first line: the notices above it list the pod's variable names.
    first = live.rfind("\n", 0, live.index("[orders]")) + 1
    live = command_line + "\n" + live[first:]
    save(live, DOCS / "dashboard-live.svg", "mirrortrace run: the live view")
    summary = done[done.index("mirrortrace summary"):]
    save(summary, DOCS / "dashboard-summary.svg", "mirrortrace run: the summary at exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
