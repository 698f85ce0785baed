"""What mirrortrace asks of the cluster, in one place: the README's Role, `doctor`'s
checks and `ls` all come from here.

Each rule is (API group, resource, verbs, why). `doctor` asks the API server
itself, with SelfSubjectAccessReview, whether the current user may do each
verb, so the answer includes every binding, aggregated role and webhook.
"""

from __future__ import annotations

from typing import Any

from supervisor.k8s_api import Kube

RULES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("", "pods", ("get", "list"), "find the target's pod and watch the agent start"),
    ("", "pods/ephemeralcontainers", ("patch",), "inject the agent next to the target"),
    ("", "pods/attach", ("get", "create"), "reach the agent (websocket attach)"),
    ("", "pods", ("create", "delete"), "targetless: the agent's own short-lived pod"),
    ("apps", "deployments", ("get", "list"), "resolve deployment/NAME and mirrortrace ls"),
    ("apps", "statefulsets", ("get", "list"), "resolve statefulset/NAME"),
    ("apps", "daemonsets", ("get", "list"), "resolve daemonset/NAME"),
    ("batch", "jobs", ("get", "list"), "resolve job/NAME"),
)

LISTED = (  # what `mirrortrace ls` shows, in this order
    ("deployment", "apps", "list_namespaced_deployment", "deployments"),
    ("statefulset", "apps", "list_namespaced_stateful_set", "statefulsets"),
    ("daemonset", "apps", "list_namespaced_daemon_set", "daemonsets"),
    ("job", "batch", "list_namespaced_job", "jobs"),
)


def role_yaml(namespace: str = "dev") -> str:
    """The Role a user needs, as the README shows it."""
    lines = ["apiVersion: rbac.authorization.k8s.io/v1", "kind: Role", "metadata:",
             "  name: mirrortrace", f"  namespace: {namespace}", "rules:"]
    merged: dict[tuple[str, str], list[str]] = {}
    for group, resource, verbs, _ in RULES:
        merged.setdefault((group, resource), []).extend(v for v in verbs)
    for (group, resource), verbs in merged.items():
        lines += [f'- apiGroups: ["{group}"]', f'  resources: ["{resource}"]',
                  "  verbs: [" + ", ".join(f'"{v}"' for v in verbs) + "]"]
    return "\n".join(lines) + "\n"


def targets(kube: Kube, namespace: str) -> list[str]:
    """`kind/name` for every workload and running pod in the namespace."""
    out = []
    for kind, group, method, plural in LISTED:
        items = kube.call("list", plural, namespace,
                          getattr(getattr(kube, group), method), namespace).items
        out += sorted(f"{kind}/{item.metadata.name}" for item in items)
    pods = kube.call("list", "pods", namespace, kube.core.list_namespaced_pod, namespace).items
    out += sorted(f"pod/{p.metadata.name}" for p in pods
                  if p.status is not None and p.status.phase == "Running"
                  and p.metadata.deletion_timestamp is None)
    return out


def access(kube: Kube, namespace: str) -> list[tuple[str, bool, str]]:
    """(verb resource, allowed, why needed) for every rule, asked of the API server."""
    from kubernetes import client

    api = client.AuthorizationV1Api(kube.api)
    out = []
    for group, resource, verbs, why in RULES:
        name, _, sub = resource.partition("/")
        for verb in verbs:
            review: Any = client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        group=group, resource=name, subresource=sub or None, verb=verb,
                        namespace=namespace)))
            answer = kube.call("create", "selfsubjectaccessreviews", None,
                               api.create_self_subject_access_review, review)
            out.append((f"{verb} {resource}", bool(answer.status.allowed), why))
    return out
