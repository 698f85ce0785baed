"""From `deployment/orders/container/app` to one running pod and one container.

A workload resolves to the pods its selector matches that are running and not
being deleted; the first by name is taken, so two runs against the same
cluster state pick the same pod. The container is the one named, else the
pod's `kubectl.kubernetes.io/default-container` annotation, else the first
(as kubectl does; a note says so when there were several to choose from).
Objects are the API's JSON (supervisor/k8s_api.py says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervisor.errors import TargetError
from supervisor.k8s_api import Kube

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
# kind -> (API path prefix, plural)
WORKLOADS = {
    "deployment": ("/apis/apps/v1", "deployments"),
    "statefulset": ("/apis/apps/v1", "statefulsets"),
    "daemonset": ("/apis/apps/v1", "daemonsets"),
    "job": ("/apis/batch/v1", "jobs"),
}


@dataclass(frozen=True)
class Target:
    namespace: str
    pod: str | None  # None for targetless
    container: str | None
    note: str = ""  # e.g. which container was chosen among several
    run_as: tuple[int | None, int | None] = (None, None)  # the container's uid, gid if set


def parse(text: str) -> tuple[str, str, str | None]:
    """`kind/name[/container/cname]` (already checked by options.check_target)."""
    parts = text.split("/")
    kind, name = parts[0], parts[1]
    container = parts[3] if len(parts) == 4 else None
    return kind, name, container


def get_pod(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = kube.request("get", "pods", ns, "GET",
                                       f"/api/v1/namespaces/{ns}/pods/{name}")
    return pod


def resolve(kube: Kube, text: str, namespace: str | None) -> Target:
    ns = namespace or kube.namespace
    if text == "targetless":
        return Target(ns, None, None)
    kind, name, container = parse(text)
    if kind == "pod":
        pod = get_pod(kube, ns, name)
        if not running(pod):
            phase = pod.get("status", {}).get("phase", "unknown")
            raise TargetError(f"pod/{name} in namespace {ns} is not running (phase {phase})",
                              "wait for it to start, or target its deployment instead")
    else:
        pod = _pod_of(kube, kind, name, ns)
    chosen, note = _container(pod, container)
    return Target(ns, pod["metadata"]["name"], chosen, note, _run_as(pod, chosen))


def _pod_of(kube: Kube, kind: str, name: str, ns: str) -> dict[str, Any]:
    prefix, plural = WORKLOADS[kind]
    workload = kube.request("get", plural, ns, "GET",
                            f"{prefix}/namespaces/{ns}/{plural}/{name}")
    selector = selector_text(workload.get("spec", {}).get("selector"))
    if not selector:
        raise TargetError(f"{kind}/{name} in namespace {ns} has no pod selector")
    pods = kube.request("list", "pods", ns, "GET", f"/api/v1/namespaces/{ns}/pods",
                        query={"labelSelector": selector}).get("items", [])
    ready = sorted((p for p in pods if running(p)), key=lambda p: p["metadata"]["name"])
    if not ready:
        seen = ", ".join(f"{p['metadata']['name']} ({p.get('status', {}).get('phase', '?')})"
                         for p in pods[:5]) or "none"
        raise TargetError(f"{kind}/{name} in namespace {ns} has no running pod (pods: {seen})",
                          f"check it with: kubectl get pods -n {ns} -l {selector}")
    return ready[0]


def selector_text(sel: dict[str, Any] | None) -> str:
    """A LabelSelector as the labelSelector query parameter."""
    if not sel:
        return ""
    terms = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op, key = expr.get("operator"), expr.get("key")
        values = ",".join(expr.get("values") or [])
        if op == "In":
            terms.append(f"{key} in ({values})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({values})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def running(pod: dict[str, Any]) -> bool:
    return (pod.get("status", {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp"))


def _container(pod: dict[str, Any], wanted: str | None) -> tuple[str, str]:
    names = [c["name"] for c in pod["spec"]["containers"]]
    pod_name = pod["metadata"]["name"]
    if wanted is not None:
        if wanted not in names:
            raise TargetError(
                f"pod {pod_name} has no container {wanted!r} (it has {', '.join(names)})",
                "name one of those with /container/NAME",
            )
        return wanted, ""
    annotated = (pod["metadata"].get("annotations") or {}).get(DEFAULT_CONTAINER)
    if annotated in names:
        return annotated, ""
    if len(names) > 1:
        return names[0], (f"pod {pod_name} has containers {', '.join(names)}; using "
                          f"{names[0]} (choose with /container/NAME)")
    return names[0], ""


def _run_as(pod: dict[str, Any], container: str) -> tuple[int | None, int | None]:
    """The uid and gid the container runs as, when its spec says (else the image's USER,
    which the API cannot tell us)."""
    pod_ctx = pod["spec"].get("securityContext") or {}
    uid, gid = pod_ctx.get("runAsUser"), pod_ctx.get("runAsGroup")
    for c in pod["spec"]["containers"]:
        if c["name"] == container:
            ctx = c.get("securityContext") or {}
            uid = ctx.get("runAsUser", uid)
            gid = ctx.get("runAsGroup", gid)
    return uid, gid
