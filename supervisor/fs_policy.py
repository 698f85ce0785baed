"""Which paths are the pod's: the file policy, and the rule that decided.

The defaults must make real services work with no flags (CONTRACT.md, --fs):

- always local: /proc, /sys, /dev, /tmp, /usr, /lib*, /bin, /sbin, /nix,
  the current directory, $HOME, the program's own directory, shared
  libraries (*.so, *.so.N) and the dynamic loader's files (/etc/ld.so.*):
  the program, its libraries and its runtime are this machine's, and a
  loader that found the pod's copy of a library would load the wrong one;
- always remote: /var/run/secrets, /run/secrets (service-account tokens and
  mounted secrets) and /etc/ssl/certs (the pod's CA bundle, so TLS to
  in-cluster services verifies as it does in the pod);
- anything else (/etc/<app>/, /config, /data, ConfigMap mounts): local when
  it exists on this machine, else the pod's. A JVM's /etc/java-17-openjdk
  or glibc's /etc/gai.conf exist here and stay local; /etc/app/config.yaml
  does not, and comes from the pod.

`--fs-local` and `--fs-remote` patterns win over all of that (a path both
match is local). A pattern names a path and everything below it: `*` and
`?` match within one component, `**` across components (`/etc/**/*.yaml`),
and `re:REGEX` is searched for in the whole path, as mirrord does.

Every decision carries the rule that made it, shown with each diverted call,
so "why did this come from the pod?" is answered on screen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from syscalls.base import MISSING_HERE

LOCAL = False
REMOTE = True

_ALWAYS_LOCAL = (
    rb"/(?:proc|sys|dev|tmp|usr|bin|sbin|nix|lib(?:32|64|x32|exec)?)(?:/|$)"
    rb"|/etc/ld\.so\.[^/]*$"
    rb"|.*/[^/]*\.so(?:\.[0-9][0-9.]*)?$"
)
_ALWAYS_REMOTE = re.compile(rb"/(?:var/run/secrets|run/secrets|etc/ssl/certs)(?:/|$)")

RULE_PATTERN_LOCAL = "--fs-local {}"
RULE_PATTERN_REMOTE = "--fs-remote {}"
RULE_LOCAL = "this machine's: {}"
RULE_SYSTEM = RULE_LOCAL.format("system path")
RULE_SECRETS = "the pod's: secrets and CA certificates"
RULE_MISSING = MISSING_HERE
RULE_INSIDE = "inside a directory of the pod"
RULE_EXISTS = "this machine's: it exists here"


def glob_regex(pattern: str) -> str:
    """A path glob as a regex matching the path and everything below it."""
    if pattern.endswith("/**"):
        pattern = pattern[:-3] or "/"
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("/**/", i):
            out.append("/(?:.*/)?")
            i += 4
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    body = "".join(out)
    if body == "/":
        return "^/.*$"
    return "^" + body.rstrip("/") + "(?:/.*)?$"


def _compile(patterns: Iterable[str]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for pattern in patterns:
        regex = pattern[3:] if pattern.startswith("re:") else glob_regex(pattern)
        out.append((re.compile(regex), pattern))
    return out


def _dir_rx(path: str) -> bytes:
    return re.escape(path.rstrip("/").encode(errors="surrogateescape")) + rb"(?:/|$)"


class FsPolicy:
    """Decides, for an absolute normalised path, whether it is local or the pod's."""

    def __init__(
        self,
        mode: str,
        *,
        remote: Iterable[str] = (),
        local: Iterable[str] = (),
        cwd: str | None = None,
        home: str | None = None,
        program: str | None = None,
    ) -> None:
        self.mode = mode
        self._local = _compile(local)
        self._remote = _compile(remote)
        named: list[tuple[str, str]] = []  # (directory, why it is local)
        if cwd and cwd != "/":
            named.append((cwd, "the current directory"))
        if home and home != "/":
            named.append((home, "$HOME"))
        if program:
            where = os.path.dirname(os.path.realpath(program))
            if os.path.basename(where) in ("bin", "sbin"):
                where = os.path.dirname(where)  # /opt/app/bin/app: /opt/app/lib is its too
            if where != "/":
                named.append((where, "the program's directory"))
        self._named = [(re.compile(_dir_rx(d)), RULE_LOCAL.format(why)) for d, why in named]
        self._system = re.compile(_ALWAYS_LOCAL)
        self._local_parts = [_ALWAYS_LOCAL] + [_dir_rx(d) for d, _ in named]

    def quick_local(self, exclude: bytes) -> re.Pattern[bytes] | None:
        """One regex that says "local, nothing to do" for the commonest case: an already
        normal absolute path under an always-local prefix, and not under `exclude`
        (the cache, which lives in /tmp but mirrors the pod). None when patterns are
        given: they may make any of those paths the pod's."""
        if self._local or self._remote:
            return None
        parts = b"|".join(b"(?:" + part + b")" for part in self._local_parts)
        return re.compile(b"(?!" + _dir_rx(os.fsdecode(exclude)) + rb")(?!.*(?://|/\.\.?(?:/|$)))(?:"
                          + parts + b")")

    @property
    def active(self) -> bool:
        return self.mode != "local"

    def decide(self, path: bytes, in_pod: bool = False) -> tuple[bool, str]:
        """(REMOTE or LOCAL, the rule that decided). Costs at most one lstat(2).

        `in_pod`: the path was reached through a directory of the pod (its cwd or
        dirfd is one), so, rules aside, it is the pod's whether or not it exists here.
        """
        if self._local or self._remote:
            text = path.decode(errors="surrogateescape")
            for rx, pattern in self._local:
                if rx.search(text):
                    return LOCAL, RULE_PATTERN_LOCAL.format(pattern)
            for rx, pattern in self._remote:
                if rx.search(text):
                    return REMOTE, RULE_PATTERN_REMOTE.format(pattern)
        for rx, rule in self._named:
            if rx.match(path):
                return LOCAL, rule
        if self._system.match(path):
            return LOCAL, RULE_SYSTEM
        if _ALWAYS_REMOTE.match(path):
            return REMOTE, RULE_SECRETS
        if in_pod:
            return REMOTE, RULE_INSIDE
        try:
            os.lstat(path)
        except FileNotFoundError:
            return REMOTE, RULE_MISSING
        except NotADirectoryError:
            return REMOTE, RULE_MISSING
        except OSError:
            return LOCAL, RULE_EXISTS  # here but unreachable (EACCES...): the kernel says so
        return LOCAL, RULE_EXISTS
