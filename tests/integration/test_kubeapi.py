"""The Kubernetes API double (kubeapi.py) speaks the real protocols: checked with real clients.

The real ``kubectl`` (google-cloud-cli's dispatcher at /usr/bin/kubectl, which GETs /version
and runs the kubectl of the server's minor version) and the official Python ``kubernetes``
client, both from the laptop network namespace where mirrortrace runs. If the double drifts
from what these clients expect (discovery, Table, Status objects, the exec websocket's channel
framing and final Status), these tests fail; if kubectl silently falls back to SPDY, the
double records it and the tests fail too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster
from kubeapi import V4, V5, KubeDouble

pytestmark = pytest.mark.integration

KUBECTL = "/usr/bin/kubectl"
KUBECTL_BIN = Path("/usr/lib/google-cloud-sdk/bin")
NS = "dev"
AGENT_IMAGE = "registry.example/mirrortrace-agent:0.1.0"


@pytest.fixture(autouse=True)
def fresh(kube: KubeDouble) -> Iterator[KubeDouble]:
    """Every test starts from an empty cluster (the double is shared by the session)."""
    kube.reset()
    yield kube


def kubectl(
    cluster: Cluster,
    kube: KubeDouble,
    home: Path,
    *args: str,
    binary: str = KUBECTL,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run kubectl in the laptop namespace against the double (a private HOME for its cache)."""
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not installed (google-cloud-cli's kubectl)")
    full_env = {"KUBECONFIG": str(kube.kubeconfig), "HOME": str(home), **(env or {})}
    return cluster.laptop_run([binary, *args], env=full_env, input=input, text=False, timeout=60)


def kubectl_minor(kube: KubeDouble) -> set[int]:
    """Minor versions of the kubectl binaries that talked to the double (from User-Agent)."""
    minors = set()
    for req in kube.requests:
        if m := re.match(r"kubectl(?:\.1\.\d+)?/v1\.(\d+)\.", req.user_agent):
            minors.add(int(m.group(1)))
    return minors


def client_call(kube: KubeDouble, fn: Callable[[Any], Any]) -> Any:
    """Call ``fn(api_client)`` with a kubernetes ApiClient loaded from the double's kubeconfig,
    in the laptop namespace (where the double listens)."""
    from kubernetes import client, config

    def run() -> Any:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            try:
                return fn(api)
            finally:
                api.rest_client.close()  # ApiClient.close() leaves urllib3's pool open

    return kube.in_laptop(run)


def close_ws(ws: Any) -> None:
    """Close a kubernetes WSClient for good: once the server's close frame has been read,
    websocket-client's close() returns early and leaves the socket open."""
    ws.close()
    ws.sock.shutdown()


def api_exception(kube: KubeDouble, fn: Callable[[Any], Any]) -> Any:
    from kubernetes.client.exceptions import ApiException

    def run(api: Any) -> Any:
        with pytest.raises(ApiException) as info:
            fn(api)
        return info.value

    return client_call(kube, run)


# ---------------------------------------------------------------------------- kubectl


def test_kubectl_get_pods_and_deployments_lists_what_the_double_holds(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    kube.add_deployment(NS, "web", replicas=2)
    kube.add_pod(NS, "solo", ["app", "sidecar"])
    kube.add_deployment("other", "hidden")
    pods = [r.name for r in kube.pods(NS)]

    res = kubectl(cluster, kube, tmp_path, "get", "pods", "-n", NS)
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(pods)
    assert ["solo", "2/2", "Running", "0"] in [line.split()[:4] for line in lines]
    assert "hidden" not in res.stdout.decode()

    res = kubectl(cluster, kube, tmp_path, "get", "deploy", "-n", NS)
    assert res.returncode == 0, res.stderr.decode()
    rows = [line.split() for line in res.stdout.decode().splitlines()]
    assert rows[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert [row[:4] for row in rows[1:]] == [["web", "2/2", "2", "2"]]
    # The dispatcher picked kubectl >= 1.30 from /version, which asked for aggregated discovery
    # and for server-side Tables.
    assert kubectl_minor(kube) and min(kubectl_minor(kube)) >= 30
    assert any(r.path == "/version" and "dispatcher" in r.user_agent for r in kube.requests)
    lists = [r for r in kube.requests if r.path.endswith(("/pods", "/deployments"))]
    assert lists and all("as=Table" in r.accept for r in lists)


def test_kubectl_get_pods_json_parses_with_owner_chain(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    kube.add_deployment(NS, "orders", labels={"app": "orders", "tier": "api"})
    res = kubectl(cluster, kube, tmp_path, "get", "pods", "-n", NS, "-l", "tier=api", "-o", "json")
    assert res.returncode == 0, res.stderr.decode()
    doc = json.loads(res.stdout)
    assert doc["kind"] == "List"
    [pod] = doc["items"]
    assert pod["kind"] == "Pod" and pod["metadata"]["name"].startswith("orders-")
    [ref] = pod["metadata"]["ownerReferences"]
    assert ref["kind"] == "ReplicaSet"
    rs = kube.get("replicasets", NS, ref["name"])
    assert rs["metadata"]["ownerReferences"][0]["name"] == "orders"
    assert rs["metadata"]["uid"] == ref["uid"]

    res = kubectl(cluster, kube, tmp_path, "get", "pods", "-n", NS, "-l", "tier=db", "-o", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["items"] == []


def test_kubectl_exec_round_trips_one_mib_of_binary_stdin_over_websocket_v5(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    kube.add_pod(NS, "web-0", ["app"])
    data = os.urandom(1 << 20)
    res = kubectl(cluster, kube, tmp_path, "exec", "-i", "web-0", "-n", NS, "--", "cat",
                  input=data)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert len(res.stdout) == len(data)
    assert hashlib.sha256(res.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    assert kube.spdy_requests == []
    [ws] = [r for r in kube.requests if r.path.endswith("/exec")]
    assert (ws.method, ws.status, ws.subprotocol) == ("GET", 101, V5)
    assert min(kubectl_minor(kube)) >= 30, [r.user_agent for r in kube.requests]
    [session] = kube.execs
    assert session.command == ["cat"] and session.process.returncode == 0


def test_kubectl_exec_gives_the_command_exit_status_and_stderr(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    kube.add_pod(NS, "web-0", ["app"])
    res = kubectl(cluster, kube, tmp_path, "exec", "web-0", "-n", NS, "--",
                  "sh", "-c", "echo out; echo err >&2; exit 3")  # fmt: skip
    assert res.returncode == 3, res.stderr.decode()
    assert res.stdout == b"out\n"
    assert b"err\n" in res.stderr
    assert b"command terminated with exit code 3" in res.stderr

    res = kubectl(cluster, kube, tmp_path, "exec", "web-0", "-n", NS, "--", "no-such-program")
    assert res.returncode == 1
    assert b'error: Internal error occurred: error executing command in container' in res.stderr
    assert b'"no-such-program": executable file not found in $PATH' in res.stderr
    assert kube.spdy_requests == []


def test_kubectl_exec_runs_in_the_pod_network_namespace(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    kube.add_pod(NS, "web-0", ["app"])
    res = kubectl(cluster, kube, tmp_path, "exec", "web-0", "-n", NS, "--", "ip", "-o", "addr")
    assert res.returncode == 0, res.stderr.decode()
    assert b"198.18.0.2/24" in res.stdout  # the pod's eth0, not the laptop's wlan0
    assert b"wlan0" not in res.stdout


def test_kubectl_1_29_speaks_spdy_only_and_the_double_refuses_and_records_it(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    # kubectl 1.29 has websocket exec only behind KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true (alpha);
    # by default it POSTs a SPDY upgrade, which a mirrortrace channel must never depend on.
    kube.add_pod(NS, "web-0", ["app"])
    binary = str(KUBECTL_BIN / "kubectl.1.29")
    res = kubectl(cluster, kube, tmp_path, "exec", "web-0", "-n", NS, "--", "true", binary=binary)
    assert res.returncode == 1
    assert b"SPDY exec is not supported by this API server test double" in res.stderr
    [spdy] = kube.spdy_requests
    assert spdy.method == "POST" and spdy.upgrade == "SPDY/3.1" and spdy.status == 400
    assert spdy.user_agent.startswith("kubectl.1.29/v1.29.")
    assert kube.execs == []

    res = kubectl(cluster, kube, tmp_path, "exec", "web-0", "-n", NS, "--", "true", binary=binary,
                  env={"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true"})  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert len(kube.spdy_requests) == 1 and len(kube.execs) == 1


def test_kubectl_falls_back_to_spdy_when_the_websocket_is_refused_and_the_double_sees_it(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    # The trap the spdy_requests record exists for: kubectl >= 1.30 retries any failed
    # websocket upgrade over SPDY without a word. Here RBAC lacks `get pods/exec` (what the
    # websocket GET needs) but has `create` (what the SPDY POST needs).
    kube.add_pod(NS, "web-0", ["app"])
    kube.deny("get", "pods/exec")
    res = kubectl(cluster, kube, tmp_path, "exec", "web-0", "-n", NS, "--", "true")
    assert res.returncode == 1
    [ws] = [r for r in kube.requests if r.path.endswith("/exec") and r.method == "GET"]
    assert ws.status == 403
    [spdy] = kube.spdy_requests
    assert spdy.method == "POST" and min(kubectl_minor(kube)) >= 30


def test_kubectl_debug_injects_an_ephemeral_container_and_attaches_to_it(
    cluster: Cluster, kube: KubeDouble, tmp_path: Path
) -> None:
    # kubectl's own way in: a strategic-merge PATCH of pods/ephemeralcontainers, a watch until
    # the container runs, then the attach websocket.
    kube.add_pod(NS, "web-0", ["app"])
    res = kubectl(cluster, kube, tmp_path, "debug", "-i", "web-0", "-n", NS, "--image",
                  AGENT_IMAGE, "-c", "dbg", "--target", "app", "--",
                  "sh", "-c", "read x; echo got:$x", input=b"hello\n")  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.endswith(b"\ngot:hello\n")  # after kubectl's "Targeting container" line
    [eph] = kube.pod(NS, "web-0").obj["spec"]["ephemeralContainers"]
    assert (eph["name"], eph["targetContainerName"], eph["stdin"]) == ("dbg", "app", True)
    methods = {(r.method, r.path.rsplit("/", 1)[-1]): r for r in kube.requests}
    patch = methods[("PATCH", "ephemeralcontainers")]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert methods[("GET", "attach")].subprotocol == V5
    assert any("watch" in r.query or "resourceVersion=" in r.query for r in kube.requests)
    state = kube.wait_for(lambda: kube.container_status(NS, "web-0", "dbg")["state"].get(
        "terminated"), what="dbg to end")  # fmt: skip
    assert state["exitCode"] == 0
    assert kube.spdy_requests == []


# ---------------------------------------------------------------------------- Python client


def test_python_client_lists_pods_and_reads_workloads(kube: KubeDouble) -> None:
    from kubernetes import client

    kube.add_deployment(NS, "web", replicas=2)
    kube.add_statefulset(NS, "db")
    kube.add_daemonset(NS, "logs")
    kube.add_job(NS, "migrate")

    def run(api: Any) -> dict[str, Any]:
        core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
        return {
            "pods": core.list_namespaced_pod(NS),
            "web_pods": core.list_namespaced_pod(NS, label_selector="app=web"),
            "deploy": apps.read_namespaced_deployment("web", NS),
            "sts": apps.read_namespaced_stateful_set("db", NS),
            "ds": apps.list_namespaced_daemon_set(NS),
            "job": batch.read_namespaced_job("migrate", NS),
            "rs": apps.list_namespaced_replica_set(NS, label_selector="app=web"),
        }

    got = client_call(kube, run)
    names = sorted(p.metadata.name for p in got["pods"].items)
    assert names == sorted(r.name for r in kube.pods(NS)) and len(names) == 5
    assert len(got["web_pods"].items) == 2
    deploy = got["deploy"]
    assert deploy.spec.selector.match_labels == {"app": "web"}
    assert deploy.status.ready_replicas == 2
    [rs] = got["rs"].items
    assert rs.metadata.owner_references[0].uid == deploy.metadata.uid
    pod = got["web_pods"].items[0]
    assert pod.metadata.owner_references[0].name == rs.metadata.name
    assert pod.status.phase == "Running" and pod.status.pod_ip == "198.18.0.2"
    assert got["sts"].spec.service_name == "db"
    assert got["ds"].items[0].status.number_ready == 1
    job = got["job"]
    [job_pod] = [p for p in got["pods"].items if p.metadata.name.startswith("migrate-")]
    assert job_pod.metadata.owner_references[0].uid == job.metadata.uid
    sel = job.spec.selector.match_labels
    assert all(job_pod.metadata.labels[k] == v for k, v in sel.items())


def test_python_client_errors_are_401_403_404_status_objects(kube: KubeDouble) -> None:
    from kubernetes import client

    kube.add_pod(NS, "web-0", ["app"])

    def unauthenticated(api: Any) -> Any:
        api.configuration.api_key = {}
        api.default_headers.pop("Authorization", None)
        return client.CoreV1Api(api).list_namespaced_pod(NS)

    err = api_exception(kube, unauthenticated)
    assert err.status == 401
    assert json.loads(err.body)["reason"] == "Unauthorized"

    err = api_exception(kube, lambda api: client.CoreV1Api(api).read_namespaced_pod("nope", NS))
    assert err.status == 404
    body = json.loads(err.body)
    assert (body["kind"], body["reason"], body["message"]) == ("Status", "NotFound",
                                                               'pods "nope" not found')  # fmt: skip

    kube.deny("patch", "pods/ephemeralcontainers")
    patch = {"spec": {"ephemeralContainers": [{"name": "dbg", "image": AGENT_IMAGE}]}}

    def denied_then_read(api: Any) -> tuple[Any, str]:
        core = client.CoreV1Api(api)
        with pytest.raises(client.exceptions.ApiException) as info:
            core.patch_namespaced_pod_ephemeralcontainers("web-0", NS, patch)
        # The same keep-alive connection still works after an error answer to a request
        # with a body.
        return info.value, core.read_namespaced_pod("web-0", NS).metadata.name

    err, name = client_call(kube, denied_then_read)
    assert err.status == 403 and name == "web-0"
    body = json.loads(err.body)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        f'pods "web-0" is forbidden: User "{kube.user}" cannot patch resource '
        '"pods/ephemeralcontainers" in API group "" in the namespace "dev"'
    )
    assert kube.pod(NS, "web-0").obj["spec"].get("ephemeralContainers") is None

    kube.deny("list", "deployments")
    err = api_exception(kube, lambda api: client.AppsV1Api(api).list_namespaced_deployment(NS))
    assert err.status == 403
    assert json.loads(err.body)["message"] == (
        f'deployments.apps is forbidden: User "{kube.user}" cannot list resource "deployments" '
        'in API group "apps" in the namespace "dev"'
    )


def _ephemeral(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": AGENT_IMAGE, "command": command, "stdin": True,
            "stdinOnce": True, "targetContainerName": "app", **extra}  # fmt: skip


def test_python_client_patches_an_ephemeral_container_that_starts_runs_and_attaches(
    kube: KubeDouble,
) -> None:
    from kubernetes import client, watch
    from kubernetes.stream import stream

    kube.add_pod(NS, "web-0", ["app"])
    body = {"spec": {"ephemeralContainers": [_ephemeral("mt-agent-1", ["cat"])]}}

    def run(api: Any) -> dict[str, Any]:
        core = client.CoreV1Api(api)
        patched = core.patch_namespaced_pod_ephemeralcontainers("web-0", NS, body)
        seen = []
        w = watch.Watch()
        # From the PATCH's resourceVersion: every change after it, none missed however late
        # the watch starts.
        for event in w.stream(core.list_namespaced_pod, NS, field_selector="metadata.name=web-0",
                              resource_version=patched.metadata.resource_version,
                              timeout_seconds=10):  # fmt: skip
            [st] = event["object"].status.ephemeral_container_statuses or [None]
            if st is not None:
                seen.append(st.state)
                if st.state.running:
                    w.stop()
        ws = stream(core.connect_get_namespaced_pod_attach, "web-0", NS,
                    container="mt-agent-1", stdin=True, stdout=True, stderr=True, tty=False,
                    _preload_content=False, binary=True)  # fmt: skip
        ws.write_stdin(b"ping\n")
        line = ws.readline_stdout(timeout=10)
        ws.close_channel(0)  # v5: stdin closed -> stdinOnce -> the container's stdin gets EOF
        ws.run_forever(timeout=10)
        status = ws.read_channel(3)
        close_ws(ws)
        return {"patched": patched, "seen": seen, "line": line, "status": status,
                "subprotocol": ws.subprotocol}  # fmt: skip

    got = client_call(kube, run)
    [eph] = got["patched"].spec.ephemeral_containers
    assert eph.name == "mt-agent-1" and eph.target_container_name == "app"
    assert got["patched"].status.ephemeral_container_statuses is None  # the kubelet's job, later
    assert got["seen"][0].waiting.reason == "ContainerCreating"
    assert got["seen"][-1].running.started_at is not None
    assert got["line"] == b"ping"
    assert got["subprotocol"] == V5
    assert json.loads(got["status"]) == {"metadata": {}, "status": "Success"}
    state = kube.wait_for(
        lambda: (kube.container_status(NS, "web-0", "mt-agent-1") or {})["state"].get(
            "terminated"), what="the ephemeral container to end")  # fmt: skip
    assert state["exitCode"] == 0
    assert kube.logs(NS, "web-0", "mt-agent-1") == b"ping\n"


def test_attach_relays_only_output_written_after_attaching(kube: KubeDouble) -> None:
    # containerd keeps what a container writes with nobody attached for the log only: a
    # container process that speaks before anyone listens loses those words. The double does
    # the same, so a channel design that relies on them fails here, not on a real cluster.
    from kubernetes import client
    from kubernetes.stream import stream

    kube.add_pod(NS, "web-0", ["app"])
    eph = _ephemeral("talker", ["sh", "-c", "echo early; read x; echo late:$x"])
    client_call(kube, lambda api: client.CoreV1Api(api).patch_namespaced_pod_ephemeralcontainers(
        "web-0", NS, {"spec": {"ephemeralContainers": [eph]}}))  # fmt: skip
    kube.wait_for(lambda: kube.logs(NS, "web-0", "talker"), what="the early line in the log")

    def attach(api: Any) -> bytes:
        ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_attach, "web-0", NS,
                    container="talker", stdin=True, stdout=True, stderr=True, tty=False,
                    _preload_content=False, binary=True)  # fmt: skip
        ws.write_stdin(b"x1\n")
        ws.run_forever(timeout=10)
        out = ws.read_stdout()
        close_ws(ws)
        return out

    assert client_call(kube, attach) == b"late:x1\n"
    assert kube.logs(NS, "web-0", "talker") == b"early\nlate:x1\n"


def test_unpullable_ephemeral_image_stays_in_image_pull_backoff(kube: KubeDouble) -> None:
    from kubernetes import client

    kube.add_pod(NS, "web-0", ["app"])
    kube.make_unpullable(AGENT_IMAGE)
    body = {"spec": {"ephemeralContainers": [_ephemeral("mt-agent-2", ["cat"])]}}
    client_call(kube, lambda api: client.CoreV1Api(api).patch_namespaced_pod_ephemeralcontainers(
        "web-0", NS, body))  # fmt: skip

    def waiting_reason() -> str:
        pod = client_call(kube, lambda api: client.CoreV1Api(api).read_namespaced_pod("web-0", NS))
        [st] = pod.status.ephemeral_container_statuses or [None]  # none until the "kubelet"
        return st.state.waiting.reason if st and st.state.waiting else "not waiting"

    kube.wait_for(lambda: waiting_reason() == "ImagePullBackOff", what="ImagePullBackOff")
    time.sleep(3 * kube.start_delay)
    st = kube.container_status(NS, "web-0", "mt-agent-2")
    assert st is not None and st["state"]["waiting"]["reason"] == "ImagePullBackOff"
    assert AGENT_IMAGE in st["state"]["waiting"]["message"]
    assert "mt-agent-2" not in kube.pod(NS, "web-0").processes


def test_ephemeral_containers_can_be_added_but_never_removed_or_changed(kube: KubeDouble) -> None:
    from kubernetes import client

    kube.add_pod(NS, "web-0", ["app"])
    first = _ephemeral("one", ["cat"])

    def run(api: Any) -> list[Any]:
        core = client.CoreV1Api(api)
        core.patch_namespaced_pod_ephemeralcontainers("web-0", NS, {"spec": {
            "ephemeralContainers": [first]}})  # strategic merge: merged by name  # fmt: skip
        core.patch_namespaced_pod_ephemeralcontainers("web-0", NS, [{  # JSON patch: append
            "op": "add", "path": "/spec/ephemeralContainers/-",
            "value": _ephemeral("two", ["cat"])}])  # fmt: skip
        errors = []
        for body, ctype in (
            ({"spec": {"ephemeralContainers": []}}, "application/merge-patch+json"),
            ({"spec": {"ephemeralContainers": [{**first, "image": "other:1"}]}}, None),
            ({"spec": {"ephemeralContainers": [{"name": "app", "image": "x:1"}]}}, None),
        ):
            try:
                core.patch_namespaced_pod_ephemeralcontainers("web-0", NS, body,
                                                              _content_type=ctype)  # fmt: skip
            except client.exceptions.ApiException as exc:
                errors.append((exc.status, json.loads(exc.body)))
        return errors

    removed, changed, duplicate = client_call(kube, run)
    assert removed[0] == 422 and "may not be removed" in removed[1]["message"]
    assert changed[0] == 422 and "may not be changed" in changed[1]["message"]
    assert duplicate[0] == 422 and removed[1]["reason"] == "Invalid"
    assert duplicate[1]["details"]["causes"][0]["field"] == "spec.ephemeralContainers[2].name"
    names = [c["name"] for c in kube.pod(NS, "web-0").obj["spec"]["ephemeralContainers"]]
    assert names == ["one", "two"]


@pytest.mark.parametrize("subprotocol", [V5, V4])
def test_python_client_exec_echo_hi_with_status_on_channel_3(
    kube: KubeDouble, subprotocol: str
) -> None:
    from kubernetes import client
    from kubernetes.stream import stream

    kube.add_pod(NS, "web-0", ["app"])

    def run(api: Any, command: list[str]) -> tuple[str, str, bytes, str]:
        ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, "web-0", NS,
                    command=command, stdin=False, stdout=True, stderr=True, tty=False,
                    _preload_content=False, binary=True,
                    _headers={"sec-websocket-protocol": subprotocol})  # fmt: skip
        ws.run_forever(timeout=10)
        # Read the channels directly: read_all() would also swallow channel 3.
        got = ws.subprotocol, ws.read_stdout(), ws.read_stderr(), ws.read_channel(3)
        close_ws(ws)
        return got

    proto, out, err, status = client_call(kube, lambda api: run(api, ["echo", "hi"]))
    assert (proto, out, err) == (subprotocol, b"hi\n", b"")
    assert json.loads(status) == {"metadata": {}, "status": "Success"}

    proto, out, err, status = client_call(kube, lambda api: run(api, ["sh", "-c", "exit 7"]))
    assert json.loads(status) == {
        "metadata": {}, "status": "Failure",
        "message": "command terminated with non-zero exit code: command terminated with exit "
                   "code 7",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "7"}]},
    }  # fmt: skip
    assert kube.spdy_requests == []


def test_exec_websocket_answers_pings_and_refuses_unknown_subprotocols(kube: KubeDouble) -> None:
    import websocket

    kube.add_pod(NS, "web-0", ["app"])
    url = (f"wss://127.0.0.1:{kube.port}/api/v1/namespaces/{NS}/pods/web-0/exec"
           "?command=cat&stdin=true&stdout=true&stderr=true")  # fmt: skip
    options = {"header": [f"Authorization: Bearer {kube.token}"],
               "sslopt": {"ca_certs": str(kube.ca_cert)}}  # fmt: skip

    def run() -> tuple[list[tuple[int, bytes]], int]:
        ws = websocket.create_connection(url, subprotocols=[V5], **options)
        frames = [ws.recv_data_frame(True)]  # the server's empty first message (channel 1)
        ws.ping(b"heartbeat")
        frames.append(ws.recv_data_frame(True))
        ws.send_binary(b"\x00abc")
        ws.send_binary(bytes([255, 0]))  # v5: close stdin
        while True:
            opcode, frame = ws.recv_data_frame(True)
            frames.append((opcode, frame))
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
        ws.shutdown()
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(url, subprotocols=["v3.channel.k8s.io"], **options)
        return [(op, f.data) for op, f in frames], info.value.status_code

    frames, refused = kube.in_laptop(run)
    binary, pong, close = websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_PONG, 0x8
    assert frames[0] == (binary, b"\x01")
    assert frames[1] == (pong, b"heartbeat")
    assert frames[2] == (binary, b"\x01abc")
    assert frames[3] == (binary, b'\x03{"metadata":{},"status":"Success"}')
    assert frames[4][0] == close and frames[4][1][:2] == b"\x03\xe8"  # 1000: normal closure
    assert refused == 400


def test_v5_stdin_close_gives_the_exec_process_eof_and_v4_cannot(kube: KubeDouble) -> None:
    from kubernetes import client
    from kubernetes.stream import stream

    kube.add_pod(NS, "web-0", ["app"])

    def run(api: Any, subprotocol: str) -> bytes:
        ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, "web-0", NS,
                    command=["wc", "-c"], stdin=True, stdout=True, stderr=True, tty=False,
                    _preload_content=False, binary=True,
                    _headers={"sec-websocket-protocol": subprotocol})  # fmt: skip
        ws.write_stdin(b"12345")
        ws.close_channel(0)  # a no-op on v4: that protocol has no way to say it
        ws.run_forever(timeout=1.5)
        out = ws.read_stdout(timeout=0)  # v4: the command still waits for its stdin
        close_ws(ws)
        return out

    assert client_call(kube, lambda api: run(api, V5)).strip() == b"5"
    assert client_call(kube, lambda api: run(api, V4)) == b""
    v4_exec = kube.execs[-1]
    # The client went away: the exec'd process gets EOF on stdin and ends by itself; it is
    # not killed (neither is one on a real cluster).
    v4_exec.process.done.wait(5)
    assert v4_exec.process.returncode == 0 and v4_exec.process.log.strip() == b"5"


def test_targetless_pod_is_created_runs_its_container_and_is_deleted(kube: KubeDouble) -> None:
    from kubernetes import client

    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "mirrortrace-", "labels": {"app": "mirrortrace"}},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "agent", "image": AGENT_IMAGE, "command": ["sleep", "60"]}]},
    }  # fmt: skip
    created = client_call(kube, lambda api: client.CoreV1Api(api).create_namespaced_pod(NS, pod))
    name = created.metadata.name
    assert name.startswith("mirrortrace-") and created.status.phase == "Pending"
    kube.wait_for(lambda: kube.get("pods", NS, name)["status"]["phase"] == "Running",
                  what="the pod to run")  # fmt: skip
    proc = kube.pod(NS, name).processes["agent"]
    assert proc.done.is_set() is False

    client_call(kube, lambda api: client.CoreV1Api(api).delete_namespaced_pod(name, NS))
    assert proc.done.wait(5), "the deleted pod's container process still runs"
    kube.wait_for(lambda: not [r for r in kube.pods(NS) if r.name == name], what="pod removal")
    err = api_exception(kube, lambda api: client.CoreV1Api(api).read_namespaced_pod(name, NS))
    assert err.status == 404


def test_kubeconfig_is_readable_by_other_users_and_close_cleans_up(cluster: Cluster) -> None:
    with KubeDouble(cluster) as double:
        mode = double.kubeconfig.stat().st_mode
        assert mode & 0o004 and double.tmp.stat().st_mode & 0o005 == 0o005
        config = json.loads(double.kubeconfig.read_text())
        assert config["contexts"][0]["context"] == {"cluster": "sim", "user": "sim-user",
                                                     "namespace": "dev"}  # fmt: skip
        assert config["clusters"][0]["cluster"]["server"] == double.server
        double.add_pod(NS, "p", [{"name": "app", "image": "x:1", "command": ["sleep", "60"]}],
                       start=True)  # fmt: skip
        proc = double.wait_for(lambda: double.pod(NS, "p").processes.get("app"))
        tmp = double.tmp
    assert proc.done.wait(5), "close() left a container process running"
    assert not tmp.exists()
