#!/usr/bin/env python3
"""mirrortrace dashboard benchmark: what drawing the live view costs a busy program.

    python benches/bench_ui.py [--quick]

A connect-heavy program (``programs/http_latency.c``: a new TCP connection + ``GET /hello``
per iteration, every connect diverted to the pod, so every iteration is an event) runs under
``mirrortrace run --ui live`` and ``--ui none``, interleaved, in the simulated cluster of
tests/integration/cluster.py (root). Both run with stderr on a pseudo-terminal this bench
reads and throws away, exactly as a terminal would show it: ``--ui live`` draws its view
there. The program's stdout (its per-iteration latencies) goes to a file, so it does not
pass through the dashboard and the two runs print the same thing.

The row compares the sum of the program's own per-iteration latencies (in-program time, no
start-up) and the whole-command wall time; goal: live ≤ 1.05× none. Same rules as
bench_core.py: repeated runs, interleaved, medians, ratios from the same run.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import (  # noqa: E402  (the benches directory is not a package)
    LIVE,
    STOP_SIGNALS,
    Report,
    RunFailed,
    _on_signal,
    build_programs,
    conclude,
    entry,
    fmt_ratio,
    fmt_time,
    goal,
    import_cluster,
    interleave,
    kill_tree,
    machine_lines,
    median,
    say,
)

MODES = ("none", "live")  # dict order: the first is the baseline


@dataclass
class Plan:
    reps: int
    iters: int
    warmup: int


FULL = Plan(9, 2000, 50)
QUICK = Plan(5, 1000, 50)


@dataclass
class PtyDone:
    wall: float
    screen_bytes: int  # what the run drew on its terminal
    out: str  # the program's stdout (the file it went to)


def run_on_pty(argv: Sequence[str], stdout: Path, *, timeout: float = 300,
               what: str = "") -> PtyDone:
    """Run argv with stdin and stderr on a new pseudo-terminal (read and discarded here, as
    fast as a terminal emulator would) and stdout to a file; RunFailed unless it exits 0."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    with open(stdout, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=slave, stdout=out, stderr=slave,
                                start_new_session=True, env={**os.environ, "TERM": "xterm-256color",
                                                             "COLUMNS": "120", "LINES": "40"})
    LIVE.add(proc)
    os.close(slave)
    drawn = 0
    deadline = start + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every holder of the terminal is gone
                    chunk = b""
                if not chunk:
                    break
                drawn += len(chunk)
            elif proc.poll() is not None:
                break
            if time.perf_counter() > deadline:
                raise RunFailed(f"{what or argv[0]}: timed out after {timeout:.0f} s")
        proc.wait(timeout=30)
        wall = time.perf_counter() - start
    except BaseException:
        kill_tree(proc)
        raise
    finally:
        os.close(master)
    LIVE.discard(proc)
    text = stdout.read_text(errors="replace")
    if proc.returncode != 0:
        raise RunFailed(f"{what or argv[0]}: exit status {proc.returncode}\n  command: "
                        f"{' '.join(argv)}\n  stdout: {text[-800:].strip()}")
    return PtyDone(wall, drawn, text)


def in_program(out: str, expected: int) -> float:
    lines = out.split("\n")
    if not lines or not lines[0].startswith("latencies_ns"):
        raise RunFailed(f"http_latency printed no latencies: {out[:300]!r}")
    values = [int(x) / 1e9 for x in lines[1:] if x.strip()]
    if len(values) != expected:
        raise RunFailed(f"http_latency printed {len(values)} latencies, expected {expected}")
    return sum(values)


def row_live(report: Report, plan: Plan, progs: dict[str, str], cl: Any, cm: Any,
             tmp: Path) -> None:
    say(f"row 1: {plan.iters} × (connect + GET /hello) under --ui live and --ui none, "
        f"{plan.reps} runs each, stderr on a pseudo-terminal")
    client = [progs["http_latency"], cm.WEB_IP, str(cm.WEB_PORT), "/hello", "hello from web",
              str(plan.iters), str(plan.warmup)]
    loops: dict[str, list[float]] = {mode: [] for mode in MODES}
    drawn: dict[str, list[int]] = {mode: [] for mode in MODES}

    def once(mode: str) -> Callable[[], float]:
        argv = cl.mirrortrace_argv(client, mt_args=["--ui", mode])

        def go() -> float:
            done = run_on_pty(argv, tmp / f"out-{mode}.txt", what=f"http_latency (--ui {mode})")
            loops[mode].append(in_program(done.out, plan.iters))
            drawn[mode].append(done.screen_bytes)
            return done.wall

        return go

    for mode in MODES:  # warm-up: page cache, .pyc files, the pod's server
        once(mode)()
        loops[mode].clear()
        drawn[mode].clear()
    walls = interleave(plan.reps, {mode: once(mode) for mode in MODES})
    if median(drawn["live"]) < 1000:
        raise RunFailed(f"--ui live drew only {median(drawn['live']):.0f} bytes on its "
                        "terminal: no live view was measured")
    base, live = median(loops["none"]), median(loops["live"])
    ratio = live / base
    runs = f"{plan.reps}+{plan.reps}"
    report.add("1", f"{plan.iters} × connect + GET /hello, in-program time",
               f"--ui none {fmt_time(base)}", f"--ui live {fmt_time(live)}",
               f"**{fmt_ratio(ratio)}**", goal(ratio, 1.05, "≤"), runs)
    wall_base, wall_live = median(walls["none"]), median(walls["live"])
    report.add("1", "the same, whole command wall time", f"--ui none {fmt_time(wall_base)}",
               f"--ui live {fmt_time(wall_live)}", fmt_ratio(wall_live / wall_base), "", runs)
    paired = [x / y for x, y in zip(loops["live"], loops["none"], strict=True)]
    report.notes.append(
        f"Row 1: median of the per-repetition ratios live/none {fmt_ratio(median(paired))} "
        f"(lowest {fmt_ratio(min(paired))}, highest {fmt_ratio(max(paired))}). The live view "
        f"drew {median(drawn['live']) / 1024:.0f} KiB per run on its terminal; --ui none "
        f"{median(drawn['none']) / 1024:.1f} KiB (the one-line notices)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    load_before = os.getloadavg()
    started = time.monotonic()
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-ui-"))
    what = "connect-heavy program, --ui live vs none"
    try:
        cm = import_cluster()
        if isinstance(cm, str):
            say(f"SKIPPED: {cm}")
            report.add("1", what, "—", f"SKIPPED: {cm}", "—")
        else:
            progs = build_programs(tmp)
            try:
                with cm.Cluster.create() as cl:
                    row_live(report, plan, progs, cl, cm, tmp)
            except (RunFailed, RuntimeError) as exc:
                report.fail("1", what, exc)
    finally:
        for proc in list(LIVE):
            kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return conclude(report, machine_lines(args.quick, load_before), started)


if __name__ == "__main__":
    entry(main)
