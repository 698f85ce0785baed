"""Target resolution against canned API answers (the API's own JSON shapes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException

from supervisor.errors import TargetError
from supervisor.k8s_access import role_yaml
from supervisor.k8s_api import Kube, api_error
from supervisor.k8s_link import security_context
from supervisor.k8s_targets import resolve


def pod(name: str, phase: str = "Running", containers: tuple[str, ...] = ("app",),
        annotations: dict[str, str] | None = None, deleting: bool = False,
        uid: int | None = None, container_uid: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "annotations": annotations}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    specs: list[dict[str, Any]] = [{"name": c} for c in containers]
    if container_uid is not None:
        specs[0]["securityContext"] = {"runAsUser": container_uid}
    spec: dict[str, Any] = {"containers": specs}
    if uid is not None:
        spec["securityContext"] = {"runAsUser": uid, "runAsGroup": uid}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def deployment(labels: dict[str, str]) -> dict[str, Any]:
    return {"spec": {"selector": {
        "matchLabels": labels,
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}}


class FakeKube(Kube):
    """Answers GETs from `objects` (path -> JSON); records list selectors."""

    def __init__(self) -> None:
        super().__init__(Configuration(), None, "dev", "context sim")  # type: ignore[arg-type]
        self.objects: dict[str, Any] = {}
        self.pods: dict[str, Any] = {}
        self.selectors: list[str] = []
        self.forbid: set[tuple[str, str]] = set()

    def request(self, verb: str, resource: str, namespace: str | None, method: str, path: str,
                **kw: Any) -> Any:
        if (verb, resource) in self.forbid:
            exc = ApiException(status=403, reason="Forbidden", body=json.dumps({
                "message": f'{resource} is forbidden: User "dev" cannot {verb} resource '
                           f'"{resource}" in API group "" in the namespace "{namespace}"'}))
            raise api_error(exc, verb, resource, namespace, self.where)
        if path.endswith("/pods"):
            self.selectors.append((kw.get("query") or {}).get("labelSelector", ""))
            return {"items": list(self.pods.values())}
        name = path.rsplit("/", 1)[1]
        if "/pods/" in path:
            if name in self.pods:
                return self.pods[name]
        elif path in self.objects:
            return self.objects[path]
        kind = "pods" if "/pods/" in path else "deployments.apps"
        exc = ApiException(status=404, reason="Not Found",
                           body=json.dumps({"message": f'{kind} "{name}" not found'}))
        raise api_error(exc, verb, resource, namespace, self.where)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def test_a_running_pod_is_its_own_target(kube: FakeKube) -> None:
    kube.pods["web-1"] = pod("web-1")
    assert resolve(kube, "pod/web-1", None).pod == "web-1"
    assert resolve(kube, "pod/web-1", "other").namespace == "other"
    kube.pods["done"] = pod("done", phase="Succeeded")
    with pytest.raises(TargetError, match="pod/done in namespace dev is not running"):
        resolve(kube, "pod/done", None)
    with pytest.raises(TargetError, match='pods "gone" not found'):
        resolve(kube, "pod/gone", None)


def test_a_deployment_picks_its_first_running_pod_by_name(kube: FakeKube) -> None:
    kube.objects["/apis/apps/v1/namespaces/dev/deployments/web"] = deployment({"app": "web"})
    for name, phase, deleting in [("web-c", "Running", False), ("web-a", "Pending", False),
                                  ("web-b", "Running", True), ("web-d", "Running", False)]:
        kube.pods[name] = pod(name, phase, deleting=deleting)
    assert resolve(kube, "deployment/web", None).pod == "web-c"
    assert kube.selectors == ["app=web,tier in (web,api)"]
    with pytest.raises(TargetError, match='deployments.apps "nope" not found'):
        resolve(kube, "deployment/nope", None)


def test_a_workload_without_running_pods_says_which_it_has(kube: FakeKube) -> None:
    kube.objects["/apis/apps/v1/namespaces/dev/deployments/web"] = deployment({"app": "web"})
    kube.pods["web-a"] = pod("web-a", "Pending")
    with pytest.raises(TargetError, match=r"no running pod \(pods: web-a \(Pending\)\)"):
        resolve(kube, "deployment/web", None)


def test_the_container_is_named_annotated_or_the_first_with_a_note(kube: FakeKube) -> None:
    kube.pods["p"] = pod("p", containers=("app", "sidecar"))
    assert resolve(kube, "pod/p/container/sidecar", None).container == "sidecar"
    first = resolve(kube, "pod/p", None)
    assert first.container == "app" and "choose with /container/NAME" in first.note
    kube.pods["p"] = pod("p", containers=("istio-proxy", "app"),
                         annotations={"kubectl.kubernetes.io/default-container": "app"})
    annotated = resolve(kube, "pod/p", None)
    assert (annotated.container, annotated.note) == ("app", "")
    with pytest.raises(TargetError, match="has no container 'db' \\(it has istio-proxy, app\\)"):
        resolve(kube, "pod/p/container/db", None)


def test_forbidden_names_the_verb_and_resource(kube: FakeKube) -> None:
    kube.objects["/apis/apps/v1/namespaces/dev/deployments/web"] = deployment({"app": "web"})
    kube.forbid.add(("list", "pods"))
    with pytest.raises(TargetError) as err:
        resolve(kube, "deployment/web", None)
    assert "RBAC does not let you list pods in namespace dev" in str(err.value)
    assert err.value.hint is not None and "'list' on 'pods'" in err.value.hint


def test_the_agent_runs_as_the_targets_user_with_no_capability_when_known(
        kube: FakeKube) -> None:
    kube.pods["p"] = pod("p", uid=1000, container_uid=1001)
    target = resolve(kube, "pod/p", None)
    assert target.run_as == (1001, 1000)
    ctx = security_context(*target.run_as)
    assert ctx["runAsUser"] == 1001 and ctx["runAsGroup"] == 1000
    assert ctx["capabilities"] == {"drop": ["ALL"]} and not ctx["allowPrivilegeEscalation"]
    for unknown in ((None, None), (0, 0)):
        ctx = security_context(*unknown)
        assert ctx["runAsUser"] == 0 and ctx["capabilities"] == {"add": ["SYS_PTRACE"]}


def test_the_readme_shows_the_role_mirrortrace_really_needs() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "```yaml\n" + role_yaml("dev") + "```" in readme
