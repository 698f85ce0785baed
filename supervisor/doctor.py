"""`mirrortrace doctor`: can this machine run mirrortrace, and if not, why.

Each check probes the real thing where it can (a child that asks to be
traced, a seccomp call that can only fail, a pidfd_getfd on ourselves)
rather than trusting a version number alone: containers and hardened
kernels block these calls in ways no version string shows.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
from dataclasses import dataclass

PTRACE_TRACEME = 0
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
# x86_64 and the asm-generic numbering agree from 424 on.
NR_PIDFD_GETFD = 438
MIN_KERNEL = (5, 6)


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable / not configured
    detail: str
    fix: str = ""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def check_ptrace() -> Check:
    scope_path = "/proc/sys/kernel/yama/ptrace_scope"
    try:
        with open(scope_path) as f:
            scope = int(f.read().strip())
    except (OSError, ValueError):
        scope = None
    if scope == 3:
        return Check(
            "ptrace",
            False,
            "Yama ptrace_scope is 3: ptrace is disabled until reboot",
            "boot with kernel.yama.ptrace_scope=0, 1 or 2 (sysctl.d), then reboot",
        )
    # Ask a child to be traced by us: this is what the supervisor needs, and
    # it fails under a seccomp profile or LSM that forbids ptrace.
    libc = _libc()
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe work, then _exit
        code = 0
        if libc.ptrace(PTRACE_TRACEME, 0, None, None) != 0:
            code = 10 + (ctypes.get_errno() & 0x7F)
        else:
            os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(code)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        where = "no Yama LSM" if scope is None else f"Yama ptrace_scope {scope}"
        if scope == 2 and os.geteuid() != 0:
            return Check(
                "ptrace",
                False,
                "Yama ptrace_scope is 2: only root (CAP_SYS_PTRACE) may trace",
                "run as root, or: sudo sysctl kernel.yama.ptrace_scope=1",
            )
        return Check("ptrace", True, f"a child can be traced ({where})")
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
    err = errno.errorcode.get(code - 10, "?") if code >= 10 else "?"
    return Check(
        "ptrace",
        False,
        f"PTRACE_TRACEME failed ({err})",
        "in a container, run it with --cap-add SYS_PTRACE and a seccomp profile "
        "that allows ptrace (docker: --security-opt seccomp=unconfined)",
    )


def check_seccomp() -> Check:
    field = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    field = line.split()[1]
    except OSError:
        pass
    if field is None:
        return Check(
            "seccomp",
            False,
            "the kernel has no seccomp (no Seccomp field in /proc/self/status)",
            "use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER",
        )
    libc = _libc()
    # A NULL filter program: the kernel copies it in before any permission
    # check, so EFAULT proves filter mode exists, and nothing is installed.
    rc = libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, None, 0, 0)
    err = ctypes.get_errno()
    if rc == 0 or err != errno.EFAULT:
        return Check(
            "seccomp",
            False,
            f"seccomp filter mode is unavailable ({errno.errorcode.get(err, err)})",
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        )
    mode = libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0)
    extra = " (this process already runs under a filter)" if mode == 2 or field == "2" else ""
    return Check("seccomp", True, f"filter mode available{extra}")


def check_kernel() -> Check:
    release = platform.release()
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        version = (0, 0)
    if version < MIN_KERNEL:
        return Check(
            "kernel",
            False,
            f"Linux {release} is older than 5.6, which added pidfd_getfd",
            "upgrade the kernel to 5.6 or later",
        )
    # pidfd_getfd on ourselves: the same call the relay makes on a tracee.
    try:
        pidfd = os.pidfd_open(os.getpid())
    except OSError as err:
        return Check(
            "kernel", False, f"pidfd_open failed ({err.strerror})", "allow pidfd_open in seccomp"
        )
    try:
        libc = _libc()
        fd = libc.syscall(NR_PIDFD_GETFD, pidfd, 0, 0)
        err = ctypes.get_errno()
    finally:
        os.close(pidfd)
    if fd < 0:
        return Check(
            "kernel",
            False,
            f"Linux {release}, but pidfd_getfd failed ({errno.errorcode.get(err, err)})",
            "in a container, allow pidfd_getfd in the seccomp profile",
        )
    os.close(fd)
    return Check("kernel", True, f"Linux {release}, pidfd_getfd works")


def check_python_ptrace() -> Check:
    try:
        import ptrace.version
    except ImportError as err:
        return Check(
            "python-ptrace",
            False,
            f"not importable ({err})",
            "pip install 'python-ptrace>=0.9.9' (or reinstall mirrortrace)",
        )
    version = ".".join(str(x) for x in ptrace.version.VERSION)
    return Check("python-ptrace", True, version)


def check_kubernetes(kubeconfig: str | None = None, context: str | None = None,
                     namespace: str | None = None) -> list[Check]:
    """The cluster, if one is configured: reachable, and each verb mirrortrace uses
    allowed (asked of the API server itself)."""
    wanted = kubeconfig or context or namespace
    default = os.path.expanduser("~/.kube/config")
    if not wanted and not os.environ.get("KUBECONFIG") and not os.path.exists(default):
        return [Check("kubernetes", None, "not configured (no kubeconfig): --agent-exec and "
                      "the local agent work without it")]
    from pathlib import Path

    from supervisor.errors import MirrortraceError
    from supervisor.k8s_access import access
    from supervisor.k8s_api import connect

    try:
        kube = connect(Path(kubeconfig) if kubeconfig else None, context)
        ns = namespace or kube.namespace
        version = kube.request("get", "version", None, "GET", "/version")
        checks = [Check("kubernetes", True,
                        f"{kube.where}, server {version.get('gitVersion', '?')}")]
        for what, allowed, why in access(kube, ns):
            checks.append(Check(f"rbac: {what}", allowed, f"in {ns}: {why}",
                                f"grant '{what}' in namespace {ns} (the Role is in the README)"))
        return checks
    except MirrortraceError as exc:
        return [Check("kubernetes", False, exc.message, exc.hint or "")]


CHECKS = (check_ptrace, check_seccomp, check_kernel, check_python_ptrace)


def run_checks(kubeconfig: str | None = None, context: str | None = None,
               namespace: str | None = None) -> int:
    """Print one line per check (and how to fix a failure); 0 if all pass, else 1."""
    failed = 0
    results = [check() for check in CHECKS]
    results += check_kubernetes(kubeconfig, context, namespace)
    for result in results:
        mark = {True: "ok", False: "FAIL", None: "--"}[result.ok]
        print(f"{mark:<4}  {result.name}: {result.detail}", flush=True)
        if result.ok is False:
            failed += 1
            if result.fix:
                print(f"      fix: {result.fix}", flush=True)
    if failed:
        print(f"{failed} problem{'s' if failed > 1 else ''} found", flush=True)
    return 1 if failed else 0
