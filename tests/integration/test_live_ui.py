"""The live dashboard in a real terminal: tmux runs mirrortrace as a user would.

A shell in a tmux pane (its own tmux server, so nothing of the user's is touched)
runs ``mirrortrace run`` with no --ui: stderr is a terminal, so the live view is the
default. The traced shell script resolves a service name, connects to it and to a
closed port, and reads a resolver file, then waits so the test can look at the view
while it runs. capture-pane must show the app's own lines (with their colours)
above the view, the view's rows naming the right targets and results, and after
exit the summary; the terminal must come back as the shell lent it (echo and
line editing on, no alternate screen, cursor shown), also after Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster import CLOSED_PORT, SAFE_PATH, WEB_IP, WEB_IP6, WEB_PORT, Cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)"),
]

WIDTH, HEIGHT = 150, 60
PROMPT = "READY$ "
# curl by name connects to whichever address the pod's DNS gave first.
WEB_ADDR = rf"({re.escape(WEB_IP)}|\[{re.escape(WEB_IP6)}\]):{WEB_PORT}"


@dataclass
class Pane:
    """One tmux pane running bash, on a tmux server of its own."""

    socket: str

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", line)
        self.tmux("send-keys", "-t", "t", "Enter")

    def key(self, name: str) -> None:
        self.tmux("send-keys", "-t", "t", name)

    def screen(self, *, colours: bool = False) -> str:
        """The whole history and the visible screen, as text (with escapes if colours)."""
        args = ["capture-pane", "-p", "-J", "-S", "-2000", "-t", "t"]
        return self.tmux(*args, *(["-e"] if colours else []))

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the screen in {timeout:.0f}s:\n{text}")
            time.sleep(0.1)

    def flag(self, name: str) -> str:
        return self.tmux("display-message", "-p", "-t", "t", f"#{{{name}}}").strip()


@pytest.fixture
def pane() -> Iterator[Pane]:
    socket = f"mt-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PS1": PROMPT}
    subprocess.run(
        ["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "t",
         "-x", str(WIDTH), "-y", str(HEIGHT), "bash --norc --noprofile"],
        check=True, env=env, timeout=10,
    )
    p = Pane(socket)
    path = p.tmux("display-message", "-p", "#{socket_path}").strip()
    try:
        p.tmux("set-option", "-t", "t", "history-limit", "5000")
        p.type(f"export PS1={shlex.quote(PROMPT)}")
        p.wait_for(re.escape(PROMPT))
        yield p
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=10)
        if path:
            Path(path).unlink(missing_ok=True)  # kill-server leaves its socket file


def _shell_restored(pane: Pane) -> None:
    """The terminal as bash lent it: line editing and echo on, main screen, cursor on."""
    assert pane.flag("alternate_on") == "0"
    assert pane.flag("cursor_flag") == "1"
    # The marker is computed by the shell, so the echoed command line cannot match it.
    pane.type("echo \"modes: $(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(echo|icanon|isig)' "
              "| tr '\\n' ' ')end-$((2+2))\"")
    text = pane.wait_for(r"modes: .*end-4")
    modes = re.findall(r"modes: (.*)end-4", text)[-1].split()
    assert {"echo", "icanon", "isig"} <= set(modes), modes
    pane.type("echo typed-$((6*7))")
    pane.wait_for(r"typed-42")


SCRIPT = (
    "printf '\\033[32mgreen app line\\033[0m\\n'; "
    f"curl -s --max-time 10 http://web:{WEB_PORT}/hello; "
    "head -1 /etc/resolv.conf; "
    f"curl -s --max-time 10 http://{WEB_IP}:{CLOSED_PORT}/; echo curl-exit=$?; "
    "echo look-$((40+2)); sleep 3; echo app-$((40+2))-done"
)


def test_live_view_while_running_and_summary_after(cluster: Cluster, pane: Pane,
                                                    tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    argv = cluster.mirrortrace_argv(["sh", "-c", SCRIPT], mt_args=["--events", str(events)])
    pane.type(f"{shlex.join(argv)}; echo MT-EXIT=$?")
    pane.wait_for(r"look-42")  # computed markers: the echoed command line cannot match
    time.sleep(1.0)  # four frames
    during = pane.screen()
    # The app's lines, above the view.
    assert "green app line" in during
    assert "hello from web" in during
    assert "nameserver 198.18.0.53" in during  # the pod's resolv.conf, not the laptop's
    assert "curl-exit=7" in during
    # The view: header, counters, and the calls with where they went and how they ended.
    assert "mirrortrace" in during and "recent calls" in during, during
    assert re.search(r"agent\s+connected", during), during
    rows = [line for line in during.splitlines() if re.search(r"curl\[\d+\]\s+connect", line)]
    assert any(re.search(rf"{WEB_ADDR}\s+agent\s+ok", r) for r in rows), rows
    assert any(f"{WEB_IP}:{CLOSED_PORT}" in r and "ECONNREFUSED" in r for r in rows), rows
    assert re.search(r"web\.default\.svc\.cluster\.local", during), during
    assert "/etc/resolv.conf" in during
    # The app's colour reached the terminal: the escape is there in front of its line.
    assert re.search(r"\x1b\[32m\s*green app line", pane.screen(colours=True))

    after = pane.wait_for(r"MT-EXIT=\d+")
    assert "MT-EXIT=0" in after, after
    assert "app-42-done" in after
    # The summary stays; the live view is gone (no "recent calls" after the last app line).
    tail = after.split("app-42-done", 1)[1]
    assert "mirrortrace summary" in tail, after
    assert "recent calls" not in tail, after
    assert re.search(r"exit status\s+0", tail), tail
    # the stream's bytes: a request went out, an answer came back
    assert re.search(rf"connect\s+{WEB_ADDR}\s+agent\s+1\s+\d+ B\s+\d+ B", tail), tail
    assert re.search(rf"{re.escape(WEB_IP)}:{CLOSED_PORT}.*ECONNREFUSED", tail), tail
    _shell_restored(pane)

    # A colleague replays the events file: the same summary, number for number.
    replay = subprocess.run([sys.executable, "-m", "supervisor.cli", "replay", str(events),
                             "--summary", "--width", str(WIDTH)],
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    live_table = _summary_table(tail.split("MT-EXIT=", 1)[0])
    assert len(live_table) > 10, tail
    assert _summary_table(replay.stdout) == live_table


def _summary_table(text: str) -> list[str]:
    """The summary's rows after its first line (which says how long the run took)."""
    lines = text[text.index("mirrortrace summary"):].splitlines()[1:]
    return [line.rstrip() for line in lines if line.strip()]


def test_ctrl_c_ends_the_app_and_gives_the_terminal_back(cluster: Cluster, pane: Pane) -> None:
    argv = cluster.mirrortrace_argv(["sh", "-c", "echo app-$((6*7))-started; sleep 60; "
                                              "echo not-$((6*7))-reached"])
    pane.type(f"{shlex.join(argv)}; echo MT-EXIT=$?")
    pane.wait_for(r"app-42-started")
    time.sleep(0.5)
    pane.key("C-c")
    text = pane.wait_for(r"MT-EXIT=\d+", timeout=20)
    assert "MT-EXIT=130" in text, text  # sh died of SIGINT: 128 + 2
    assert "not-42-reached" not in text
    _shell_restored(pane)


def test_keys_reach_the_app_and_it_sees_a_terminal(cluster: Cluster, pane: Pane) -> None:
    script = ("if [ -t 0 ] && [ -t 1 ]; then echo on-a-$((1+1))-tty; fi; echo size=$(stty size); "
              "printf 'name-%d? ' 42; read name; echo \"hello <$name>\"")
    argv = cluster.mirrortrace_argv(["sh", "-c", script])
    pane.type(f"{shlex.join(argv)}; echo MT-EXIT=$?")
    pane.wait_for(r"name-42\? ")  # a prompt without its newline still shows
    pane.type("pod person")
    text = pane.wait_for(r"MT-EXIT=\d+")
    assert "on-a-2-tty" in text
    assert f"size={HEIGHT} {WIDTH}" in text, text  # the real terminal's size, passed on
    assert "hello <pod person>" in text
    assert "MT-EXIT=0" in text
    _shell_restored(pane)


def test_live_view_as_an_unprivileged_user(cluster: Cluster, unpriv_python: str,
                                           pane: Pane) -> None:
    """Users run mirrortrace as themselves: the pty, the terminal modes and the view
    need no privilege (the pane's terminal belongs to root; its fds are inherited)."""
    script = (f"id -un; curl -s --max-time 10 http://web:{WEB_PORT}/hello; "
              "echo done-$((6*7)); sleep 1")
    argv = cluster.mirrortrace_argv(["sh", "-c", script], user="nobody")
    home = cluster.home_of("nobody")
    env = f"env -i PATH={SAFE_PATH} HOME={home} TERM=xterm"
    pane.type(f"cd {home} && {env} {shlex.join(argv)}; echo MT-EXIT=$?; cd /")
    text = pane.wait_for(r"MT-EXIT=\d+")
    assert "MT-EXIT=0" in text, text
    assert "\nnobody" in text and "hello from web" in text and "done-42" in text, text
    tail = text.split("done-42", 1)[1]
    assert "mirrortrace summary" in tail, text
    assert re.search(rf"connect\s+{WEB_ADDR}\s+agent", tail), tail
    _shell_restored(pane)


def test_ctrl_z_stops_both_and_fg_continues_both(cluster: Cluster, pane: Pane) -> None:
    """^Z stops COMMAND and mirrortrace together (COMMAND's orphaned process group
    ignores a plain SIGTSTP, so the pty alone would not stop it); `fg` resumes both,
    the view comes back, and the run ends normally."""
    script = ("echo tick-$((1+1)); sleep 2; echo tock-$((1+2)); sleep 1")
    argv = cluster.mirrortrace_argv(["sh", "-c", script])
    pane.type(shlex.join(argv))  # alone: after `cmd; next`, bash would run next at ^Z
    pane.wait_for(r"tick-2")
    pane.key("C-z")
    stopped = pane.wait_for(r"Stopped", timeout=20)
    assert "tock-3" not in stopped
    # While stopped, the shell has its terminal back as it lent it.
    _shell_restored(pane)
    time.sleep(2.5)  # COMMAND's sleep would have ended by now, were it running
    assert "tock-3" not in pane.screen()
    pane.type("fg")
    text = pane.wait_for(r"mirrortrace summary", timeout=30)
    assert "tock-3" in text, text
    pane.type("echo exit=$?-end")
    assert "exit=0-end" in pane.wait_for(r"exit=\d+-end")
    _shell_restored(pane)


def test_a_resized_terminal_is_passed_on(cluster: Cluster, pane: Pane) -> None:
    """The real terminal changes size while COMMAND runs: COMMAND's terminal follows
    (SIGWINCH reaches the supervisor, which sets the pty's size; the kernel then
    signals COMMAND), as `stty size` inside it shows."""
    script = "echo before=$(stty size); read go; echo after=$(stty size)"
    argv = cluster.mirrortrace_argv(["sh", "-c", script])
    pane.type(f"{shlex.join(argv)}; echo MT-EXIT=$?")
    pane.wait_for(rf"before={HEIGHT} {WIDTH}")
    pane.tmux("resize-window", "-t", "t", "-x", "120", "-y", "50")
    time.sleep(0.5)
    pane.type("")
    text = pane.wait_for(r"MT-EXIT=\d+")
    assert "after=50 120" in text, text
    assert "MT-EXIT=0" in text
    _shell_restored(pane)


def test_ten_thousand_calls_fold_into_one_row(cluster: Cluster, pane: Pane,
                                              tmp_path: Path) -> None:
    """10,000 identical diverted calls under the live view: the summary shows them as
    one row whose count is exact (the events file has every one of them)."""
    events = tmp_path / "events.jsonl"
    code = ("import os\nfor _ in range(10000): os.stat('/etc/resolv.conf')\n"
            "print('stats-' + str(6 * 7))")
    argv = cluster.mirrortrace_argv([sys.executable, "-c", code],
                                    mt_args=["--events", str(events)])
    pane.type(f"{shlex.join(argv)}; echo MT-EXIT=$?")
    text = pane.wait_for(r"MT-EXIT=\d+", timeout=120)
    assert "stats-42" in text and "MT-EXIT=0" in text, text
    recorded = sum(1 for line in events.read_text().splitlines()
                   if '"/etc/resolv.conf"' in line and '"stat"' in line)
    assert recorded >= 10000
    tail = text.split("stats-42", 1)[1]
    row = re.search(r"stat\s+/etc/resolv\.conf\s+pod\s+([\d,]+)", tail)
    assert row is not None, tail
    assert int(row.group(1).replace(",", "")) == recorded
    _shell_restored(pane)


def test_an_agent_lost_mid_run_shows_in_the_view(cluster: Cluster, pane: Pane,
                                                 tmp_path: Path) -> None:
    """The agent dies while COMMAND runs: one notice line above the view says so, the
    header turns to "lost", COMMAND's next lookup and connect fail at once like a
    refusing network, and the run still ends with a summary and the terminal back."""
    pidfile = tmp_path / "agent.pid"
    agent = shlex.join(["sh", "-c", f'echo $$ > {pidfile}; exec "$0" "$@"',
                        *shlex.split(cluster.agent_exec)])
    script = (f"curl -s http://web:{WEB_PORT}/hello; echo first-$((1+1)); sleep 4; "
              f"curl -s --max-time 5 http://web:{WEB_PORT}/hello; echo second-exit=$?")
    argv = cluster.mirrortrace_argv(["sh", "-c", script], agent_exec=agent)
    pane.type(f"{shlex.join(argv)}; echo MT-EXIT=$?")
    pane.wait_for(r"first-2")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    during = pane.wait_for(r"agent\s+lost", timeout=15)
    notices = [ln for ln in during.splitlines() if "mirrortrace:" in ln and "agent" in ln
               and "lost" in ln.lower()]
    assert len(notices) == 1, during
    text = pane.wait_for(r"MT-EXIT=\d+", timeout=30)
    # Refused at once (6: the pod's DNS refuses, 7: the connect is refused), never
    # left to time out (28): the agent's loss is a network that refuses.
    assert re.search(r"second-exit=[67]\b", text), text
    assert "MT-EXIT=0" in text, text
    assert "mirrortrace summary" in text.split("second-exit", 1)[1]
    _shell_restored(pane)
