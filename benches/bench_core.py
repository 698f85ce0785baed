#!/usr/bin/env python3
"""mirrortrace core benchmarks: what tracing costs, as ratios against a baseline.

    python benches/bench_core.py [--quick]

Prints a Markdown table (with the machine and the date) ready to paste into the README;
progress goes to stderr. What each row means is in benches/README.md. In short:

1. 1,000,000 small read()/write() calls mirrortrace does not divert: untraced vs
   ``mirrortrace run`` (local agent) vs ``strace -f``; in-program loop time and whole-command
   wall time.
2. New connection + ``GET /hello``, per-iteration latency measured inside one process:
   through mirrortrace from the laptop namespace vs the same client run in the pod directly.
3. One 1 GiB (``--quick``: 256 MiB) transfer, checked word by word: through mirrortrace vs a
   socat relay over the same kind of pipe (``ip netns exec`` stdin/stdout).
4. ``mirrortrace run -- true`` wall time vs ``true`` and ``python3 -c pass``.

Rows 2 and 3 build the simulated cluster of tests/integration/cluster.py (network
namespaces), which needs root; without root they are skipped and the table says so.

This box is shared and noisy, so every measurement is repeated, the baseline is interleaved
with the measured command (the order rotates from one repetition to the next), and the
table shows medians and ratios measured in the same run, never absolute goals on time alone.
Everything the bench starts runs in a session of its own and is killed, and the namespaces
are removed, on every way out: normal end, error, Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"
PYTHON = sys.executable  # the real interpreter, never a pyenv shim
MIRRORTRACE = [PYTHON, "-m", "supervisor.cli", "run"]

SYSCALLS = 1_000_000
BLAST_PORT = 9100  # blast_server in the pod, on the web service IP
SOCAT_PORT = 19100  # socat relay on the laptop's loopback
GIB = 1 << 30


@dataclass
class Plan:
    """How many times each thing runs; --quick trims what costs the most."""

    loop_reps: int  # row 1: untraced, bare-seccomp and mirrortrace runs
    strace_reps: int  # row 1: strace -f runs (each takes ~15 s: every syscall stops)
    http_rounds: int  # row 2: traced and pod processes
    http_iters: int  # row 2: measured connect+GET per process
    http_warmup: int
    blast_bytes: int  # row 3
    blast_reps: int
    true_reps: int  # row 4


FULL = Plan(21, 5, 5, 500, 20, GIB, 5, 10)
QUICK = Plan(11, 5, 5, 300, 20, 256 << 20, 5, 10)


# --------------------------------------------------------------------------- processes


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: unwind through every finally, like Ctrl-C does."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum: int, _frame: Any) -> None:
    """First Ctrl-C/SIGTERM/SIGHUP: unwind. Later ones are ignored, so they cannot cut the
    cleanup (killing what we started, deleting the namespaces) short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(f"signal {signal.Signals(signum).name}")


LIVE: set[subprocess.Popen[Any]] = set()


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process we started, its process group and all its descendants.

    Everything is started in a session of its own (so Ctrl-C in the terminal reaches only
    us, and we decide the order of teardown); mirrortrace starts its agent in yet another
    session, hence the walk over descendants as well as the group.
    """
    family: list[Any] = []
    with contextlib.suppress(Exception):  # psutil is a mirrortrace dependency, but optional here
        import psutil

        family = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(Exception):
            child.kill()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    LIVE.discard(proc)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("cwd", REPO)
    proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
    LIVE.add(proc)
    return proc


class RunFailed(Exception):
    """A measured command failed; the message says which, how, and what it printed."""


@dataclass
class Done:
    wall: float  # seconds, from just before the fork to the reaped exit
    out: str
    err: str


def run(argv: Sequence[str], *, timeout: float = 300, what: str = "") -> Done:
    """Run argv to completion, timed as a whole; RunFailed unless it exits 0."""
    start = time.perf_counter()
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 errors="replace")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise RunFailed(f"{what or argv[0]}: timed out after {timeout:.0f} s") from None
    except BaseException:
        kill_tree(proc)
        raise
    wall = time.perf_counter() - start
    LIVE.discard(proc)
    if proc.returncode != 0:
        raise RunFailed(
            f"{what or argv[0]}: exit status {proc.returncode}\n  command: "
            f"{' '.join(argv)}\n  stdout: {out[-1500:].strip()}\n  stderr: {err[-1500:].strip()}"
        )
    return Done(wall, out, err)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def interleave(reps: int, named: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each measurement reps times, rotating their order every repetition so that
    neither side always runs first (after the other's cache warm-up or noise burst)."""
    names = list(named)
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(named[name]())
    return results


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


# --------------------------------------------------------------------------- table


@dataclass
class Row:
    num: str
    what: str
    baseline: str
    measured: str
    ratio: str
    goal: str = ""
    runs: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *args: str, **kwargs: str) -> None:
        self.rows.append(Row(*args, **kwargs))

    def fail(self, num: str, what: str, exc: BaseException) -> None:
        first = str(exc).splitlines()[0]
        self.rows.append(Row(num, what, "—", f"FAILED: {first}", "—"))
        self.failures.append(f"row {num} ({what}): {exc}")
        say(f"row {num} FAILED: {exc}")


def goal(value: float, bound: float, op: str, unit: str = "") -> str:
    met = value <= bound if op == "≤" else value >= bound
    return f"{op} {bound:g}{unit} ({'met' if met else 'missed'})"


def machine_lines(quick: bool, load_before: tuple[float, ...]) -> list[str]:
    """The table's first line: the bench being run (each runs as a script), the commit,
    the machine and its load."""
    cpus = len(os.sched_getaffinity(0))
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load_after = os.getloadavg()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    strace = _version(["strace", "-V"])
    commit = _git("rev-parse", "--short", "HEAD") or "unknown commit"
    if _git("status", "--porcelain", "--", "supervisor", "syscalls", "agent_image"):
        commit += " + uncommitted changes"
    socat = _version(["socat", "-V"], pick="socat version")
    return [
        f"Measured {now} with `python benches/{Path(sys.argv[0]).name}"
        f"{' --quick' if quick else ''}` "
        f"(mirrortrace {commit}) on {platform.node() or 'this machine'}: nproc {cpus}"
        + (f" ({model})" if model else "")
        + f", Linux {platform.release()}, Python {platform.python_version()} "
        f"({PYTHON}), {strace}, {socat}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
    ]


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _version(argv: list[str], pick: str = "") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"no {argv[0]}"
    for line in out.splitlines():
        if not pick or pick in line:
            return " ".join(line.split()[:3]) if pick else line.strip()
    return argv[0]


def render(report: Report, header: list[str]) -> str:
    lines = [*header, ""]
    lines.append("| # | measurement | baseline | measured | ratio | goal | runs |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in report.rows:
        lines.append(
            f"| {r.num} | {r.what} | {r.baseline} | {r.measured} | {r.ratio} | {r.goal} "
            f"| {r.runs} |"
        )
    if report.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in report.notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------- programs


def build_programs(dest: Path) -> dict[str, str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench: needs a C compiler (apt-get install gcc)")
    built = {}
    for src in sorted(PROGRAMS.glob("*.c")):
        exe = dest / src.stem
        subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
        built[src.stem] = str(exe)
    os.chmod(dest, 0o755)
    return built


# --------------------------------------------------------------------------- row 1


def loop_times(done: Done) -> tuple[float, float]:
    """(wall, CPU) seconds of syscall_loop's loop, as it measured them itself."""
    fields = dict(w.split("=", 1) for w in done.out.split() if "=" in w)
    try:
        return int(fields["loop_ns"]) / 1e9, int(fields["cpu_ns"]) / 1e9
    except (KeyError, ValueError):
        raise RunFailed(f"syscall_loop printed no loop times: {done.out!r} "
                        f"{done.err[-500:]!r}") from None


def row_syscalls(report: Report, plan: Plan, progs: dict[str, str]) -> None:
    say(f"row 1: {SYSCALLS:,} read/write calls, {plan.loop_reps} runs untraced, under a bare "
        f"seccomp filter and traced, {plan.strace_reps} under strace -f (~15 s each)")
    prog = [progs["syscall_loop"], str(SYSCALLS)]
    commands = {
        "untraced": prog,
        "floor": [progs["seccomp_allow"], *prog],
        "mirrortrace": [*MIRRORTRACE, "--", *prog],
        "strace": ["strace", "-f", "-o", "/dev/null", *prog],
    }
    has_strace = shutil.which("strace") is not None
    wall: dict[str, list[float]] = {name: [] for name in commands}
    loop: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    run(commands["untraced"])  # warm the page cache
    for rep in range(plan.loop_reps):
        names = ["untraced", "floor", "mirrortrace"]
        if has_strace and rep < plan.strace_reps:
            names.append("strace")
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            done = run(commands[name], what=f"syscall_loop ({name})")
            wall[name].append(done.wall)
            times = loop_times(done)
            loop[name].append(times[0])
            cpu[name].append(times[1])
        say(f"  rep {rep + 1}: loop " + ", ".join(f"{n} {fmt_time(loop[n][-1])}" for n in names))

    def add(what: str, series: dict[str, list[float]], name: str, label: str,
            bold: bool = False, target: str = "") -> None:
        base, value = median(series["untraced"]), median(series[name])
        ratio = fmt_ratio(value / base)
        report.add("1", what, f"untraced {fmt_time(base)}", f"{label} {fmt_time(value)}",
                   f"**{ratio}**" if bold else ratio, target,
                   f"{len(series['untraced'])}+{len(series[name])}")

    what = "1M read/write (not diverted)"
    mt_ratio = median(loop["mirrortrace"]) / median(loop["untraced"])
    add(f"{what}: in-program loop", loop, "mirrortrace", "mirrortrace", True,
        goal(mt_ratio, 1.05, "≤"))
    cpu_ratio = median(cpu["mirrortrace"]) / median(cpu["untraced"])
    add(f"{what}: in-program loop, CPU time", cpu, "mirrortrace", "mirrortrace", False,
        goal(cpu_ratio, 1.05, "≤"))
    add(f"{what}: in-program loop, CPU time", cpu, "floor",
        "allow-all seccomp filter, no tracer")
    add(f"{what}: whole command", wall, "mirrortrace", "mirrortrace")
    if loop["strace"]:
        add(f"{what}: in-program loop", loop, "strace", "strace -f")
        add(f"{what}: whole command", wall, "strace", "strace -f")
    else:
        report.notes.append("strace is not installed: its row 1 lines are missing "
                            "(apt-get install strace).")
    paired = [m / u for m, u in zip(loop["mirrortrace"], loop["untraced"], strict=True)]
    report.notes.append(
        f"Row 1: median of the per-repetition loop ratios mirrortrace/untraced "
        f"{median(paired):.2f}; fastest loops: untraced {fmt_time(min(loop['untraced']))}, "
        f"bare seccomp filter {fmt_time(min(loop['floor']))}, "
        f"mirrortrace {fmt_time(min(loop['mirrortrace']))}."
    )


# --------------------------------------------------------------------------- row 4


def row_startup(report: Report, plan: Plan) -> None:
    say(f"row 4: mirrortrace run -- true, {plan.true_reps} runs beside true and python3 -c pass")
    true = shutil.which("true") or "/bin/true"
    commands = {
        "true": [true],
        "python": [PYTHON, "-c", "pass"],
        "mirrortrace": [*MIRRORTRACE, "--", "true"],
    }
    run(commands["mirrortrace"], what="mirrortrace run -- true (warm-up)")
    walls = interleave(
        plan.true_reps,
        {name: (lambda argv=argv, name=name: run(argv, what=name).wall)
         for name, argv in commands.items()},
    )
    mt = median(walls["mirrortrace"])
    n = str(plan.true_reps)
    report.add("4", "`mirrortrace run -- true`, wall", f"`true` {fmt_time(median(walls['true']))}",
               f"mirrortrace {fmt_time(mt)}", fmt_ratio(mt / median(walls["true"])),
               goal(mt, 0.3, "≤", " s"), n)
    py = median(walls["python"])
    report.add("4", "`mirrortrace run -- true`, wall", f"`python3 -c pass` {fmt_time(py)}",
               f"mirrortrace {fmt_time(mt)}", fmt_ratio(mt / py), "", n)


# --------------------------------------------------------------------------- rows 2 and 3


def import_cluster() -> Any:
    """tests/integration/cluster.py, or a reason string when it cannot be used here."""
    if os.geteuid() != 0:
        return "not root (network namespaces need root)"
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    try:
        import cluster
    except ImportError as exc:
        return f"cannot import tests/integration/cluster.py: {exc}"
    reason = cluster.unavailable_reason()
    return reason if reason else cluster


def parse_latencies(done: Done, expected: int) -> list[float]:
    lines = done.out.split("\n")
    if not lines or not lines[0].startswith("latencies_ns"):
        raise RunFailed(f"http_latency printed no latencies: {done.out[:300]!r}")
    values = [int(x) / 1e9 for x in lines[1:] if x.strip()]
    if len(values) != expected:
        raise RunFailed(f"http_latency printed {len(values)} latencies, expected {expected}")
    return values


def row_http(report: Report, plan: Plan, progs: dict[str, str], cl: Any, cm: Any,
             tmp: Path) -> None:
    say(f"row 2: connect + GET /hello, {plan.http_rounds} processes × {plan.http_iters} "
        "iterations each, traced from the laptop and directly in the pod")
    client = [progs["http_latency"], cm.WEB_IP, str(cm.WEB_PORT), "/hello", "hello from web",
              str(plan.http_iters), str(plan.http_warmup)]
    traced = cl.mirrortrace_argv(client)
    direct = ["ip", "netns", "exec", cl.pod_ns, *client]
    samples: dict[str, list[list[float]]] = {"pod": [], "mirrortrace": []}

    def once(name: str, argv: list[str]) -> Callable[[], float]:
        def go() -> float:
            done = run(argv, what=f"http_latency ({name})", timeout=300)
            samples[name].append(parse_latencies(done, plan.http_iters))
            return done.wall

        return go

    interleave(plan.http_rounds, {"pod": once("pod", direct),
                                  "mirrortrace": once("mirrortrace", traced)})
    p50 = {k: median([median(s) for s in v]) for k, v in samples.items()}
    p99 = {k: median([percentile(s, 99) for s in v]) for k, v in samples.items()}
    n = f"{plan.http_rounds}+{plan.http_rounds} × {plan.http_iters}"
    what = "new connection + GET /hello"
    report.add("2", f"{what}: p50", f"in the pod {fmt_time(p50['pod'])}",
               f"mirrortrace from laptop {fmt_time(p50['mirrortrace'])}",
               f"**{fmt_ratio(p50['mirrortrace'] / p50['pod'])}**", "", n)
    report.add("2", f"{what}: p99", f"in the pod {fmt_time(p99['pod'])}",
               f"mirrortrace from laptop {fmt_time(p99['mirrortrace'])}",
               fmt_ratio(p99["mirrortrace"] / p99["pod"]), "", n)
    # Where the time goes: one more traced process (not counted above) writes its events,
    # whose latency_us is the diverted connect() alone, from trap to the program's resume.
    events = tmp / "http-events.jsonl"
    run(cl.mirrortrace_argv(client, mt_args=["--events", str(events)]),
        what="http_latency (mirrortrace --events)", timeout=300)
    connects = [e["latency_us"] / 1e6 for e in map(json.loads, events.read_text().splitlines())
                if e.get("syscall") == "connect" and e.get("result") == "0"]
    if connects:
        report.notes.append(
            f"Row 2: in a separate traced run with --events, the diverted connect() alone "
            f"(agent connects in the pod, then the relay) took {fmt_time(median(connects))} "
            f"p50 / {fmt_time(percentile(connects, 99))} p99 of the "
            f"{fmt_time(p50['mirrortrace'])} p50 iteration."
        )


def parse_rate(done: Done) -> float:
    for word in done.out.split():
        if word.startswith("mb_per_s="):
            return float(word.split("=", 1)[1])
    raise RunFailed(f"blast_client printed no rate: {done.out!r} {done.err[-500:]!r}")


def wait_ready(proc: subprocess.Popen[Any], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    if line.strip() != b"ready":
        raise RunFailed(f"{what} did not start (exit {proc.poll()})")


SOCAT_BIG = 131072  # socat's default -b is 8192 bytes per read


@contextlib.contextmanager
def relays(cl: Any, cm: Any, progs: dict[str, str], tmp: Path) -> Iterator[None]:
    """blast_server in the pod, and two socat relays on the laptop's loopback: socat as it
    comes (SOCAT_PORT) and with a larger buffer (SOCAT_PORT + 1)."""
    started: list[subprocess.Popen[Any]] = []
    try:
        server = spawn(["ip", "netns", "exec", cl.pod_ns, progs["blast_server"], cm.WEB_IP,
                        str(BLAST_PORT)], stdout=subprocess.PIPE)
        started.append(server)
        wait_ready(server, "blast_server in the pod")
        # The far half of the relay: a socat in the pod reached through `ip netns exec`'s
        # stdin/stdout, exactly as mirrortrace reaches its agent (--agent-exec, two pipes).
        far = tmp / "pod-socat.sh"
        far.write_text(f'#!/bin/sh\nexec ip netns exec {cl.pod_ns} socat "$@" STDIO '
                       f"TCP:{cm.WEB_IP}:{BLAST_PORT}\n")
        far.chmod(0o755)
        for port, extra in ((SOCAT_PORT, []), (SOCAT_PORT + 1, ["-b", str(SOCAT_BIG)])):
            relay = spawn(["ip", "netns", "exec", cl.laptop_ns, "socat", *extra,
                           f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                           f"EXEC:{' '.join([str(far), *extra])},pipes"])
            started.append(relay)
            deadline = time.monotonic() + 10
            probe = ["ip", "netns", "exec", cl.laptop_ns, progs["blast_client"], "127.0.0.1",
                     str(port), "8"]
            while True:  # socat is listening once a tiny transfer goes through
                try:
                    run(probe, what="socat relay probe", timeout=10)
                    break
                except RunFailed:
                    if relay.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        yield
    finally:
        for proc in started:
            kill_tree(proc)


def row_transfer(report: Report, plan: Plan, progs: dict[str, str], cl: Any, cm: Any,
                 tmp: Path) -> None:
    size = plan.blast_bytes
    label = f"{size // GIB} GiB" if size >= GIB else f"{size >> 20} MiB"
    say(f"row 3: {label} transfer, {plan.blast_reps} runs each through mirrortrace, socat and "
        f"socat -b {SOCAT_BIG}")
    client = [progs["blast_client"]]
    laptop = ["ip", "netns", "exec", cl.laptop_ns, *client, "127.0.0.1"]
    commands = {
        "socat": [*laptop, str(SOCAT_PORT), str(size)],
        "mirrortrace": cl.mirrortrace_argv([*client, cm.WEB_IP, str(BLAST_PORT), str(size)]),
        "socat-big": [*laptop, str(SOCAT_PORT + 1), str(size)],
    }
    rates: dict[str, list[float]] = {name: [] for name in commands}

    def once(name: str) -> Callable[[], float]:
        def go() -> float:
            done = run(commands[name], what=f"blast_client ({name}, {label})", timeout=600)
            rates[name].append(parse_rate(done))
            say(f"  {name}: {rates[name][-1]:.0f} MB/s")
            return done.wall

        return go

    with relays(cl, cm, progs, tmp):
        interleave(plan.blast_reps, {name: once(name) for name in commands})
    mt = median(rates["mirrortrace"])
    n = f"{plan.blast_reps}+{plan.blast_reps}"
    what = f"{label} through the relay, checked"
    for name, label_ in (("socat", "socat"), ("socat-big", f"socat -b {SOCAT_BIG}")):
        base = median(rates[name])
        bold = name == "socat"
        report.add("3", what, f"{label_} {base:.0f} MB/s", f"mirrortrace {mt:.0f} MB/s",
                   f"**{fmt_ratio(mt / base)}**" if bold else fmt_ratio(mt / base),
                   goal(mt / base, 0.5, "≥") if bold else "", n)


def cluster_rows(report: Report, plan: Plan, progs: dict[str, str], cm: Any, tmp: Path,
                 rows: set[str]) -> None:
    """Rows 2 and 3, in one simulated cluster (removed again whatever happens)."""
    say("building the simulated cluster (pod and laptop network namespaces)")
    todo = [
        ("2", "new connection + GET /hello", row_http),
        ("3", "transfer through the relay", row_transfer),
    ]
    todo = [item for item in todo if item[0] in rows]
    try:
        with cm.Cluster.create() as cl:
            for num, what, fn in todo:
                try:
                    fn(report, plan, progs, cl, cm, tmp)
                except RunFailed as exc:
                    report.fail(num, what, exc)
    except RuntimeError as exc:  # the cluster could not be built (cluster.py says why)
        for num, what, _ in todo:
            report.fail(num, what, exc)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and a 256 MiB transfer (under 3 minutes)")
    parser.add_argument("--rows", default="1,2,3,4",
                        help="comma-separated rows to run (default: all)")
    args = parser.parse_args(argv)
    rows = set(args.rows.split(","))
    plan = QUICK if args.quick else FULL
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    load_before = os.getloadavg()
    started = time.monotonic()
    if os.geteuid() != 0 and rows & {"2", "3"}:
        say("not root: rows 2 and 3 need network namespaces and will be skipped")
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-"))
    try:
        progs = build_programs(tmp)
        for num, what, fn in (
            ("1", "1M read/write", lambda: row_syscalls(report, plan, progs)),
            ("4", "`mirrortrace run -- true`", lambda: row_startup(report, plan)),
        ):
            if num not in rows:
                continue
            try:
                fn()
            except RunFailed as exc:
                report.fail(num, what, exc)
        cm = import_cluster() if rows & {"2", "3"} else None
        if cm is None:
            pass
        elif isinstance(cm, str):
            say(f"rows 2 and 3 SKIPPED: {cm}")
            for num, what in (("2", "new connection + GET /hello"), ("3", "transfer")):
                if num in rows:
                    report.add(num, what, "—", f"SKIPPED: {cm}", "—")
        else:
            cluster_rows(report, plan, progs, cm, tmp, rows)
        report.rows.sort(key=lambda r: r.num)
    finally:
        for proc in list(LIVE):
            kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return conclude(report, machine_lines(args.quick, load_before), started)


def conclude(report: Report, header: list[str], started: float) -> int:
    """Print the table (and any failures); the bench's exit status."""
    report.notes.append(f"The whole bench took {time.monotonic() - started:.0f} s.")
    print(render(report, header))
    for failure in report.failures:
        print(f"\nFAILED {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def entry(main: Callable[[], int]) -> None:
    """Run a bench's main: exit with its status, or 130 when it was interrupted (after
    its own cleanup has ended everything it started)."""
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"bench: interrupted ({str(exc) or 'Ctrl-C'}); everything it started is gone",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    entry(main)
