"""COMMAND's environment comes from the pod: --env remote|local|merge and --env-exclude."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from programs import Programs

pytestmark = pytest.mark.integration

POD_ENV = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgres://db.other:5432/orders",
           "FEATURE_FLAGS": "fast-checkout", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
LOCAL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "en_GB.UTF-8",
             "EDITOR": "vim", "DATABASE_URL": "postgres://localhost/dev"}


@pytest.fixture(scope="module")
def target(cluster: Cluster) -> Iterator[int]:
    """A process in the pod standing for the target container's main process."""
    env = ["env", "-i", *(f"{k}={v}" for k, v in POD_ENV.items())]
    proc = subprocess.Popen(["ip", "netns", "exec", cluster.pod_ns, *env, "sleep", "600"])
    time.sleep(0.2)
    yield proc.pid
    proc.kill()
    proc.wait()


def _env_lines(cluster: Cluster, argv: list[str], mode: str, target: int,
               *extra: str) -> dict[str, str]:
    agent = cluster.agent_exec + " " + shlex.join(["--target-pid", str(target)])
    out = cluster.run(argv, agent_exec=agent, env=LOCAL_ENV,
                      mt_args=["--env", mode, *extra])
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@pytest.fixture(params=["env", "go"])
def printer(request: pytest.FixtureRequest, programs: Programs) -> list[str]:
    """`env` (glibc) and a static Go program (the environment from execve's stack)."""
    return ["env"] if request.param == "env" else [programs.goclient, "env"]


def test_merge_takes_the_pods_config_and_keeps_this_machines_session(
    cluster: Cluster, target: int, printer: list[str]
) -> None:
    env = _env_lines(cluster, printer, "merge", target)
    assert env["DATABASE_URL"] == POD_ENV["DATABASE_URL"]
    assert env["FEATURE_FLAGS"] == "fast-checkout"
    assert env["PATH"] == LOCAL_ENV["PATH"] and env["HOME"] == "/root"
    assert env["LANG"] == "en_GB.UTF-8" and env["EDITOR"] == "vim"


def test_remote_is_the_pods_environment(cluster: Cluster, target: int,
                                        printer: list[str]) -> None:
    env = _env_lines(cluster, printer, "remote", target)
    assert {k: v for k, v in env.items() if k != "_"} == POD_ENV


def test_local_is_this_machines(cluster: Cluster, target: int, printer: list[str]) -> None:
    env = _env_lines(cluster, printer, "local", target)
    assert env["DATABASE_URL"] == LOCAL_ENV["DATABASE_URL"]
    assert "FEATURE_FLAGS" not in env


def test_excluded_names_are_not_taken_from_the_pod(cluster: Cluster, target: int,
                                                   printer: list[str]) -> None:
    env = _env_lines(cluster, printer, "merge", target, "--env-exclude", "DATABASE_*")
    assert env["DATABASE_URL"] == LOCAL_ENV["DATABASE_URL"]
    assert env["FEATURE_FLAGS"] == "fast-checkout"


def test_plain_ui_names_the_variables_but_never_shows_them(cluster: Cluster,
                                                          target: int) -> None:
    agent = cluster.agent_exec + f" --target-pid {target}"
    out = cluster.run(["true"], agent_exec=agent, env=LOCAL_ENV, mt_args=["--ui", "plain"])
    line = next(x for x in out.stderr.splitlines() if "environment:" in x)
    assert "DATABASE_URL" in line and "FEATURE_FLAGS" in line
    assert "postgres" not in out.stderr and "fast-checkout" not in out.stderr



def test_a_mirrord_json_gives_the_same_environment_rules(cluster: Cluster, target: int,
                                                        tmp_path: Path) -> None:
    """Teams moving from mirrord keep their file: env include and override apply."""
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"feature": {"env": {
        "include": "DATABASE_*;LANG", "override": {"LOG_LEVEL": "debug"}}}}))
    agent = cluster.agent_exec + f" --target-pid {target}"
    out = cluster.run(["env"], agent_exec=agent, env=LOCAL_ENV, mt_args=["-f", str(config)])
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert env["DATABASE_URL"] == POD_ENV["DATABASE_URL"]
    assert "FEATURE_FLAGS" not in env  # not included
    assert env["LANG"] == LOCAL_ENV["LANG"]  # included, but merge keeps the session's
    assert env["LOG_LEVEL"] == "debug"
