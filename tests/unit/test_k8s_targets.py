"""Target resolution against canned API objects (the official client's own models)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from supervisor.errors import TargetError
from supervisor.k8s_api import Kube
from supervisor.k8s_link import security_context
from supervisor.k8s_targets import resolve


def pod(name: str, phase: str = "Running", containers: tuple[str, ...] = ("app",),
        annotations: dict[str, str] | None = None, deleting: bool = False,
        uid: int | None = None, container_uid: int | None = None) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name, annotations=annotations,
            deletion_timestamp=datetime.datetime(2026, 1, 1) if deleting else None),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(
                name=c, security_context=k8s.V1SecurityContext(run_as_user=container_uid)
                if container_uid is not None and c == containers[0] else None)
                for c in containers],
            security_context=k8s.V1PodSecurityContext(run_as_user=uid, run_as_group=uid)
            if uid is not None else None),
        status=k8s.V1PodStatus(phase=phase),
    )


def forbidden() -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"kind": "Status", "message": 'pods is forbidden: User "dev" cannot '
                           'list resource "pods" in API group "" in the namespace "dev"'})
    return exc


class Fake:
    """CoreV1Api/AppsV1Api/BatchV1Api stand-ins answering from dicts."""

    def __init__(self) -> None:
        self.pods: dict[str, k8s.V1Pod] = {}
        self.deployments: dict[str, Any] = {}
        self.selectors: list[str] = []
        self.fail_list: ApiException | None = None

    def read_namespaced_pod(self, name: str, ns: str, **_: Any) -> k8s.V1Pod:
        if name not in self.pods:
            exc = ApiException(status=404, reason="Not Found")
            exc.body = json.dumps({"message": f'pods "{name}" not found'})
            raise exc
        return self.pods[name]

    def list_namespaced_pod(self, ns: str, label_selector: str = "", **_: Any) -> Any:
        if self.fail_list is not None:
            raise self.fail_list
        self.selectors.append(label_selector)
        return k8s.V1PodList(items=list(self.pods.values()))

    def read_namespaced_deployment(self, name: str, ns: str, **_: Any) -> Any:
        return self.deployments[name]


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def kube(fake: Fake) -> Kube:
    return Kube(k8s.Configuration(), None, fake, fake, fake, "dev", "context sim")  # type: ignore


def deployment(labels: dict[str, str]) -> k8s.V1Deployment:
    return k8s.V1Deployment(spec=k8s.V1DeploymentSpec(
        selector=k8s.V1LabelSelector(
            match_labels=labels,
            match_expressions=[k8s.V1LabelSelectorRequirement(key="tier", operator="In",
                                                              values=["web", "api"])]),
        template=k8s.V1PodTemplateSpec()))


def test_a_running_pod_is_its_own_target(fake: Fake, kube: Kube) -> None:
    fake.pods["web-1"] = pod("web-1")
    assert resolve(kube, "pod/web-1", None).pod == "web-1"
    assert resolve(kube, "pod/web-1", "other").namespace == "other"
    fake.pods["done"] = pod("done", phase="Succeeded")
    with pytest.raises(TargetError, match="pod/done in namespace dev is not running"):
        resolve(kube, "pod/done", None)
    with pytest.raises(TargetError, match='pods "gone" not found'):
        resolve(kube, "pod/gone", None)


def test_a_deployment_picks_its_first_running_pod_by_name(fake: Fake, kube: Kube) -> None:
    fake.deployments["web"] = deployment({"app": "web"})
    for name, phase, deleting in [("web-c", "Running", False), ("web-a", "Pending", False),
                                  ("web-b", "Running", True), ("web-d", "Running", False)]:
        fake.pods[name] = pod(name, phase, deleting=deleting)
    assert resolve(kube, "deployment/web", None).pod == "web-c"
    assert fake.selectors == ["app=web,tier in (web,api)"]


def test_a_workload_without_running_pods_says_which_it_has(fake: Fake, kube: Kube) -> None:
    fake.deployments["web"] = deployment({"app": "web"})
    fake.pods["web-a"] = pod("web-a", "Pending")
    with pytest.raises(TargetError, match=r"no running pod \(pods: web-a \(Pending\)\)"):
        resolve(kube, "deployment/web", None)


def test_the_container_is_named_annotated_or_the_first_with_a_note(fake: Fake,
                                                                  kube: Kube) -> None:
    fake.pods["p"] = pod("p", containers=("app", "sidecar"))
    assert resolve(kube, "pod/p/container/sidecar", None).container == "sidecar"
    first = resolve(kube, "pod/p", None)
    assert first.container == "app" and "choose with /container/NAME" in first.note
    fake.pods["p"] = pod("p", containers=("istio-proxy", "app"),
                         annotations={"kubectl.kubernetes.io/default-container": "app"})
    annotated = resolve(kube, "pod/p", None)
    assert (annotated.container, annotated.note) == ("app", "")
    with pytest.raises(TargetError, match="has no container 'db' \\(it has istio-proxy, app\\)"):
        resolve(kube, "pod/p/container/db", None)


def test_forbidden_names_the_verb_and_resource(fake: Fake, kube: Kube) -> None:
    fake.deployments["web"] = deployment({"app": "web"})
    fake.fail_list = forbidden()
    with pytest.raises(TargetError) as err:
        resolve(kube, "deployment/web", None)
    assert "RBAC does not let you list pods in namespace dev" in str(err.value)
    assert "'list' on 'pods'" in err.value.hint


def test_the_agent_runs_as_the_targets_user_with_no_capability_when_known(
        fake: Fake, kube: Kube) -> None:
    fake.pods["p"] = pod("p", uid=1000, container_uid=1001)
    target = resolve(kube, "pod/p", None)
    assert target.run_as == (1001, 1000)
    ctx = security_context(*target.run_as)
    assert ctx["runAsUser"] == 1001 and ctx["runAsGroup"] == 1000
    assert ctx["capabilities"] == {"drop": ["ALL"]} and not ctx["allowPrivilegeEscalation"]
    for unknown in ((None, None), (0, 0)):
        ctx = security_context(*unknown)
        assert ctx["runAsUser"] == 0 and ctx["capabilities"] == {"add": ["SYS_PTRACE"]}


def test_the_readme_shows_the_role_mirrortrace_really_needs() -> None:
    from pathlib import Path

    from supervisor.k8s_access import role_yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "```yaml\n" + role_yaml("dev") + "```" in readme
