"""A simulated Kubernetes cluster made of network namespaces, for the integration tests.

mirrortrace's promise is that a program on the "laptop" behaves as if it ran in a pod: its
DNS goes to the pod's nameserver and its connections leave from the pod. To prove that without
a real cluster (and without sending a packet off this machine) the fixture builds:

- a **pod** network namespace: an ``eth0`` (an ``ifb`` device: this kernel has no ``dummy``
  module; both silently drop whatever is routed out of them) carrying the pod IP, a "web"
  service IP and a DNS IP (IPv4 198.18.0.0/15 and IPv6 2001:2::/48 benchmarking ranges only),
  a real HTTP server (``podweb.py``), dnsmasq serving ``cluster.local``, and the pod's own
  /etc/resolv.conf and /etc/hosts (``/etc/netns/<pod>/``, which ``ip netns exec`` bind-mounts
  over /etc for the processes it starts);
- a **laptop** network namespace with ``lo`` and an IPv4 address of its own (198.19.0.2 on an
  ``ifb`` "wlan0", like a laptop's Wi-Fi): no route to any of those addresses, so any
  call mirrortrace fails to divert gets ENETUNREACH (or a refused lookup) instead of working by
  accident. That failure is the baseline that makes a passing test meaningful.

The supervisor runs in the laptop namespace and starts the agent with ``--agent-exec``
(``ip netns exec <pod> ...``), exactly like a user would with ``kubectl exec -i``.

Everything is named with a random suffix, registered in a state file under
/run/mirrortrace-tests, and removed at the end of the session (a later session also removes
what a killed one left behind).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

POD_IP = "198.18.0.2"
LAPTOP_IP = "198.19.0.2"  # the laptop's own address: not a route to the pod's network
POD_IP6 = "2001:2::2"
WEB_IP = "198.18.0.10"
WEB_IP6 = "2001:2::10"
DB_IP = "198.18.0.11"
DNS_IP = "198.18.0.53"
DNS_IP6 = "2001:2::53"
WEB_PORT = 8080
CLOSED_PORT = 9  # nothing listens there: ECONNREFUSED
TIMEOUT_NET = "198.18.9.0/24"  # routed into eth0, which drops it: ETIMEDOUT after ~3 s
TIMEOUT_IP = "198.18.9.1"
UNREACHABLE_NET = "198.18.5.0/24"  # `unreachable` route: EHOSTUNREACH at once
UNREACHABLE_IP = "198.18.5.1"
BLACKHOLE_NET = "198.18.8.0/24"  # `blackhole` route: Linux fails connect() at once with EINVAL
BLACKHOLE_IP = "198.18.8.1"
POD_HOSTNAME = "web-7d9f-abcde"
NAMESPACE = "default"
WEB_FQDN = "web.default.svc.cluster.local"
DB_FQDN = "db.other.svc.cluster.local"
WWW_FQDN = "www.default.svc.cluster.local"  # CNAME to WEB_FQDN
SRV_NAME = "_http._tcp.web.default.svc.cluster.local"
SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local"
POD_RESOLV_CONF = f"nameserver {DNS_IP}\nsearch {SEARCH}\noptions ndots:5\n"
POD_HOSTS = f"127.0.0.1 localhost\n{POD_IP} {POD_HOSTNAME}\n"
POD_NSSWITCH = (
    "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
    "protocols: files\nservices: files\nethers: files\nrpc: files\n"
)
# The laptop's resolver points at a loopback port nobody listens on: an undiverted lookup
# fails at once with "connection refused" and never reaches the host's real resolver.
LAPTOP_RESOLV_CONF = "nameserver 127.0.0.53\noptions edns0\nsearch lan\n"
LAPTOP_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"

STATE_DIR = Path("/run/mirrortrace-tests")
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def expected_bytes_sha256(n: int) -> str:
    """sha256 hex of what ``GET /bytes/N`` returns, computed locally (see podweb.py)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from podweb import deterministic_chunks  # same directory; pure standard library

    digest = hashlib.sha256()
    for piece in deterministic_chunks(n):
        digest.update(piece)
    return digest.hexdigest()


def unavailable_reason() -> str | None:
    """Why the simulated cluster cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "integration cluster needs root (network namespaces, ip netns exec)"
    if not shutil.which("ip"):
        return "integration cluster needs the `ip` program (apt-get install iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is not usable here: {probe.stderr.strip()}"
    if not shutil.which("dnsmasq"):
        return "integration cluster needs dnsmasq (apt-get install dnsmasq-base)"
    for tool in ("unshare", "hostname"):
        if not shutil.which(tool):
            return f"integration cluster needs `{tool}`"
    return None


def _sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a setup command; on failure say which one and what it printed."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"cluster setup command failed ({proc.returncode}): {shlex.join(argv)}\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(ns: str) -> None:
    """SIGKILL everything still running in network namespace ``ns``."""
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for word in proc.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


def _remove_resources(netns: Iterable[str], paths: Iterable[str]) -> list[str]:
    """Kill processes in, then delete, the namespaces; remove the paths. Returns errors."""
    errors = []
    for ns in netns:
        if not Path("/run/netns", ns).exists():
            continue
        _kill_netns_processes(ns)
        for _ in range(20):
            proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if proc.returncode == 0:
                break
            time.sleep(0.05)
        else:
            errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        except OSError as exc:
            errors.append(f"remove {path}: {exc}")
    return errors


def sweep_stale_clusters() -> None:
    """Remove clusters whose creating test session died without cleaning up."""
    if not STATE_DIR.is_dir():
        return
    for state_file in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(state.get("pid", 0))):
            continue
        for pid in state.get("pids", []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
        _remove_resources(state.get("netns", []), state.get("paths", []))
        with contextlib.suppress(OSError):
            state_file.unlink()


class Cluster:
    """The pod and laptop namespaces plus the services in the pod; see the module docstring.

    Create with :meth:`create` (a context manager); the ``cluster`` fixture does that once per
    test session. What tests use:

    - ``run(argv, *, timeout=60, user=None, env=None, input=None, mt_args=(),
      agent_exec=None, cwd=None, text=True)``: ``argv`` under ``mirrortrace run`` in the laptop
    - ``spawn(argv, ...)`` / ``stop(proc)``: the same in the background
    - ``pod_run(argv, ...)``: untraced in the pod (the reference behaviour)
    - ``laptop_run(argv, ...)``: untraced in the laptop (the baseline that must fail)
    - ``agent_exec`` (str), ``agent_argv``, ``pod_prefix``, ``agent_exec_unprivileged()``,
      ``unprivileged_python()``, ``mirrortrace_argv(argv, ...)``, ``home_of(user)``
    - ``pod_ns``, ``laptop_ns``, ``python``, ``repo``, ``tmp``, ``web_log`` (access log:
      ``CLIENT METHOD PATH STATUS`` lines), ``dns_log`` (dnsmasq's query log), and the
      module constants (``WEB_IP``, ``DNS_IP``, ``POD_HOSTNAME``, ...).
    """

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(2)
        while Path("/run/netns", f"mt-pod-{self.suffix}").exists():
            self.suffix = secrets.token_hex(2)
        self.pod_ns = f"mt-pod-{self.suffix}"
        self.laptop_ns = f"mt-laptop-{self.suffix}"
        self.python = sys.executable
        self.repo = REPO
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mt-cluster-{self.suffix}-"))
        os.chmod(self.tmp, 0o755)  # unprivileged runs reach programs and sockets in here
        self.web_log = self.tmp / "web-access.log"
        self.dns_log = self.tmp / "dnsmasq.log"
        self.dns_pid_file = self.tmp / "dnsmasq.pid"
        self.state_file = STATE_DIR / f"{self.suffix}.json"
        self.pod_etc = Path("/etc/netns") / self.pod_ns
        self.laptop_etc = Path("/etc/netns") / self.laptop_ns
        inner = [
            self.python,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from agent_image.agent import main; sys.exit(main())",
        ]
        # Prefix that runs a command the way the agent is run: in the pod's network namespace
        # and /etc files, with the pod's hostname (own UTS namespace).
        self.pod_prefix: list[str] = ["ip", "netns", "exec", self.pod_ns, *self._pod_wrap([])]
        self.agent_argv: list[str] = [*self.pod_prefix, *inner]
        self.agent_exec: str = shlex.join(self.agent_argv)
        self._procs: list[subprocess.Popen[Any]] = []
        self._spawned: list[subprocess.Popen[Any]] = []
        self._bridge: subprocess.Popen[Any] | None = None
        self._unpriv: UnprivilegedPython | None = None
        self._homes: dict[int, Path] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[Cluster]:
        """Build the cluster, yield it, and always tear it down."""
        sweep_stale_clusters()
        cluster = cls()
        atexit.register(cluster.close)
        try:
            cluster._start()
            yield cluster
        finally:
            cluster.close()
            atexit.unregister(cluster.close)

    def _save_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        paths = [str(self.pod_etc), str(self.laptop_etc), str(self.tmp)]
        if self._unpriv is not None:
            paths.append(str(self._unpriv.root))
        state = {
            "pid": os.getpid(),
            "netns": [self.pod_ns, self.laptop_ns],
            "paths": paths,
            "pids": [p.pid for p in self._procs],
        }
        self.state_file.write_text(json.dumps(state))

    def _start(self) -> None:
        self._save_state()
        pod, lap = self.pod_ns, self.laptop_ns
        _sh(["ip", "netns", "add", pod])
        _sh(["ip", "netns", "add", lap])
        # /etc files first: `ip netns exec` bind-mounts them for everything started later.
        for etc, files in (
            (self.pod_etc, {"resolv.conf": POD_RESOLV_CONF, "hosts": POD_HOSTS}),
            (self.laptop_etc, {"resolv.conf": LAPTOP_RESOLV_CONF, "hosts": LAPTOP_HOSTS}),
        ):
            etc.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (etc / name).write_text(text)
                os.chmod(etc / name, 0o644)
        if Path("/etc/nsswitch.conf").exists():
            (self.pod_etc / "nsswitch.conf").write_text(POD_NSSWITCH)
        for ns in (pod, lap):
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        ip = ["ip", "-n", pod]
        _sh([*ip, "link", "add", "eth0", "type", "ifb"])
        _sh([*ip, "link", "set", "eth0", "up"])
        for addr in (f"{POD_IP}/24", f"{WEB_IP}/32", f"{DB_IP}/32", f"{DNS_IP}/32"):
            _sh([*ip, "addr", "add", addr, "dev", "eth0"])
        for addr in (f"{POD_IP6}/64", f"{WEB_IP6}/128", f"{DNS_IP6}/128"):
            _sh([*ip, "-6", "addr", "add", addr, "dev", "eth0", "nodad"])
        # The laptop has an IPv4 address of its own on a "wlan0", like a real laptop (no
        # global IPv6, and no route to the pod networks): glibc's AI_ADDRCONFIG looks
        # at the local interfaces before it asks DNS for a family.
        lip = ["ip", "-n", lap]
        _sh([*lip, "link", "add", "wlan0", "type", "ifb"])
        _sh([*lip, "link", "set", "wlan0", "up"])
        _sh([*lip, "addr", "add", f"{LAPTOP_IP}/24", "dev", "wlan0"])
        # A `blackhole` route makes connect() fail at once with EINVAL on Linux; to get a
        # real timeout the SYNs must vanish, so route them into eth0, which drops them.
        _sh([*ip, "route", "add", TIMEOUT_NET, "dev", "eth0"])
        _sh([*ip, "route", "add", "unreachable", UNREACHABLE_NET])
        _sh([*ip, "route", "add", "blackhole", BLACKHOLE_NET])
        _sh(["ip", "netns", "exec", pod, "sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1"])
        _sh(["ip", "netns", "exec", lap, "sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1"])
        self._start_web()
        self._start_dnsmasq()
        self._save_state()

    def _start_web(self) -> None:
        listen = [
            f"{WEB_IP}:{WEB_PORT}",
            f"[{WEB_IP6}]:{WEB_PORT}",
            f"{WEB_IP}:80",
            f"[{WEB_IP6}]:80",
            f"{POD_IP}:{WEB_PORT}",
        ]
        argv = ["ip", "netns", "exec", self.pod_ns, self.python, "-I", "-S"]
        argv += [str(HERE / "podweb.py"), "--log", str(self.web_log)]
        for spec in listen:
            argv += ["--listen", spec]
        err_log = self.tmp / "web-stderr.log"
        with open(err_log, "wb") as err:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        self._procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ready" once every socket is bound, EOF on a crash
        proc.stdout.close()
        if line.strip() != b"ready":
            proc.kill()
            proc.wait(timeout=5)
            raise RuntimeError(f"pod web server did not start: {err_log.read_text()}")

    def _start_dnsmasq(self) -> None:
        argv = [
            "ip", "netns", "exec", self.pod_ns, "dnsmasq",
            "--keep-in-foreground", "--conf-file=/dev/null", "--user=root",
            "--no-resolv", "--no-hosts", "--no-poll", "--local=/cluster.local/",
            # Any other name: NXDOMAIN too (as CoreDNS + an upstream would say), never
            # REFUSED, so resolvers finish their search list with "no such host".
            "--local=/#/",
            "--bind-interfaces", f"--listen-address={DNS_IP}", f"--listen-address={DNS_IP6}",
            f"--pid-file={self.dns_pid_file}", f"--log-facility={self.dns_log}",
            "--log-queries",
            f"--host-record={WEB_FQDN},{WEB_IP},{WEB_IP6}",
            f"--host-record={DB_FQDN},{DB_IP}",
            f"--cname={WWW_FQDN},{WEB_FQDN}",
            f"--srv-host={SRV_NAME},{WEB_FQDN},{WEB_PORT}",
        ]  # fmt: skip
        err_log = self.tmp / "dnsmasq-stderr.log"
        with open(err_log, "wb") as err:
            proc = subprocess.Popen(argv, stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        deadline = time.monotonic() + 15
        probe = [self.python, "-I", "-S", str(HERE / "dnsq.py"), "--timeout", "1"]
        probe += ["--server", DNS_IP, WEB_FQDN]
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {proc.returncode}: {err_log.read_text()}")
            res = self.pod_run(probe, timeout=10, hostname=False)
            if res.returncode == 0 and WEB_IP in res.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq does not answer in the pod: {res.stderr}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop everything this cluster started and remove every trace of it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in [*self._spawned, *self._procs, self._bridge]:
            if proc is None or proc.poll() is not None:
                continue
            if proc in self._spawned:
                _kill_tree(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for proc in [*self._spawned, *self._procs, self._bridge]:
            if proc is None:
                continue
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        paths = [str(self.pod_etc), str(self.laptop_etc), str(self.tmp)]
        if self._unpriv is not None:
            paths.append(str(self._unpriv.root))
        errors = _remove_resources([self.pod_ns, self.laptop_ns], paths)
        if errors:
            print("cluster cleanup problems:\n  " + "\n  ".join(errors), file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                self.state_file.unlink()

    # ------------------------------------------------------------------ running things

    def _pod_wrap(self, argv: Sequence[str]) -> list[str]:
        """Give ``argv`` the pod's hostname (its own UTS namespace, like a container)."""
        return [
            "unshare",
            "-u",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            POD_HOSTNAME,
            *map(str, argv),
        ]

    def mirrortrace_argv(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        user: str | int | None = None,
        mt_args: Sequence[str] = (),
        agent_exec: str | None = None,
    ) -> list[str]:
        """The full command line that runs ``argv`` under mirrortrace in the laptop."""
        cmd = ["ip", "netns", "exec", self.laptop_ns]
        if user is None:
            python = self.python
            agent = self.agent_exec if agent_exec is None else agent_exec
        else:
            pw = _user(user)
            cmd += ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
            python = self.unprivileged_python()
            agent = self.agent_exec_unprivileged() if agent_exec is None else agent_exec
        # agent_exec="" means no --agent-exec at all (a --target run, or the local agent).
        via = ["--agent-exec", agent] if agent else []
        cmd += [python, "-m", "supervisor.cli", "run", *via, *mt_args, "--"]
        return cmd + [os.fspath(a) for a in argv]

    def _env(self, user: str | int | None, env: Mapping[str, str] | None) -> dict[str, str]:
        if user is None:
            base = dict(os.environ)
        else:
            home = self.home_of(user)
            base = {"PATH": SAFE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
            for key in ("TERM", "TZ"):
                if key in os.environ:
                    base[key] = os.environ[key]
        base.update(env or {})
        return base

    def home_of(self, user: str | int) -> Path:
        """A private, writable home (and working directory) for unprivileged runs."""
        pw = _user(user)
        if pw.pw_uid not in self._homes:
            home = self.tmp / f"home-{pw.pw_uid}"
            home.mkdir(mode=0o700, exist_ok=True)
            os.chown(home, pw.pw_uid, pw.pw_gid)
            self._homes[pw.pw_uid] = home
        return self._homes[pw.pw_uid]

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = 60,
        user: str | int | None = None,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        mt_args: Sequence[str] = (),
        agent_exec: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` under ``mirrortrace run`` in the laptop namespace and capture it.

        ``mt_args`` are extra mirrortrace options (``["--ui", "json"]``); ``env`` is merged
        over the environment (for ``user`` runs, over a minimal one); ``user`` runs the
        supervisor unprivileged via setpriv with a venv that user can read, the agent being
        reached through a root-owned socket bridge. A run that exceeds ``timeout`` seconds is
        killed (its whole process group) and fails the test with what it printed so far.
        """
        cmd = self.mirrortrace_argv(argv, user=user, mt_args=mt_args, agent_exec=agent_exec)
        if cwd is None and user is not None:
            cwd = self.home_of(user)
        return _run_captured(
            cmd, timeout=timeout, env=self._env(user, env), input=input, cwd=cwd, text=text
        )

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        user: str | int | None = None,
        env: Mapping[str, str] | None = None,
        mt_args: Sequence[str] = (),
        agent_exec: str | None = None,
        **popen_kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` under mirrortrace in the background (e.g. a server for incoming
        traffic). Output goes where ``popen_kwargs`` say; stop it with :meth:`stop`; it is
        killed at the end of the session anyway."""
        cmd = self.mirrortrace_argv(argv, user=user, mt_args=mt_args, agent_exec=agent_exec)
        if user is not None:
            popen_kwargs.setdefault("cwd", self.home_of(user))
        proc = subprocess.Popen(
            cmd, env=self._env(user, env), start_new_session=True, **popen_kwargs
        )
        self._spawned.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal a :meth:`spawn`-ed run; SIGKILL its process group if it does not end."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            return proc.wait(timeout=10)

    def pod_run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        hostname: bool = True,
        text: bool = True,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` directly in the pod (its network, /etc files and hostname).

        This is what the program would see if it really ran in the pod: the reference a
        traced run is compared with.
        """
        inner = self._pod_wrap(argv) if hostname else [os.fspath(a) for a in argv]
        cmd = ["ip", "netns", "exec", self.pod_ns, *inner]
        full_env = {**os.environ, **(env or {})}
        return _run_captured(cmd, timeout=timeout, env=full_env, input=input, text=text, cwd=cwd)

    def laptop_run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        text: bool = True,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the laptop namespace WITHOUT mirrortrace: the baseline that fails."""
        cmd = ["ip", "netns", "exec", self.laptop_ns, *map(os.fspath, argv)]
        full_env = {**os.environ, **(env or {})}
        return _run_captured(cmd, timeout=timeout, env=full_env, input=input, text=text, cwd=cwd)

    # ------------------------------------------------------------------ unprivileged runs

    def unprivileged_python(self) -> str:
        """A Python any user can run with mirrortrace installed (built on first use)."""
        if self._unpriv is None:
            self._unpriv = UnprivilegedPython(REPO)
            self._save_state()
        return self._unpriv.ensure()

    def agent_exec_unprivileged(self) -> str:
        """An --agent-exec for unprivileged supervisors, through a root-side socket bridge.

        ``ip netns exec`` needs root, so a root ``agent_bridge.py --serve`` listens on a unix
        socket (mode 666) and starts the normal agent command for each connection; the
        user's supervisor runs ``agent_bridge.py SOCKET``, which relays its stdin/stdout to
        that socket. Exactly like reaching an agent through ``kubectl exec -i``.
        """
        sock = self.tmp / "agent.sock"
        client = self.tmp / "agent_bridge.py"  # world-readable copy
        if self._bridge is None or self._bridge.poll() is not None:
            shutil.copy(HERE / "agent_bridge.py", client)
            os.chmod(client, 0o644)
            argv = [self.python, "-I", "-S", str(client), "--serve", str(sock), *self.agent_argv]
            with open(self.tmp / "bridge.log", "ab") as log:
                self._bridge = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
                )
            assert self._bridge.stdout is not None
            ready = self._bridge.stdout.readline()
            self._bridge.stdout.close()
            if ready.strip() != b"ready":
                raise RuntimeError(f"agent socket bridge did not start: {self.tmp}/bridge.log")
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else self.python
        return shlex.join([python, "-I", "-S", str(client), str(sock)])


def _kill_tree(pid: int) -> None:
    """SIGKILL a process, its process group and every descendant (the supervisor starts the
    agent in a session of its own, so the process group alone would miss it)."""
    try:
        import psutil

        family = psutil.Process(pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        family = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(Exception):
            child.kill()


def _user(user: str | int) -> pwd.struct_passwd:
    return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)


def _run_captured(
    cmd: list[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None,
    input: str | bytes | None,
    cwd: str | os.PathLike[str] | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with a hard timeout that kills the whole process group and fails."""
    if input is not None and text and isinstance(input, bytes):
        input = input.decode()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        text=text,
        errors="replace" if text else None,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(
            f"timed out after {timeout} s and was killed: {shlex.join(cmd)}\n"
            f"--- stdout ---\n{out!s:.4000}\n--- stderr ---\n{err!s:.4000}",
            pytrace=False,
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class UnprivilegedPython:
    """A world-readable venv with mirrortrace installed, for runs as e.g. ``nobody``.

    The test interpreter usually lives where other users cannot read it (pyenv under /root,
    the repo's .venv), so this venv is made from Debian's /usr/bin/python3 under /tmp (mode
    755) with a non-editable install of a world-readable copy of the work tree (tracked and
    untracked-but-not-ignored files) plus its runtime dependencies from PyPI.
    """

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.root = Path(tempfile.mkdtemp(prefix="mt-unpriv-"))
        self.python: str | None = None
        self.error: str | None = None

    def ensure(self) -> str:
        """Build the venv once; skip the test clearly when that is impossible here."""
        if self.python is not None:
            return self.python
        if self.error is not None:
            raise RuntimeError(self.error)
        try:
            return self._build()
        except RuntimeError as exc:
            self.error = str(exc)
            raise

    def _build(self) -> str:
        base = "/usr/bin/python3"
        if not os.access(base, os.X_OK):
            pytest.skip("unprivileged runs need Debian's /usr/bin/python3")
        probe = subprocess.run([base, "-c", "import venv, ensurepip"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip("unprivileged runs need python3-venv (apt-get install python3-venv)")
        os.chmod(self.root, 0o755)
        src = self.root / "src"
        self._copy_tree(src)
        venv = self.root / "venv"
        python = str(venv / "bin" / "python")
        # Fast path: an empty venv filled by this interpreter's pip (--python needs
        # pip >= 22.3) without byte-compiling, then compile everything but the 75 MB
        # kubernetes client, which only --target runs import (never done as another user).
        _sh([base, "-m", "venv", "--without-pip", str(venv)], timeout=120)
        quiet = ["install", "-q", "--no-input"]
        fast = [sys.executable, "-m", "pip", "--python", python, *quiet, "--no-compile", str(src)]
        proc = subprocess.run(fast, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            site = next((venv / "lib").glob("python3*/site-packages"))
            skip = r"site-packages/kubernetes/"
            _sh([python, "-m", "compileall", "-q", "-j0", "-x", skip, str(site)], check=False)
        else:
            first_error = proc.stderr
            shutil.rmtree(venv)
            _sh([base, "-m", "venv", str(venv)], timeout=120)
            slow = [python, "-m", "pip", *quiet, str(src)]
            proc = subprocess.run(slow, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"installing mirrortrace into {venv} failed:\n{first_error}\n{proc.stderr}"
                )
        _sh(["chmod", "-R", "a+rX", str(self.root)])
        self.python = python
        return self.python

    def _copy_tree(self, dest: Path) -> None:
        listing = subprocess.run(
            ["git", "-C", str(self.repo), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True,
        )  # fmt: skip
        if listing.returncode == 0 and listing.stdout:
            for rel in listing.stdout.decode().split("\0"):
                if not rel:
                    continue
                src = self.repo / rel
                if not src.is_file():
                    continue  # deleted in the work tree
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        else:
            shutil.copytree(
                self.repo,
                dest,
                ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"),
            )


def connect_errno_script(host: str, port: int) -> list[str]:
    """argv of a tiny Python program printing ``ok`` or the errno name of a TCP connect."""
    code = (
        "import errno, socket, sys\n"
        "h, p = sys.argv[1], int(sys.argv[2])\n"
        "s = socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET)\n"
        "try:\n"
        "    s.connect((h, p)); print('ok')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, e.errno))\n"
    )
    return [sys.executable, "-I", "-S", "-c", code, host, str(port)]
