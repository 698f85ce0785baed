"""What mirrortrace asks of the cluster, in one place: the README's Role, `doctor`'s
checks and `ls` all come from here.

Each rule is (API group, resource, verbs, why). `doctor` asks the API server
itself, with SelfSubjectAccessReview, whether the current user may do each
verb, so the answer includes every binding, aggregated role and webhook.
"""

from __future__ import annotations

from supervisor.k8s_api import Kube

RULES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("", "pods", ("get", "list"), "find the target's pod and see the agent's status"),
    ("", "pods", ("watch",), "see the agent start at once (without it: polled every 0.5 s)"),
    ("", "pods/ephemeralcontainers", ("patch",), "inject the agent next to the target"),
    ("", "pods/attach", ("get", "create"), "reach the agent (websocket attach)"),
    ("", "pods", ("create", "delete"), "targetless: the agent's own short-lived pod"),
    ("apps", "deployments", ("get", "list"), "resolve deployment/NAME and mirrortrace ls"),
    ("apps", "statefulsets", ("get", "list"), "resolve statefulset/NAME"),
    ("apps", "daemonsets", ("get", "list"), "resolve daemonset/NAME"),
    ("batch", "jobs", ("get", "list"), "resolve job/NAME"),
)

LISTED = (  # what `mirrortrace ls` shows, in this order: kind, API prefix, plural
    ("deployment", "/apis/apps/v1", "deployments"),
    ("statefulset", "/apis/apps/v1", "statefulsets"),
    ("daemonset", "/apis/apps/v1", "daemonsets"),
    ("job", "/apis/batch/v1", "jobs"),
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
    from supervisor.k8s_targets import running

    out = []
    for kind, prefix, plural in LISTED:
        items = kube.request("list", plural, namespace, "GET",
                             f"{prefix}/namespaces/{namespace}/{plural}").get("items", [])
        out += sorted(f"{kind}/{item['metadata']['name']}" for item in items)
    pods = kube.request("list", "pods", namespace, "GET",
                        f"/api/v1/namespaces/{namespace}/pods").get("items", [])
    out += sorted(f"pod/{p['metadata']['name']}" for p in pods if running(p))
    return out


def access(kube: Kube, namespace: str) -> list[tuple[str, bool, str]]:
    """(verb resource, allowed, why needed) for every rule, asked of the API server."""
    out = []
    for group, resource, verbs, why in RULES:
        name, _, sub = resource.partition("/")
        for verb in verbs:
            attributes = {"group": group, "resource": name, "verb": verb,
                          "namespace": namespace}
            if sub:
                attributes["subresource"] = sub
            review = {"apiVersion": "authorization.k8s.io/v1",
                      "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": attributes}}
            answer = kube.request("create", "selfsubjectaccessreviews", None, "POST",
                                  "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                  body=review)
            out.append((f"{verb} {resource}", bool(answer.get("status", {}).get("allowed")),
                        why))
    return out
