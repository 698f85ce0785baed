#!/usr/bin/env python3
"""mirrortrace file benchmarks: imports under tracing, and pod files read through the agent.

    python benches/bench_files.py [--quick] [--rows 1,2,3]

Prints a Markdown table (with the machine and the date) ready to paste into the README;
progress goes to stderr. What each row means is in benches/README.md. In short:

1. ``import json, email, http.client, asyncio`` timed inside Python: untraced vs
   ``mirrortrace run`` (local agent; every file is local by policy) vs ``strace -f`` vs
   ``proot -b /:/``.
2. 1,000 pod files of 1 KiB listed and read by one process through mirrortrace (an agent
   serving a temporary directory as the pod's root; each run starts with a cold cache) vs
   the same program reading that directory untraced.
3. One 100 MiB (``--quick``: 32 MiB) pod file read whole through mirrortrace, then opened
   and read again in the same process (a cache hit after one stat) vs an untraced read of
   the same file from the page cache.

Same rules as bench_core.py, whose helpers this imports: repeated runs, baselines
interleaved with the measured command (the order rotating), medians, ratios measured in the
same run, no absolute time asserted. No root needed. Everything the bench starts runs in a
session of its own and is killed, and the temporary pod tree removed, on every way out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import (  # noqa: E402  (the benches directory is not a package)
    LIVE,
    PYTHON,
    REPO,
    STOP_SIGNALS,
    Done,
    Report,
    RunFailed,
    _on_signal,
    conclude,
    entry,
    fmt_ratio,
    fmt_time,
    interleave,
    kill_tree,
    machine_lines,
    median,
    run,
    say,
)

MIRRORTRACE = [PYTHON, "-m", "supervisor.cli", "run", "--ui", "none"]
MIB = 1 << 20
SMALL_FILES = 1000
SMALL_SIZE = 1024


@dataclass
class Plan:
    """How many times each thing runs; --quick trims what costs the most."""

    import_reps: int  # row 1: each of untraced, mirrortrace, strace, proot
    small_reps: int  # row 2: traced and untraced processes
    big_bytes: int  # row 3
    big_reps: int


FULL = Plan(15, 7, 100 * MIB, 7)
QUICK = Plan(7, 5, 32 * MIB, 3)


def fmt_small_ratio(value: float) -> str:
    """fmt_ratio, but with two significant digits below 0.1 (1,000 small files come out
    around 0.004, which fmt_ratio would print as 0.00)."""
    return fmt_ratio(value) if value >= 0.1 else f"{value:.2g}"


# --------------------------------------------------------------------------- the pod tree


@dataclass
class Pod:
    """A temporary directory served as the pod's root, and the agent command serving it."""

    root: Path  # on this machine
    top: str  # /mt-bench-pod-XXXXXXXX: exists only as root/top, so it is the pod's
    small_sha: str  # sha256 of the small files' contents, concatenated in name order
    big_sha: str

    @property
    def agent(self) -> list[str]:
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                "from agent_image.agent import main; main()")
        command = shlex.join([PYTHON, "-I", "-S", "-c", code, "--root", str(self.root)])
        return ["--agent-exec", command]

    def local(self, pod_path: str) -> str:
        """Where a pod path is on this machine (for the untraced baselines)."""
        return str(self.root) + pod_path


def make_pod(tmp: Path, big_bytes: int) -> Pod:
    for _ in range(10):
        top = f"/mt-bench-pod-{uuid.uuid4().hex[:8]}"
        if not os.path.lexists(top):  # else it would be this machine's, not the pod's
            break
    else:
        raise SystemExit("bench: cannot find a /mt-bench-pod-* name that is free here")
    root = tmp / "pod"
    small = root / top.lstrip("/") / "small"
    small.mkdir(parents=True)
    digest = hashlib.sha256()
    for i in range(SMALL_FILES):
        data = os.urandom(SMALL_SIZE)
        (small / f"{i:04d}").write_bytes(data)
        digest.update(data)
    big = hashlib.sha256()
    with open(root / top.lstrip("/") / "big", "wb") as f:
        for _ in range(big_bytes // MIB):
            data = os.urandom(MIB)
            big.update(data)
            f.write(data)
    # What any pod has, so that mirrortrace does not warn that it falls back to ours.
    (root / "etc").mkdir()
    for name in ("resolv.conf", "hosts", "hostname"):
        with open(f"/etc/{name}", "rb") as src:
            (root / "etc" / name).write_bytes(src.read())
    return Pod(root, top, digest.hexdigest(), big.hexdigest())


def fields(done: Done, what: str, names: Sequence[str]) -> dict[str, str]:
    """The key=value words a bench program printed on its last line."""
    lines = done.out.strip().splitlines()
    got = dict(w.split("=", 1) for w in (lines[-1].split() if lines else []) if "=" in w)
    missing = [n for n in names if n not in got]
    if missing:
        raise RunFailed(f"{what} printed no {', '.join(missing)}: {done.out[-300:]!r} "
                        f"{done.err[-500:]!r}")
    return got


# --------------------------------------------------------------------------- row 1

IMPORTS = ("import time; t=time.perf_counter(); import json, email, http.client, asyncio; "
           "print(time.perf_counter()-t)")


def import_time(done: Done, what: str) -> float:
    try:
        return float(done.out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RunFailed(f"{what} printed no import time: {done.out[-300:]!r} "
                        f"{done.err[-500:]!r}") from None


def row_imports(report: Report, plan: Plan) -> None:
    prog = [PYTHON, "-c", IMPORTS]
    commands = {
        "untraced": prog,
        "mirrortrace": [*MIRRORTRACE, "--", *prog],
        "strace": ["strace", "-f", "-o", "/dev/null", *prog],
        "proot": ["proot", "-b", "/:/", *prog],
    }
    missing = [name for name in ("strace", "proot") if shutil.which(name) is None]
    for name in missing:
        del commands[name]
        report.notes.append(f"{name} is not installed: its row 1 lines are missing "
                            f"(apt-get install {name}).")
    say(f"row 1: import json, email, http.client, asyncio; {plan.import_reps} runs each of "
        + ", ".join(commands))
    run(prog, what="python imports (warming the .pyc cache)")
    inner: dict[str, list[float]] = {name: [] for name in commands}

    def once(name: str) -> Callable[[], float]:
        def go() -> float:
            done = run(commands[name], what=f"python imports ({name})", timeout=120)
            inner[name].append(import_time(done, f"python imports ({name})"))
            return done.wall

        return go

    walls = interleave(plan.import_reps, {name: once(name) for name in commands})
    base, base_wall = median(inner["untraced"]), median(walls["untraced"])
    n = f"{plan.import_reps}+{plan.import_reps}"
    what = "`import json, email, http.client, asyncio`"
    mt = median(inner["mirrortrace"])
    peers = [name for name in ("strace", "proot") if name in commands]
    met = mt / base <= 1.5 and all(mt < median(inner[peer]) for peer in peers)
    target = f"≤ 1.5 and below {' and '.join(peers) or 'the peers'} " \
             f"({'met' if met else 'missed'})"
    labels = {"mirrortrace": "mirrortrace", "strace": "strace -f", "proot": "proot -b /:/"}
    for name in ("mirrortrace", *peers):
        value = median(inner[name])
        ratio = fmt_ratio(value / base)
        report.add("1", f"{what}: in-program", f"untraced {fmt_time(base)}",
                   f"{labels[name]} {fmt_time(value)}",
                   f"**{ratio}**" if name == "mirrortrace" else ratio,
                   target if name == "mirrortrace" else "", n)
    for name in ("mirrortrace", *peers):
        value = median(walls[name])
        report.add("1", f"{what}: whole command", f"untraced {fmt_time(base_wall)}",
                   f"{labels[name]} {fmt_time(value)}", fmt_ratio(value / base_wall), "", n)
    # Each repetition runs every command back to back, so the ratio within one
    # repetition shrugs off the load drifting during the bench; their median is the
    # steadier figure on a shared machine.
    paired = [t / u for t, u in zip(inner["mirrortrace"], inner["untraced"], strict=True)]
    report.notes.append(
        "Row 1: median of the per-repetition ratios mirrortrace/untraced "
        f"{fmt_ratio(median(paired))} (lowest {fmt_ratio(min(paired))}, highest "
        f"{fmt_ratio(max(paired))}); "
        + "; ".join(f"{labels[peer]} {fmt_ratio(median([t / u for t, u in zip(inner[peer], inner['untraced'], strict=True)]))}"  # noqa: E501
                    for peer in peers) + ".")


# --------------------------------------------------------------------------- row 2

READ_DIR = """\
import hashlib, os, sys, time
d = sys.argv[1]
digest = hashlib.sha256()
t = time.perf_counter()
names = sorted(os.listdir(d))
for name in names:
    with open(os.path.join(d, name), "rb") as f:
        digest.update(f.read())
seconds = time.perf_counter() - t
print(f"files={len(names)} seconds={seconds} sha256={digest.hexdigest()}")
"""


def row_small(report: Report, plan: Plan, pod: Pod) -> None:
    say(f"row 2: {SMALL_FILES:,} pod files of {SMALL_SIZE} bytes, {plan.small_reps} runs "
        "through mirrortrace (cold cache) and untraced")
    pod_dir = f"{pod.top}/small"
    commands = {
        "local": [PYTHON, "-c", READ_DIR, pod.local(pod_dir)],
        "mirrortrace": [*MIRRORTRACE, *pod.agent, "--", PYTHON, "-c", READ_DIR, pod_dir],
    }
    rates: dict[str, list[float]] = {name: [] for name in commands}

    def once(name: str) -> Callable[[], float]:
        def go() -> float:
            what = f"read {SMALL_FILES} files ({name})"
            done = run(commands[name], what=what, timeout=300)
            got = fields(done, what, ("files", "seconds", "sha256"))
            # Checked on every run, not once: a wrong byte must not turn into a fast rate.
            if int(got["files"]) != SMALL_FILES or got["sha256"] != pod.small_sha:
                raise RunFailed(f"{what}: read {got['files']} files with sha256 "
                                f"{got['sha256']}, expected {SMALL_FILES} with {pod.small_sha}")
            rates[name].append(SMALL_FILES / float(got["seconds"]))
            say(f"  {name}: {rates[name][-1]:,.0f} files/s")
            return done.wall

        return go

    run(commands["local"], what="read files (warming the page cache)")
    walls = interleave(plan.small_reps, {name: once(name) for name in commands})
    base, mt = median(rates["local"]), median(rates["mirrortrace"])
    report.add("2", f"{SMALL_FILES:,} pod files × 1 KiB, listed and read, first read",
               f"untraced, local dir {base:,.0f} files/s",
               f"mirrortrace {mt:,.0f} files/s", f"**{fmt_small_ratio(mt / base)}**", "",
               f"{plan.small_reps}+{plan.small_reps}")
    report.notes.append(
        f"Row 2: {fmt_time(1 / mt)} per pod file through mirrortrace "
        f"({fmt_time(1 / base)} locally); sha256 of all contents checked on every run; "
        f"whole command {fmt_time(median(walls['mirrortrace']))} traced, "
        f"{fmt_time(median(walls['local']))} untraced."
    )


# --------------------------------------------------------------------------- row 3

READ_BIG = """\
import hashlib, sys, time
def once(path):
    chunks = []
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    seconds = time.perf_counter() - t
    digest = hashlib.sha256()  # after the clock stops: hashing is not reading
    for chunk in chunks:
        digest.update(chunk)
    return sum(map(len, chunks)), seconds, digest.hexdigest()
first = once(sys.argv[1])
again = once(sys.argv[1])
print("bytes={} seconds={} sha256={} again_bytes={} again_seconds={} again_sha256={}"
      .format(*first, *again))
"""


def row_big(report: Report, plan: Plan, pod: Pod) -> None:
    size = plan.big_bytes
    label = f"{size // MIB} MiB"
    say(f"row 3: one {label} pod file, {plan.big_reps} runs through mirrortrace (cold cache, "
        "then reopened) and untraced from the page cache")
    pod_file = f"{pod.top}/big"
    commands = {
        "local": [PYTHON, "-c", READ_BIG, pod.local(pod_file)],
        "mirrortrace": [*MIRRORTRACE, *pod.agent, "--", PYTHON, "-c", READ_BIG, pod_file],
    }
    rates: dict[str, list[float]] = {"local": [], "mirrortrace": [], "again": []}

    def once(name: str) -> Callable[[], float]:
        def go() -> float:
            what = f"read {label} ({name})"
            done = run(commands[name], what=what, timeout=300)
            got = fields(done, what, ("bytes", "seconds", "sha256", "again_bytes",
                                      "again_seconds", "again_sha256"))
            for prefix in ("", "again_"):
                if (int(got[prefix + "bytes"]) != size
                        or got[prefix + "sha256"] != pod.big_sha):
                    raise RunFailed(f"{what}: {prefix}read {got[prefix + 'bytes']} bytes with "
                                    f"sha256 {got[prefix + 'sha256']}, expected {size} with "
                                    f"{pod.big_sha}")
            rates[name].append(size / float(got["seconds"]) / 1e6)
            if name == "mirrortrace":
                rates["again"].append(size / float(got["again_seconds"]) / 1e6)
            say(f"  {name}: {rates[name][-1]:,.0f} MB/s")
            return done.wall

        return go

    run(commands["local"], what="read big file (warming the page cache)")
    interleave(plan.big_reps, {name: once(name) for name in commands})
    base = median(rates["local"])
    n = f"{plan.big_reps}+{plan.big_reps}"
    for key, what, bold in (
        ("mirrortrace", f"one {label} pod file: first read (fetched)", True),
        ("again", f"one {label} pod file: reopened, same process (cached)", False),
    ):
        value = median(rates[key])
        ratio = fmt_small_ratio(value / base)
        report.add("3", what, f"untraced, page cache {base:,.0f} MB/s",
                   f"mirrortrace {value:,.0f} MB/s", f"**{ratio}**" if bold else ratio, "", n)


# --------------------------------------------------------------------------- main


def header(quick: bool, load_before: tuple[float, ...]) -> list[str]:
    lines = machine_lines(quick, load_before)
    proot = "no proot"
    try:
        out = subprocess.run(["proot", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    version = re.search(r"\|\s+(\d[\w.]*)\s*$", out, re.M)
    if version:
        proot = f"proot {version.group(1)}"
        seccomp = re.search(r"seccomp_filter = (\w+)", out)
        if seccomp:
            proot += f" (built with seccomp_filter = {seccomp.group(1)})"
    lines[0] += f" {proot}."
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and a 32 MiB file (about a minute)")
    parser.add_argument("--rows", default="1,2,3",
                        help="comma-separated rows to run (default: all)")
    args = parser.parse_args(argv)
    rows = set(args.rows.split(","))
    plan = QUICK if args.quick else FULL
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    load_before = os.getloadavg()
    started = time.monotonic()
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-files-"))
    # mirrortrace's private file cache goes in here too, so that a supervisor killed mid-run
    # (SIGKILL leaves it no chance to clean up) leaves nothing behind once tmp is removed.
    old_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        pod = make_pod(tmp, plan.big_bytes if "3" in rows else 0) if rows & {"2", "3"} else None
        for num, what, fn in (
            ("1", "python imports", lambda: row_imports(report, plan)),
            ("2", f"{SMALL_FILES:,} small pod files", lambda: row_small(report, plan, pod)),
            ("3", "one large pod file", lambda: row_big(report, plan, pod)),
        ):
            if num not in rows:
                continue
            try:
                fn()
            except RunFailed as exc:
                report.fail(num, what, exc)
    finally:
        for proc in list(LIVE):
            kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir
    return conclude(report, header(args.quick, load_before), started)


if __name__ == "__main__":
    entry(main)
