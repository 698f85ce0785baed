"""`mirrortrace run -t ...` end to end through the Kubernetes API double.

The double (kubeapi.py) holds a namespace `dev` whose pods are played by the
simulated cluster's pod network namespace. A process in that namespace stands
for the target container's main process; the injected ephemeral container's
command (`--attached --target-pid 1`) is run as the real agent with that
process as its target, which is what /proc/1 is for a container sharing the
target's process namespace.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import WEB_IP, WEB_PORT, Cluster
from kubeapi import KubeDouble, PodRecord
from podweb import deterministic_bytes
from programs import Programs

from supervisor.k8s_link import DEFAULT_IMAGE

pytestmark = pytest.mark.integration

POD_ENV = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgres://orders-db:5432/orders",
           "HOME": "/root", "LANG": "C.UTF-8"}


@pytest.fixture
def dev(cluster: Cluster, kube: KubeDouble) -> Iterator[KubeDouble]:
    """A deployment `web` (one running pod, container `app`) and the agent hook."""
    kube.reset()
    env = ["env", "-i", *(f"{k}={v}" for k, v in POD_ENV.items())]
    main = subprocess.Popen(["ip", "netns", "exec", cluster.pod_ns, *env, "sleep", "600"])
    kube.add_deployment("dev", "web", {"app": "web"}, containers=["app"])

    def agent(pod: PodRecord, spec: dict[str, Any]) -> list[str]:
        args = [str(main.pid) if a == "1" else a for a in spec.get("args", [])]
        return [*cluster.agent_argv, *args]

    kube.container_argv = agent
    try:
        yield kube
    finally:
        main.kill()
        main.wait()
        kube.reset()


def run(cluster: Cluster, kube: KubeDouble, argv: list[str], *extra: str,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    mt = ["--kubeconfig", str(kube.kubeconfig), *extra]
    return cluster.run(argv, agent_exec="", mt_args=mt, **kw)


def agents(kube: KubeDouble, pod: str) -> list[dict[str, Any]]:
    with kube.lock:
        return list(kube.pod("dev", pod).obj["spec"].get("ephemeralContainers", []))


def web_pod(kube: KubeDouble) -> str:
    return next(p.name for p in kube.pods("dev") if p.name.startswith("web-"))


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def test_a_deployment_target_gets_the_pods_dns_connections_and_environment(
        cluster: Cluster, dev: KubeDouble) -> None:
    out = run(cluster, dev, ["sh", "-c", f"curl -s http://web:{WEB_PORT}/hello; echo; "
                             "echo $DATABASE_URL"], "-t", "deployment/web", "-n", "dev")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "hello" in lines[0] and lines[-1] == POD_ENV["DATABASE_URL"]
    pod = web_pod(dev)
    injected = agents(dev, pod)
    assert len(injected) == 1
    agent = injected[0]
    assert agent["name"].startswith("mirrortrace-") and agent["targetContainerName"] == "app"
    assert agent["stdin"] is True and agent["stdinOnce"] is True
    assert agent["args"] == ["--attached", "--target-pid", "1"]
    # The session is over, so is the agent: its container ended (it cannot be removed).
    _until(lambda: "terminated" in (dev.container_status("dev", pod, agent["name"]) or {})
           .get("state", {}))
    assert not dev.spdy_requests
    attach = [r for r in dev.requests if "/attach" in r.path]
    assert attach and all(r.method == "GET" for r in attach)


def test_the_agent_start_is_watched_not_polled(cluster: Cluster, dev: KubeDouble) -> None:
    """One watch of the pod sees the container start, as kubectl debug does; the
    API server is not asked for the pod again and again through a long start."""
    dev.start_delay = 0.5  # a slower kubelet: polling would have asked ~20 times
    out = run(cluster, dev, ["true"], "-t", "deployment/web", "-n", "dev")
    assert out.returncode == 0, out.stderr
    pod = web_pod(dev)
    gets = [r for r in dev.requests
            if r.method == "GET" and r.path == f"/api/v1/namespaces/dev/pods/{pod}"]
    watches = [r for r in dev.requests if "watch=true" in r.query]
    assert watches and all("fieldSelector=metadata.name" in r.query for r in watches), watches
    assert all(r.path == "/api/v1/namespaces/dev/pods" for r in watches), watches
    assert len(gets) <= 2, gets  # the target's pod, and its state before the watch


def test_without_watch_in_rbac_the_start_is_polled(cluster: Cluster, dev: KubeDouble) -> None:
    dev.deny("watch", "pods")
    out = run(cluster, dev, ["sh", "-c", f"curl -s http://web:{WEB_PORT}/hello"],
              "-t", "deployment/web", "-n", "dev")
    assert out.returncode == 0, out.stderr
    assert "hello" in out.stdout
    assert any("watch=true" in r.query and r.status == 403 for r in dev.requests)


def test_pod_and_container_targets_and_the_default_namespace(cluster: Cluster,
                                                            dev: KubeDouble) -> None:
    pod = web_pod(dev)
    out = run(cluster, dev, ["curl", "-s", f"http://{WEB_IP}:{WEB_PORT}/hello"],
              "-t", f"pod/{pod}/container/app")  # the kubeconfig context's namespace: dev
    assert out.returncode == 0 and "hello" in out.stdout, out.stderr
    assert agents(dev, pod)[0]["targetContainerName"] == "app"


@pytest.mark.parametrize(("target", "setup", "message"), [
    ("deployment/nope", None, 'deployments.apps "nope" not found'),
    ("pod/web-x/container/db", "pod", "has no container 'db'"),
    ("deployment/web", "deny", "RBAC does not let you patch pods/ephemeralcontainers in "
                               "namespace dev"),
    ("deployment/web", "unpullable", "cannot start in pod web-"),
    ("deployment/idle", "idle", "deployment/idle in namespace dev has no running pod"),
])
def test_each_target_error_is_one_line_and_exit_2_before_command_runs(
        cluster: Cluster, dev: KubeDouble, tmp_path: Path, target: str, setup: str | None,
        message: str) -> None:
    if setup == "pod":
        dev.add_pod("dev", "web-x", ["app"])
    elif setup == "deny":
        dev.deny("patch", "pods/ephemeralcontainers")
    elif setup == "unpullable":
        dev.make_unpullable(DEFAULT_IMAGE, "rpc error: code = NotFound")
    elif setup == "idle":
        dev.add_deployment("dev", "idle", {"app": "idle"}, replicas=0)
    marker = tmp_path / "ran"
    out = run(cluster, dev, ["touch", str(marker)], "-t", target, "-n", "dev")
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    if setup == "unpullable":
        assert "ImagePull" in lines[0] and "--agent-image" in lines[0]  # the kubelet's reason
    assert not marker.exists()


def test_an_unreachable_cluster_is_one_line(cluster: Cluster, kube: KubeDouble,
                                            tmp_path: Path) -> None:
    config = json.loads(json.dumps(_yaml_as_json(kube.kubeconfig)))
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"
    broken = tmp_path / "kubeconfig"
    broken.write_text(json.dumps(config))
    out = cluster.run(["true"], agent_exec="",
                      mt_args=["--kubeconfig", str(broken), "-t", "deployment/web"])
    assert out.returncode == 2
    assert "cannot reach the cluster (context" in out.stderr
    assert len([ln for ln in out.stderr.splitlines() if ln.strip()]) == 1


def _yaml_as_json(path: Path) -> dict[str, Any]:
    import yaml  # the kubernetes client depends on PyYAML

    return yaml.safe_load(path.read_text())


def test_a_killed_supervisor_leaves_no_agent_running(cluster: Cluster, dev: KubeDouble) -> None:
    proc = cluster.spawn(["sleep", "60"], agent_exec="",
                         mt_args=["--kubeconfig", str(dev.kubeconfig), "-t", "deployment/web"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pod = web_pod(dev)
    _until(lambda: agents(dev, pod) and "running" in (
        dev.container_status("dev", pod, agents(dev, pod)[0]["name"]) or {}).get("state", {}),
        timeout=30)
    name = agents(dev, pod)[0]["name"]
    time.sleep(0.5)  # attached and serving
    cluster.stop(proc, signal.SIGKILL)
    # The connection dropped, so the kubelet (the double) closed the agent's stdin.
    _until(lambda: "terminated" in (dev.container_status("dev", pod, name) or {})
           .get("state", {}), timeout=15)


def test_targetless_runs_from_a_pod_of_its_own_and_deletes_it(cluster: Cluster,
                                                              dev: KubeDouble) -> None:
    before = {p.name for p in dev.pods("dev")}
    out = run(cluster, dev, ["curl", "-s", f"http://web:{WEB_PORT}/hello"],
              "-t", "targetless", "-n", "dev")
    assert out.returncode == 0 and "hello" in out.stdout, out.stderr
    created = [r for r in dev.requests if r.method == "POST" and r.path.endswith("/pods")]
    deleted = [r for r in dev.requests if r.method == "DELETE"]
    assert created and deleted
    assert {p.name for p in dev.pods("dev")} == before


def test_the_channel_survives_a_large_transfer_through_the_websocket(
        cluster: Cluster, dev: KubeDouble, programs: Programs) -> None:
    out = run(cluster, dev, [programs.goclient, "get", "-sha",
                             f"http://web:{WEB_PORT}/bytes/20000000"], "-t", "deployment/web")
    assert out.returncode == 0, out.stderr
    size, sha = out.stdout.split()
    assert int(size) == 20_000_000
    assert sha == hashlib.sha256(deterministic_bytes(20_000_000)).hexdigest()


def test_an_unprivileged_user_runs_against_a_target(cluster: Cluster, dev: KubeDouble,
                                                     unpriv_python: str) -> None:
    """No root on the laptop: the kubeconfig and the websocket are all a user needs."""
    out = cluster.run(["curl", "-s", f"http://web:{WEB_PORT}/hello"], user="nobody",
                      agent_exec="", mt_args=["--kubeconfig", str(dev.kubeconfig),
                                              "-t", "deployment/web"])
    assert out.returncode == 0 and "hello" in out.stdout, out.stderr


from test_files import CONFIG, PodTree  # noqa: E402
from test_files import pod as pod_tree  # noqa: E402,F401  (the module fixture, reused)


def test_the_targets_files_are_read_through_the_websocket(cluster: Cluster, dev: KubeDouble,
                                                          pod_tree: PodTree) -> None:  # noqa: F811
    """The files scenario with -t: the injected agent's /proc/1 is the chroot'ed target."""
    dev.container_argv = lambda pod, spec: [
        *cluster.agent_argv, *[str(pod_tree.pid) if a == "1" else a for a in spec["args"]]]
    out = run(cluster, dev, ["sh", "-c", "cat /etc/app/config.yaml; sha256sum /data/big.bin; "
                             "ls /data/nested"], "-t", "deployment/web")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (CONFIG.decode() + f"{pod_tree.big_sha}  /data/big.bin\n" + "a\n")


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", cluster.laptop_ns, cluster.python, "-m",
                           "supervisor.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=cluster.repo)


def test_ls_lists_the_targets_as_kind_slash_name(cluster: Cluster, dev: KubeDouble) -> None:
    dev.add_statefulset("dev", "db", {"app": "db"})
    dev.add_pod("dev", "pending-one", ["app"], phase="Pending")
    out = _cli(cluster, "ls", "-n", "dev", "--kubeconfig", str(dev.kubeconfig))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["deployment/web", "statefulset/db"]
    pods = [ln for ln in lines if ln.startswith("pod/")]
    assert "pod/db-0" in pods and web_pod(dev) in {p[4:] for p in pods}
    assert "pod/pending-one" not in pods  # not a usable target
    dev.deny("list", "deployments")
    out = _cli(cluster, "ls", "-n", "dev", "--kubeconfig", str(dev.kubeconfig))
    assert out.returncode == 2 and "RBAC does not let you list deployments" in out.stderr


def test_doctor_checks_the_cluster_and_each_verb_mirrortrace_needs(cluster: Cluster,
                                                                  dev: KubeDouble) -> None:
    out = _cli(cluster, "doctor", "-n", "dev", "--kubeconfig", str(dev.kubeconfig))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    kubernetes: context sim" in out.stdout and "server v1.30" in out.stdout
    assert "ok    rbac: patch pods/ephemeralcontainers: in dev: inject the agent" in out.stdout
    dev.deny("patch", "pods/ephemeralcontainers")
    out = _cli(cluster, "doctor", "-n", "dev", "--kubeconfig", str(dev.kubeconfig))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    failed = lines.index(next(ln for ln in lines if ln.startswith("FAIL  rbac: patch pods/")))
    assert "grant 'patch pods/ephemeralcontainers' in namespace dev" in lines[failed + 1]
    assert lines[-1] == "1 problem found"
