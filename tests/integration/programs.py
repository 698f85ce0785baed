"""Build the test client programs of tests/programs once per session.

Each program stands for a family of runtimes whose DNS and sockets reach the kernel in a
different way (Go's raw syscalls and pure resolver, musl's static resolver, the JVM, Node's
c-ares and libuv, busybox, CPython). They are built into one world-readable temp directory
so unprivileged runs can execute them too. A missing toolchain does not fail the session: the
program is recorded as unavailable and only the tests that use it are skipped, with the reason.
Every session builds from the sources afresh (Go with an empty build cache), so an edited
source is always what runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

SOURCES = Path(__file__).resolve().parent.parent / "programs"
DNSQ = Path(__file__).resolve().parent / "dnsq.py"

# A urllib client: `[*programs.python_get, URL]` prints the body (error text, exit 1 on failure).
PY_GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    body = urllib.request.urlopen(sys.argv[1], timeout=60).read()\n"
    "except Exception as e:\n"
    "    print(f'error: {e}', file=sys.stderr); sys.exit(1)\n"
    "sys.stdout.buffer.write(body)\n"
)


def is_static(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """Whether ``file`` calls the binary statically linked, and what it said."""
    out = subprocess.run(["file", "-L", os.fspath(path)], capture_output=True, text=True).stdout
    return ("statically linked" in out or "static-pie linked" in out), out.strip()


class Programs:
    """Paths and argv prefixes of the built clients; a missing one skips the asking test.

    - ``goclient`` (path): ``get [-sha] URL``, ``lookup NAME``, ``srv SERVICE PROTO NAME``,
      ``hostname``, ``dial HOST:PORT``, ``env``, ``stress N URL [ITERS]``; files: ``read PATH``
      ("LEN SHA256HEX"), ``stat PATH`` / ``lstat PATH`` ("SIZE PERM dir|file|link|other"),
      ``ls DIR`` ("NAME d|f|l|o" lines), ``write PATH TEXT``, ``readlink PATH``
    - ``muslclient`` (path): ``HOST PORT PATH``
    - ``muslfiles`` (path): ``cat PATH``, ``stat PATH`` / ``lstat PATH`` (as goclient's),
      ``ls DIR`` (names only), ``write PATH TEXT``
    - ``java`` (argv prefix): ``[*java, URL]``, ``[*java, "lookup", NAME]``,
      ``[*java, "jndi", NAME]``
    - ``node`` (argv prefix): ``get URL``, ``resolve NAME``, ``resolve6 NAME``, ``lookup NAME``
    - ``busybox`` (path): ``wget -qO- URL``, ``nslookup NAME``
    - ``python_get`` (argv prefix): ``[*python_get, URL]``
    - ``dnsq`` (argv prefix): ``[*dnsq, NAME, TYPE]`` raw DNS query, JSON out (dnsq.py)
    """

    def __init__(self, out: Path) -> None:
        self.dir = out
        self.errors: dict[str, str] = {}  # name -> why its toolchain is missing (skip)
        self.failures: dict[str, str] = {}  # name -> why its build failed (fail)
        self._paths: dict[str, str] = {}
        self.python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None
        self.python = self.python or sys.executable

    def require(self, name: str) -> str:
        """The built artefact for ``name``; skip the calling test if its toolchain is missing,
        fail it if the build failed."""
        if name in self.failures:
            pytest.fail(f"building test program {name} failed: {self.failures[name]}")
        if name not in self._paths:
            pytest.skip(f"test program {name} unavailable: {self.errors.get(name, 'not built')}")
        return self._paths[name]

    @property
    def goclient(self) -> str:
        return self.require("goclient")

    @property
    def muslclient(self) -> str:
        return self.require("muslclient")

    @property
    def muslfiles(self) -> str:
        return self.require("muslfiles")

    @property
    def java(self) -> list[str]:
        classes = self.require("java")
        java = shutil.which("java") or "java"
        # Small, fast-starting JVM: these clients run for well under a second.
        return [java, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", classes, "JavaClient"]

    @property
    def node(self) -> list[str]:
        return [shutil.which("node") or "node", self.require("node")]

    @property
    def busybox(self) -> str:
        return self.require("busybox")

    @property
    def python_get(self) -> list[str]:
        return [self.python, "-c", PY_GET]

    @property
    def dnsq(self) -> list[str]:
        return [self.python, "-I", "-S", self.require("dnsq")]

    # ------------------------------------------------------------------ building

    def build_all(self) -> None:
        """Build everything, in parallel (the Go build dominates: ~5 s with a cold cache)."""
        builders: dict[str, Callable[[], str]] = {
            "goclient": self._build_go,
            "muslclient": lambda: self._build_musl("muslclient"),
            "muslfiles": lambda: self._build_musl("muslfiles"),
            "java": self._build_java,
            "node": self._build_node,
            "busybox": self._find_busybox,
            "dnsq": self._copy_dnsq,
        }
        with ThreadPoolExecutor(max_workers=len(builders)) as pool:
            futures = {name: pool.submit(fn) for name, fn in builders.items()}
        for name, fut in futures.items():
            try:
                self._paths[name] = fut.result()
            except _Unavailable as exc:
                self.errors[name] = str(exc)
            except _BuildFailed as exc:
                self.failures[name] = str(exc)
        subprocess.run(["chmod", "-R", "a+rX", str(self.dir)], check=True)

    def _run(self, argv: list[str], what: str, **kw: Any) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
        if proc.returncode != 0:
            raise _BuildFailed(f"{what} failed: {proc.stdout}{proc.stderr}".strip())

    def _static(self, path: Path) -> str:
        static, said = is_static(path)
        if not static:
            raise _BuildFailed(f"{path} is not static: {said}")
        return str(path)

    def _build_go(self) -> str:
        go = shutil.which("go")
        if not go:
            raise _Unavailable("no Go toolchain (apt-get install golang-go)")
        work = Path(tempfile.mkdtemp(prefix="go-", dir=self.dir))
        env = {
            **os.environ,
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=mod",
            "GOTOOLCHAIN": "local",
            "GOPROXY": "off",
            "GO111MODULE": "on",
            "GOCACHE": str(work / "cache"),
            "GOPATH": str(work / "gopath"),
        }
        out = self.dir / "goclient"
        self._run(
            [go, "build", "-ldflags=-s -w", "-o", str(out), "."],
            "go build",
            cwd=SOURCES / "goclient",
            env=env,
        )
        shutil.rmtree(work, ignore_errors=True)
        return self._static(out)

    def _build_musl(self, name: str) -> str:
        """Build ``tests/programs/NAME.c`` with musl-gcc, statically."""
        cc = shutil.which("musl-gcc")
        if not cc:
            raise _Unavailable("no musl-gcc (apt-get install musl-tools)")
        out = self.dir / name
        source = SOURCES / f"{name}.c"
        self._run([cc, "-static", "-O2", "-o", str(out), str(source)], f"musl-gcc {source.name}")
        return self._static(out)

    def _build_java(self) -> str:
        javac = shutil.which("javac")
        if not javac or not shutil.which("java"):
            raise _Unavailable("no JDK (apt-get install openjdk-17-jdk-headless)")
        out = self.dir / "java"
        out.mkdir()
        self._run(
            [javac, "--release", "17", "-d", str(out), str(SOURCES / "JavaClient.java")], "javac"
        )
        return str(out)

    def _build_node(self) -> str:
        if not shutil.which("node"):
            raise _Unavailable("no node (apt-get install nodejs)")
        out = self.dir / "nodeclient.js"
        shutil.copy(SOURCES / "nodeclient.js", out)
        return str(out)

    def _find_busybox(self) -> str:
        for path in ("/bin/busybox", "/usr/bin/busybox"):
            if os.access(path, os.X_OK):
                return self._static(Path(path))
        raise _Unavailable("no busybox (apt-get install busybox-static)")

    def _copy_dnsq(self) -> str:
        out = self.dir / "dnsq.py"
        shutil.copy(DNSQ, out)
        return str(out)


class _Unavailable(Exception):
    """A program cannot be built here (no toolchain); the tests that need it are skipped."""


class _BuildFailed(Exception):
    """The toolchain is there but the build went wrong: a bug, so the tests that need it fail."""


def build_programs(out: Path) -> Programs:
    """Build every test program into ``out`` (which must exist)."""
    programs = Programs(out)
    programs.build_all()
    return programs
