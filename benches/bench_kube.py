#!/usr/bin/env python3
"""mirrortrace Kubernetes benchmarks: the exec/attach websocket beside the --agent-exec pipe.

    python benches/bench_kube.py [--quick] [--rows 1,2,3]

Prints a Markdown table (with the machine and the date) ready to paste into the README;
progress goes to stderr. What each row means is in benches/README.md. In short, each row
runs the same program through ``mirrortrace run -t deployment/web`` (the agent injected as
an ephemeral container by the Kubernetes API double of tests/integration/kubeapi.py and
reached over its attach websocket) and through ``mirrortrace run --agent-exec`` (the agent
reached through the stdin/stdout pipes of ``ip netns exec <pod>``), in the same simulated
cluster, interleaved:

1. One 1 GiB (``--quick``: 256 MiB) transfer from the pod, checked word by word.
2. New connection + ``GET /hello``, per-iteration latency p50 and p99.
3. Session start: wall time of ``mirrortrace run ... -- true``.

Same rules as bench_core.py, whose helpers this imports: repeated runs, the two transports
interleaved (the order rotating), medians, ratios measured in the same run, no absolute
time asserted except row 3's goal. Needs root (network namespaces) and openssl (the
double's throwaway CA). Everything the bench starts runs in a session of its own and is
killed, and the double and the namespaces are closed, on every way out: normal end, error,
Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import (  # noqa: E402  (the benches directory is not a package)
    BLAST_PORT,
    GIB,
    LIVE,
    PYTHON,
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
    parse_latencies,
    parse_rate,
    percentile,
    run,
    say,
    spawn,
    wait_ready,
)

NAMESPACE, DEPLOYMENT, CONTAINER = "dev", "web", "app"
TRANSPORTS = ("agent-exec", "kube")  # dict order: the first is the baseline
LABELS = {"agent-exec": "--agent-exec", "kube": "-t"}
ROWS = {
    "1": "transfer from the pod",
    "2": "new connection + GET /hello",
    "3": "session start",
}


@dataclass
class Plan:
    """How many times each thing runs; --quick trims what costs the most."""

    blast_bytes: int  # row 1
    blast_reps: int
    http_rounds: int  # row 2: processes per transport
    http_iters: int  # row 2: measured connect+GET per process
    http_warmup: int
    true_reps: int  # row 3


FULL = Plan(GIB, 7, 7, 500, 20, 15)
QUICK = Plan(256 << 20, 5, 5, 200, 20, 9)


# --------------------------------------------------------------------------- the setup


@dataclass
class Setup:
    """The simulated cluster, the API double serving deployment/web, and the two ways to
    run a program under mirrortrace in the laptop namespace."""

    cl: Any  # cluster.Cluster
    cm: Any  # the cluster module (WEB_IP, WEB_PORT, ...)
    kube: Any  # kubeapi.KubeDouble
    progs: dict[str, str]

    def argv(self, transport: str, argv: Sequence[str]) -> list[str]:
        if transport == "kube":
            return self.cl.mirrortrace_argv(argv, agent_exec="", mt_args=[
                "--kubeconfig", str(self.kube.kubeconfig), "-t", f"deployment/{DEPLOYMENT}"])
        return self.cl.mirrortrace_argv(argv)

    def agents_done(self, timeout: float = 10) -> None:
        """Wait until every agent the double started has exited and been reaped: its CPU
        time only counts towards RUSAGE_CHILDREN then, and a session still ending would
        weigh on the next measurement."""
        deadline = time.monotonic() + timeout
        with self.kube.lock:
            procs = [p for pod in self.kube.pods(NAMESPACE) for p in pod.processes.values()]
        for proc in procs:
            proc.done.wait(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def kube_setup(cm: Any, progs: dict[str, str]) -> Iterator[Setup]:
    """Cluster, double, deployment/web and the target container's main process; all of it
    gone again however the block is left."""
    sys.path.insert(0, str(Path(cm.__file__).resolve().parent))
    import kubeapi

    say("building the simulated cluster and the Kubernetes API double")
    with cm.Cluster.create() as cl:
        kube = kubeapi.KubeDouble(cl)
        target = None
        try:
            # The target container's main process: what /proc/1 is for the injected agent
            # (it shares the target's process namespace), here any process in the pod netns.
            target = spawn(["ip", "netns", "exec", cl.pod_ns, "env", "-i",
                            f"PATH={cm.SAFE_PATH}", "HOME=/root", "LANG=C.UTF-8",
                            "sleep", "600"], cwd="/")
            kube.add_deployment(NAMESPACE, DEPLOYMENT, {"app": DEPLOYMENT},
                                containers=[CONTAINER])
            pid = str(target.pid)  # ip netns exec and env exec: this is sleep's pid
            kube.container_argv = lambda pod, spec: [
                *cl.agent_argv, *[pid if a == "1" else a for a in spec["args"]]]
            yield Setup(cl, cm, kube, progs)
        finally:
            kube.close()  # kills every agent it started, before the namespaces go
            if target is not None:
                kill_tree(target)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- row 1


@contextlib.contextmanager
def blast_server(s: Setup) -> Iterator[None]:
    """blast_server in the pod on the web service IP, killed on the way out."""
    server = spawn(["ip", "netns", "exec", s.cl.pod_ns, s.progs["blast_server"], s.cm.WEB_IP,
                    str(BLAST_PORT)], stdout=subprocess.PIPE)
    try:
        wait_ready(server, "blast_server in the pod")
        yield
    finally:
        kill_tree(server)


def row_transfer(report: Report, plan: Plan, s: Setup) -> None:
    size = plan.blast_bytes
    label = f"{size // GIB} GiB" if size >= GIB else f"{size >> 20} MiB"
    say(f"row 1: {label} transfer from the pod, {plan.blast_reps} runs each with -t "
        "(websocket) and --agent-exec (pipe)")
    client = [s.progs["blast_client"], s.cm.WEB_IP, str(BLAST_PORT), str(size)]
    rates: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
    # CPU seconds per run: this process (the double, i.e. API server + kubelet + container
    # runtime, all Python threads) and its reaped children (supervisor, client and, with
    # --agent-exec, the agent; with -t the agent is the double's child, hence ours too).
    cpu: dict[str, list[tuple[float, float, float]]] = {name: [] for name in TRANSPORTS}

    def once(name: str) -> Callable[[], float]:
        argv = s.argv(name, client)

        def go() -> float:
            own, kids = cpu_self(), cpu_children()
            done = run(argv, what=f"blast_client ({LABELS[name]}, {label})", timeout=600)
            s.agents_done()
            cpu[name].append((cpu_self() - own, cpu_children() - kids, done.wall))
            rates[name].append(parse_rate(done))
            say(f"  {LABELS[name]}: {rates[name][-1]:.0f} MB/s")
            return done.wall

        return go

    with blast_server(s):
        for name in TRANSPORTS:
            run(s.argv(name, [*client[:3], str(8 << 20)]),
                what=f"blast_client {LABELS[name]} (warm-up)")
            s.agents_done()
        interleave(plan.blast_reps, {name: once(name) for name in TRANSPORTS})
    base, kube = median(rates["agent-exec"]), median(rates["kube"])
    ratio = kube / base
    target = f"≥ 0.5× of --agent-exec ({'met' if ratio >= 0.5 else 'missed'})"
    report.add("1", f"{label} from the pod through the relay, checked",
               f"--agent-exec {base:.0f} MB/s", f"-t {kube:.0f} MB/s",
               f"**{fmt_ratio(ratio)}**", target, f"{plan.blast_reps}+{plan.blast_reps}")
    used = {name: (median([c[0] for c in cpu[name]]), median([c[1] for c in cpu[name]]),
                   median([(c[0] + c[1]) / c[2] for c in cpu[name]])) for name in TRANSPORTS}
    paired = [k / a for k, a in zip(rates["kube"], rates["agent-exec"], strict=True)]
    report.notes.append(
        f"Row 1: median of the per-repetition ratios -t/--agent-exec {fmt_ratio(median(paired))}"
        f" (lowest {fmt_ratio(min(paired))}, highest {fmt_ratio(max(paired))}). CPU seconds "
        f"per {label} run, start-up included (medians): with -t, {used['kube'][1]:.1f} s in "
        f"supervisor + agent + client and {used['kube'][0]:.1f} s in the API double (Python "
        f"threads in the bench process: pipe reader, websocket framing, TLS); with "
        f"--agent-exec, {used['agent-exec'][1]:.1f} s in supervisor + agent + client. CPUs "
        f"busy on average over a run: -t {used['kube'][2]:.1f}, --agent-exec "
        f"{used['agent-exec'][2]:.1f}, of {len(os.sched_getaffinity(0))}: what the double "
        "uses is taken from what mirrortrace could use here; on a real cluster the API "
        "server and the kubelet run elsewhere."
    )


# --------------------------------------------------------------------------- row 2


def row_http(report: Report, plan: Plan, s: Setup) -> None:
    say(f"row 2: connect + GET /hello, {plan.http_rounds} processes × {plan.http_iters} "
        "iterations each, with -t and --agent-exec")
    client = [s.progs["http_latency"], s.cm.WEB_IP, str(s.cm.WEB_PORT), "/hello",
              "hello from web", str(plan.http_iters), str(plan.http_warmup)]
    samples: dict[str, list[list[float]]] = {name: [] for name in TRANSPORTS}

    def once(name: str) -> Callable[[], float]:
        argv = s.argv(name, client)

        def go() -> float:
            done = run(argv, what=f"http_latency ({LABELS[name]})", timeout=300)
            s.agents_done()
            samples[name].append(parse_latencies(done, plan.http_iters))
            return done.wall

        return go

    interleave(plan.http_rounds, {name: once(name) for name in TRANSPORTS})
    p50 = {k: median([median(x) for x in v]) for k, v in samples.items()}
    p99 = {k: median([percentile(x, 99) for x in v]) for k, v in samples.items()}
    n = f"{plan.http_rounds}+{plan.http_rounds} × {plan.http_iters}"
    what = "new connection + GET /hello"
    report.add("2", f"{what}: p50", f"--agent-exec {fmt_time(p50['agent-exec'])}",
               f"-t {fmt_time(p50['kube'])}",
               f"**{fmt_ratio(p50['kube'] / p50['agent-exec'])}**", "", n)
    report.add("2", f"{what}: p99", f"--agent-exec {fmt_time(p99['agent-exec'])}",
               f"-t {fmt_time(p99['kube'])}", fmt_ratio(p99["kube"] / p99["agent-exec"]), "",
               n)


# --------------------------------------------------------------------------- row 3


# What a -t session imports on top of an --agent-exec one, timed inside one process after
# what both import (the CLI, the engine, the pipe transport).
IMPORT_K8S = ("import supervisor.cli, supervisor.runner, supervisor.transport, time; "
              "t = time.perf_counter(); import supervisor.k8s_api, supervisor.k8s_link; "
              "print(time.perf_counter() - t)")


def row_startup(report: Report, plan: Plan, s: Setup) -> None:
    say(f"row 3: mirrortrace run ... -- true, {plan.true_reps} runs each with -t and "
        "--agent-exec, and the -t imports alone")
    true = shutil.which("true") or "/bin/true"
    imports: list[float] = []

    def once(name: str) -> Callable[[], float]:
        argv = s.argv(name, [true])

        def go() -> float:
            wall = run(argv, what=f"mirrortrace run {LABELS[name]} -- true").wall
            s.agents_done()  # the agent's exit is not part of the start, but must not overlap
            return wall

        return go

    def import_k8s() -> float:
        done = run([PYTHON, "-c", IMPORT_K8S], what="the -t imports")
        try:
            imports.append(float(done.out.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            raise RunFailed(f"the -t imports printed no time: {done.out[-300:]!r} "
                            f"{done.err[-500:]!r}") from None
        return done.wall

    for name in TRANSPORTS:  # warm the page cache and the .pyc files
        once(name)()
    walls = interleave(plan.true_reps, {**{name: once(name) for name in TRANSPORTS},
                                        "imports": import_k8s})
    base, kube = median(walls["agent-exec"]), median(walls["kube"])
    diffs = [k - a for k, a in zip(walls["kube"], walls["agent-exec"], strict=True)]
    report.add("3", "session start: `mirrortrace run … -- true`, wall (includes mirrortrace's "
               "own start-up; no image pull with the double)",
               f"--agent-exec {fmt_time(base)}",
               f"-t {fmt_time(kube)} (+{fmt_time(kube - base)})", f"**{fmt_ratio(kube / base)}**",
               "-t " + goal(kube, 1, "≤", " s"), f"{plan.true_reps}+{plan.true_reps}")
    report.notes.append(
        f"Row 3: median of the per-repetition differences -t − --agent-exec "
        f"{fmt_time(median(diffs))} (fastest -t {fmt_time(min(walls['kube']))}, fastest "
        f"--agent-exec {fmt_time(min(walls['agent-exec']))}). Part of the difference: "
        f"importing the kubernetes client and the -t modules, {fmt_time(median(imports))} "
        f"(timed alone in another process, interleaved; mirrortrace overlaps some of it with "
        f"the engine's start-up); the double's simulated container start, "
        f"{2 * s.kube.start_delay:g} s between the ephemeral-container PATCH and the agent "
        "process (ContainerCreating, then running); and the double's REST and websocket "
        "handling, in Python in the bench process."
    )


# --------------------------------------------------------------------------- main


def unavailable(rows: set[str]) -> tuple[Any, str]:
    """(the cluster module, "") or (None, why the rows cannot run here)."""
    cm = import_cluster()
    if isinstance(cm, str):
        return None, cm
    if not shutil.which("openssl"):
        return None, "no openssl (the API double makes its CA with it: apt-get install openssl)"
    return cm, ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and a 256 MiB transfer (under 2 minutes)")
    parser.add_argument("--rows", default="1,2,3",
                        help="comma-separated rows to run (default: all)")
    args = parser.parse_args(argv)
    rows = set(args.rows.split(",")) & set(ROWS)
    plan = QUICK if args.quick else FULL
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    load_before = os.getloadavg()
    started = time.monotonic()
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-kube-"))
    try:
        cm, why = unavailable(rows)
        if cm is None:
            say(f"all rows SKIPPED: {why}")
            for num in sorted(rows):
                report.add(num, ROWS[num], "—", f"SKIPPED: {why}", "—")
        else:
            progs = build_programs(tmp)
            todo = [(num, fn) for num, fn in (("1", row_transfer), ("2", row_http),
                                              ("3", row_startup)) if num in rows]
            try:
                with kube_setup(cm, progs) as s:
                    for num, fn in todo:
                        try:
                            fn(report, plan, s)
                        except RunFailed as exc:
                            report.fail(num, ROWS[num], exc)
            except RuntimeError as exc:  # cluster or double could not be built (it says why)
                for num, _ in todo:
                    report.fail(num, ROWS[num], exc)
    finally:
        for proc in list(LIVE):
            kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return conclude(report, machine_lines(args.quick, load_before), started)


if __name__ == "__main__":
    entry(main)
