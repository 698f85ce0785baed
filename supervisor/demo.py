"""`mirrortrace demo`: a pod on this machine, and a client that reaches it through mirrortrace.

No cluster needed: the "pod" is a process in new network, mount and UTS
namespaces (see supervisor.demo_pod) whose service ``web`` answers on an
address this machine cannot reach. The client (curl, or Python's urllib)
runs here, under ``mirrortrace run``, with the agent inside the pod reached
through a unix socket, exactly as ``kubectl exec -i`` would reach it in a
cluster. The pod and its temporary folder are removed on every way out,
Ctrl-C included.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from supervisor.errors import MirrortraceError

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0


class DemoError(MirrortraceError):
    """The demo pod could not be made on this machine."""

    default_hint = "run `mirrortrace doctor`, or try the demo as root"


def _userns_refusal() -> str:
    """Why unprivileged user namespaces are off, as far as the kernel says."""
    for path, bad, why in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=0"),
        ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=0"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1)",
        ),
    ):
        try:
            if Path(path).read_text().strip() == bad:
                return why
        except OSError:
            continue
    return "the kernel refused to make one"


def unshare_command() -> list[str]:
    """The unshare prefix that makes the pod's namespaces, checked to work here."""
    if shutil.which("unshare") is None:
        raise DemoError(
            "the demo needs the unshare program", "install util-linux (apt-get install util-linux)"
        )
    if shutil.which("ip") is None:
        raise DemoError(
            "the demo needs the ip program", "install iproute2 (apt-get install iproute2)"
        )
    if os.geteuid() == 0:
        return ["unshare", "--net", "--mount", "--uts"]
    command = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--uts"]
    probe = subprocess.run([*command, "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        raise DemoError(
            f"unprivileged user namespaces are disabled: {_userns_refusal()}",
            "run the demo as root (sudo), or allow them: "
            "sudo sysctl kernel.unprivileged_userns_clone=1 "
            "(Ubuntu: kernel.apparmor_restrict_unprivileged_userns=0)",
        )
    return command


def _env() -> dict[str, str]:
    # The pod and the bridge run `-m supervisor...` and `-m agent_image`: make
    # them importable from a source checkout as well as from an install.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def default_client() -> list[str]:
    if shutil.which("curl"):
        return ["curl", "-sS", "--noproxy", "*", "--max-time", "20", "http://web/"]
    code = (
        "import urllib.request as u;"
        "o=u.build_opener(u.ProxyHandler({}));"
        "print(o.open('http://web/',timeout=20).read().decode(),end='')"
    )
    return [sys.executable, "-c", code]


def start_pod(state: Path) -> subprocess.Popen[bytes]:
    """Start the pod and wait until it says ready (or fail with its log)."""
    log = open(state / "pod.log", "wb")  # noqa: SIM115 (closed below, child keeps its copy)
    try:
        pod = subprocess.Popen(
            [*unshare_command(), sys.executable, "-m", "supervisor.demo_pod", "serve", str(state)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_env(),
            # Its own process group: Ctrl-C reaches the client, not the pod,
            # and teardown kills the pod and its agents in one killpg.
            start_new_session=True,
        )
    finally:
        log.close()
    assert pod.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(pod.stdout, selectors.EVENT_READ)
        ready = sel.select(READY_TIMEOUT) and pod.stdout.readline().strip() == b"ready"
    pod.stdout.close()
    if not ready:
        stop_pod(pod)
        tail = (state / "pod.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise DemoError(
            "the demo pod did not start" + (f": {' / '.join(tail)}" if tail else ""),
        )
    return pod


def stop_pod(pod: subprocess.Popen[bytes]) -> None:
    """Kill the pod's process group (the pod and its agents) and reap the pod."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pod.pid, sig)
        except ProcessLookupError:
            break
        try:
            pod.wait(timeout=wait)
            # Agents are in the same group; SIGKILL the rest even if the pod went.
            os.killpg(pod.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break
    if pod.returncode is None:
        pod.wait(timeout=5)


def summarize(events_file: Path) -> str:
    """The run's calls per kind, counted as the dashboard counts them: a relayed
    stream's end (its "close" event) carries bytes, it is not another call."""
    from supervisor.dashboard_state import DashState, SessionInfo
    from supervisor.errors import UsageError
    from supervisor.replay import load_events

    state = DashState(SessionInfo("demo"))
    try:
        for event in load_events(events_file):
            state.add(event)
    except UsageError:
        return "no events were recorded"
    kinds = {kind: c.calls for kind, c in state.counts().items() if c.calls}
    total = sum(kinds.values())
    if not total:
        return "no calls were diverted"
    parts = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    return f"{total} call{'s' if total != 1 else ''} diverted to the pod ({parts})"


def _say(text: str) -> None:
    print(f"mirrortrace demo: {text}", file=sys.stderr, flush=True)


def run_demo(command: list[str] | None = None) -> int:
    """Run the demo; return the client's exit status (130 on Ctrl-C)."""
    from supervisor import demo_pod

    client = command or default_client()
    state = Path(tempfile.mkdtemp(prefix="mirrortrace-demo-"))
    # mkdtemp's 0700 is right: the pod's root is this user (mapped, when not root).
    pod = None
    # SIGTERM (a CI timeout, `kill`) must tear down like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        pod = start_pod(state)
        agent = shlex.join(
            [sys.executable, "-m", "supervisor.demo_pod", "connect", str(state / "agent.sock")]
        )
        events = state / "events.jsonl"
        _say(
            f"pod {demo_pod.HOSTNAME} is up in its own network namespace: service web "
            f"({demo_pod.SERVICE} = {demo_pod.POD_IP}:80), DNS at {demo_pod.DNS_IP}; "
            "this machine cannot reach either, the agent inside the pod can"
        )
        run = ["mirrortrace", "run", "--ui", "plain", "--agent-exec", agent, "--", *client]
        print(f"$ {shlex.join(run)}", file=sys.stderr, flush=True)
        started = time.monotonic()
        code = _run_client(
            [
                sys.executable,
                "-m",
                "supervisor.cli",
                "run",
                "--ui",
                "plain",
                "--events",
                str(events),
                "--agent-exec",
                agent,
                "--",
                *client,
            ]
        )
        elapsed = time.monotonic() - started
        _say(f"{summarize(events)}; exit status {code} after {elapsed:.2f}s")
        return code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pod is not None:
            stop_pod(pod)
        shutil.rmtree(state, ignore_errors=True)
        if pod is not None:
            _say("the pod is gone")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_client(argv: list[str]) -> int:
    """Run mirrortrace and the client in the foreground; Ctrl-C is theirs to handle.

    The terminal sends SIGINT to the whole foreground group: the client gets
    it and mirrortrace passes its exit status on. Here SIGINT only has to not
    kill the demo (which would SIGKILL mirrortrace from subprocess's cleanup),
    through a Python handler, not SIG_IGN, so the children do not inherit
    "ignored". A SIGTERM for the demo alone is passed on to mirrortrace, which
    passes it to the client; the pod is torn down once they are gone.
    """
    with subprocess.Popen(argv, env=_env()) as child:
        previous_int = signal.signal(signal.SIGINT, lambda signum, frame: None)
        previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
