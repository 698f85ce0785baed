"""COMMAND's environment: the pod's, this machine's, or a merge of the two.

`merge` (the default) is what a developer wants: the service's configuration
comes from the pod (DATABASE_URL, feature flags, the KUBERNETES_SERVICE_*
variables), while the variables that describe this machine and this user's
session stay local, or the program could not find its own tools, home, terminal
or display. `--env-exclude GLOB` keeps more names local (the local value if there
is one; the variable is absent otherwise).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

# Names that describe this machine and session, not the service: merge keeps them.
KEEP_LOCAL = ("PATH", "HOME", "TERM", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "SSH_*",
              "LANG", "LANGUAGE", "LC_*", "USER", "LOGNAME", "SHELL", "TMPDIR", "PWD",
              "XDG_*", "COLORTERM", "TERM_*")


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def resolve_env(mode: str, local: Mapping[str, str], pod: Mapping[str, str] | None,
                exclude: Iterable[str] = (), include: Iterable[str] = (),
                override: Mapping[str, str] | None = None) -> tuple[dict[str, str], set[str]]:
    """The environment COMMAND starts with, and the names whose value is the pod's.

    remote: the pod's variables only (excluded names keep their local value);
    merge: this machine's, overlaid by the pod's except the KEEP_LOCAL and excluded
    names; local (or no pod environment at all): this machine's, unchanged.
    `include` (globs), when given, limits what is taken from the pod to those names
    (mirrord's env.include); `override` is set last, over everything.
    """
    exclude, include = tuple(exclude), tuple(include)
    if mode == "local" or pod is None:
        env, from_pod = dict(local), set()
    else:
        keep = exclude if mode == "remote" else (*KEEP_LOCAL, *exclude)
        env = {} if mode == "remote" else dict(local)
        from_pod = set()
        for name, value in pod.items():
            if not _matches(name, keep) and (not include or _matches(name, include)):
                env[name] = value
                from_pod.add(name)
        for name, value in local.items():
            if _matches(name, keep) or (include and mode == "remote" and name not in env
                                        and not _matches(name, include)):
                env[name] = value
    for name, value in (override or {}).items():
        env[name] = value
        from_pod.discard(name)
    return env, from_pod


def describe_env(env: Mapping[str, str], from_pod: set[str], pod_known: bool) -> str:
    """One line naming (never showing) where COMMAND's variables came from."""
    if not pod_known:
        return "environment: this machine's"
    pod = sorted(from_pod)
    kept = sorted(n for n in env if n not in from_pod)
    more = ", ..." if len(kept) > 12 else ""
    return (f"environment: {len(pod)} from the pod ({', '.join(pod) or 'none'}); "
            f"{len(kept)} local ({', '.join(kept[:12]) or 'none'}{more})")


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/PID/environ: NUL-separated NAME=value entries (entries without '=' are
    not variables and are skipped, as getenv(3) would never find them)."""
    out: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            out[name.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    return out


def encode_environ(env: Mapping[str, str]) -> bytes:
    return b"".join(
        f"{k}={v}".encode(errors="surrogateescape") + b"\0" for k, v in env.items()
    )
