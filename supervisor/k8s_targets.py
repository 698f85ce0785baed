"""From `deployment/orders/container/app` to one running pod and one container.

A workload resolves to the pods its selector matches that are running and not
being deleted; the first by name is taken, so two runs against the same
cluster state pick the same pod. The container is the one named, else the
pod's `kubectl.kubernetes.io/default-container` annotation, else the first
(as kubectl does; a note says so when there were several to choose from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervisor.errors import TargetError
from supervisor.k8s_api import Kube

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
# kind -> (API group attribute on Kube, read method, plural for messages)
WORKLOADS = {
    "deployment": ("apps", "read_namespaced_deployment", "deployments"),
    "statefulset": ("apps", "read_namespaced_stateful_set", "statefulsets"),
    "daemonset": ("apps", "read_namespaced_daemon_set", "daemonsets"),
    "job": ("batch", "read_namespaced_job", "jobs"),
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


def resolve(kube: Kube, text: str, namespace: str | None) -> Target:
    ns = namespace or kube.namespace
    if text == "targetless":
        return Target(ns, None, None)
    kind, name, container = parse(text)
    if kind == "pod":
        pod = kube.call("get", "pods", ns, kube.core.read_namespaced_pod, name, ns)
        if not _running(pod):
            phase = pod.status.phase if pod.status else "unknown"
            raise TargetError(f"pod/{name} in namespace {ns} is not running (phase {phase})",
                              "wait for it to start, or target its deployment instead")
    else:
        pod = _pod_of(kube, kind, name, ns)
    chosen, note = _container(pod, container)
    return Target(ns, pod.metadata.name, chosen, note, _run_as(pod, chosen))


def _pod_of(kube: Kube, kind: str, name: str, ns: str) -> Any:
    group, method, plural = WORKLOADS[kind]
    workload = kube.call("get", plural, ns, getattr(getattr(kube, group), method), name, ns)
    selector = _selector(workload)
    if not selector:
        raise TargetError(f"{kind}/{name} in namespace {ns} has no pod selector")
    pods = kube.call("list", "pods", ns, kube.core.list_namespaced_pod, ns,
                     label_selector=selector).items
    running = sorted((p for p in pods if _running(p)), key=lambda p: p.metadata.name)
    if not running:
        seen = ", ".join(f"{p.metadata.name} ({p.status.phase if p.status else '?'})"
                         for p in pods[:5]) or "none"
        raise TargetError(f"{kind}/{name} in namespace {ns} has no running pod (pods: {seen})",
                          f"check it with: kubectl get pods -n {ns} -l {selector}")
    return running[0]


def _selector(workload: Any) -> str:
    sel = workload.spec.selector
    if sel is None:
        return ""
    terms = [f"{k}={v}" for k, v in sorted((sel.match_labels or {}).items())]
    for expr in sel.match_expressions or []:
        op = expr.operator
        values = ",".join(expr.values or [])
        if op == "In":
            terms.append(f"{expr.key} in ({values})")
        elif op == "NotIn":
            terms.append(f"{expr.key} notin ({values})")
        elif op == "Exists":
            terms.append(expr.key)
        elif op == "DoesNotExist":
            terms.append(f"!{expr.key}")
    return ",".join(terms)


def _running(pod: Any) -> bool:
    return (pod.status is not None and pod.status.phase == "Running"
            and pod.metadata.deletion_timestamp is None)


def _container(pod: Any, wanted: str | None) -> tuple[str, str]:
    names = [c.name for c in pod.spec.containers]
    pod_name = pod.metadata.name
    if wanted is not None:
        if wanted not in names:
            raise TargetError(
                f"pod {pod_name} has no container {wanted!r} (it has {', '.join(names)})",
                "name one of those with /container/NAME",
            )
        return wanted, ""
    annotated = (pod.metadata.annotations or {}).get(DEFAULT_CONTAINER)
    if annotated in names:
        return annotated, ""
    if len(names) > 1:
        return names[0], (f"pod {pod_name} has containers {', '.join(names)}; using "
                          f"{names[0]} (choose with /container/NAME)")
    return names[0], ""


def _run_as(pod: Any, container: str) -> tuple[int | None, int | None]:
    """The uid and gid the container runs as, when its spec says (else the image's USER,
    which the API cannot tell us)."""
    uid = gid = None
    pod_ctx = pod.spec.security_context
    if pod_ctx is not None:
        uid, gid = pod_ctx.run_as_user, pod_ctx.run_as_group
    for c in pod.spec.containers:
        if c.name == container and c.security_context is not None:
            uid = c.security_context.run_as_user if c.security_context.run_as_user is not None \
                else uid
            gid = c.security_context.run_as_group \
                if c.security_context.run_as_group is not None else gid
    return uid, gid
