"""The agent in the cluster: injected next to the target, reached by `attach`.

An ephemeral container can never be removed, and the kubelet does not kill an
exec'd process when its client goes away; an agent started with `exec` into a
`sleep infinity` holder would outlive every session. So the agent is the
ephemeral container's main process, with stdin open and `stdinOnce`: we reach
it through pods/attach over the same websocket channel protocol, and when the
session ends (or the supervisor is killed and the connection drops) the
kubelet closes its stdin, the agent exits and the container is over. Nothing
is left running. It shares the target container's process namespace
(`targetContainerName`), so `/proc/1` is the target's main process: its root
file system and its environment are what the agent serves.

For `targetless`, the agent is a short-lived pod of its own (the same stdin
rule ends it), deleted when the session ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from agent_image import __version__
from supervisor.errors import AgentStartError, TargetError
from supervisor.k8s_ws import Endpoint, KubeStream, WebsocketError
from supervisor.transport import LineSplitter, LogSink

if TYPE_CHECKING:
    from pathlib import Path

    from agent_image.mux import Channel
    from supervisor.k8s_api import Kube
    from supervisor.k8s_targets import Target

DEFAULT_IMAGE = f"ghcr.io/mirrortrace/agent:{__version__}"
START_TIMEOUT = 120.0  # includes pulling the image the first time
POLL = 0.5  # status polls while the container starts, when RBAC allows no watch
# Waiting reasons that will not get better by waiting.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerError",
            "CreateContainerConfigError", "ErrImageNeverPull"}
AGENT_ARGS = ["--attached"]


@dataclass
class KubeSettings:
    target: str
    namespace: str | None
    context: str | None
    kubeconfig: Path | None
    image: str = DEFAULT_IMAGE
    start_timeout: float = START_TIMEOUT


class KubeLink:
    """AgentLink to an agent injected into the cluster (see the module docstring)."""

    pid: int | None = None  # nothing of ours for the tracer to reap
    # Through the API server and the kubelet a round trip is long (tens of ms to a cloud
    # cluster), and a stream moves one window per round trip: 2 MiB at 30 ms is
    # 70 MB/s. 8 MiB is what the transfer bench needed to stop waiting on credit.
    stream_window: int | None = 8 << 20

    def __init__(self, settings: KubeSettings, notice: Callable[[str], None]) -> None:
        self.settings = settings
        self.notice = notice
        self.session_id = secrets.token_hex(3)
        self.kube: Kube | None = None
        self.target: Target | None = None
        self.pod: str | None = None
        self.container: str | None = None
        self.made_pod = False
        self.stream: KubeStream | None = None
        self._end: str | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._client_loaded = threading.Event()
        self._started = False

    def prepare(self) -> None:
        """Start finding the target and injecting the agent now, in a thread, so the
        cluster's round trips overlap the engine's start-up. Idempotent."""
        if self._started:
            return
        self._started = True
        threading.Thread(target=self._prepare, name="mirrortrace-k8s", daemon=True).start()

    def wait_for_client(self, timeout: float = 5.0) -> None:
        """Until the thread has imported the official client (or failed to).

        Python runs one thread at a time, so the engine's imports, made meanwhile,
        would only delay the client's, which are on the critical path. Once the
        cluster calls are under way the engine loads while we wait for answers and
        for the agent's container, which cost us no CPU.
        """
        self._client_loaded.wait(timeout)

    def _prepare(self) -> None:
        try:
            # Here, in the thread: importing the official client takes a quarter second.
            try:
                from supervisor.k8s_api import connect
                from supervisor.k8s_targets import resolve
            finally:
                self._client_loaded.set()

            s = self.settings
            self.kube = kube = connect(s.kubeconfig, s.context)
            self.target = target = resolve(kube, s.target, s.namespace)
            if target.note:
                self.notice(f"mirrortrace: {target.note}")
            if target.pod is None:
                self._make_pod(kube, target.namespace)
            else:
                self._inject(kube, target)
            self._wait_running(kube, target.namespace)
        except BaseException as exc:  # noqa: BLE001 - handed to open(), which raises it
            self._ready.set_exception(exc)
        else:
            self._ready.set_result(None)

    # --- AgentLink -----------------------------------------------------------------------

    async def open(self, channel: Channel, on_log: LogSink) -> None:
        self.prepare()  # if the CLI has not already
        await asyncio.wrap_future(self._ready)
        kube, target = self.kube, self.target
        assert kube is not None and target is not None
        lines = LineSplitter(on_log)

        def closed(reason: str | None) -> None:
            self._end = reason
            if reason:
                channel.connection_lost(ConnectionError(reason))
            else:
                channel.eof_received()

        try:
            self.stream = await KubeStream.connect(self._endpoint(kube, target),
                                                   channel.data_received, lines.feed, closed)
        except WebsocketError as exc:
            raise AgentStartError(
                f"cannot attach to the agent in pod {self.pod}: {exc}",
                "check that you may create pods/attach (mirrortrace doctor)",
            ) from None
        channel.attach(self.stream)

    def ended_how(self) -> str:
        return f" ({self._end})" if self._end else ""

    async def aclose(self) -> None:
        if self.stream is not None:
            self.stream.close()  # stdin closes: the agent exits, its container ends
            await asyncio.sleep(0)

    def close(self) -> None:
        if self.stream is None and self._started and not self.made_pod:
            # The run ended before attaching (a bad COMMAND, Ctrl-C): an agent injected
            # meanwhile waits for us; attach once and hang up, so it ends now.
            try:
                self._ready.result(timeout=30)
                asyncio.run(self._hang_up())
            except Exception:  # noqa: BLE001 - it ends by itself after ATTACH_WAIT anyway
                pass
        if self.made_pod and self.kube is not None and self.target is not None:
            self.made_pod = False
            ns = self.target.namespace
            try:
                self.kube.request("delete", "pods", ns, "DELETE",
                                  f"/api/v1/namespaces/{ns}/pods/{self.pod}",
                                  query={"gracePeriodSeconds": "0"})
            except TargetError as exc:
                self.notice(f"mirrortrace: could not delete the agent pod {self.pod}: {exc}")

    async def _hang_up(self) -> None:
        kube, target = self.kube, self.target
        if kube is None or target is None or self.pod is None:
            return
        stream = await KubeStream.connect(self._endpoint(kube, target), lambda _: None,
                                          lambda _: None, lambda _: None)
        stream.close()
        await asyncio.sleep(0.1)

    def _endpoint(self, kube: Kube, target: Target) -> Endpoint:
        assert self.pod is not None and self.container is not None
        query = urlencode({"container": self.container, "stdin": "true", "stdout": "true",
                           "stderr": "true", "tty": "false"})
        path = f"/api/v1/namespaces/{target.namespace}/pods/{self.pod}/attach?{query}"
        return Endpoint(kube.configuration.host.rstrip("/") + path, kube.ssl_context(),
                        kube.auth_headers(), kube.server_hostname())

    # --- injection -------------------------------------------------------------------------

    def _container_spec(self, name: str, args: list[str],
                        run_as: tuple[int | None, int | None] = (None, None)
                        ) -> dict[str, Any]:
        return {
            "name": name,
            "image": self.settings.image,
            "imagePullPolicy": "IfNotPresent",
            "args": args,
            "stdin": True,
            "stdinOnce": True,
            "tty": False,
            "securityContext": security_context(*run_as),
        }

    def _inject(self, kube: Kube, target: Target) -> None:
        assert target.pod is not None and target.container is not None
        self.pod = target.pod
        self.container = f"mirrortrace-{self.session_id}"
        spec = self._container_spec(self.container, [*AGENT_ARGS, "--target-pid", "1"],
                                    target.run_as)
        spec["targetContainerName"] = target.container
        body = {"spec": {"ephemeralContainers": [spec]}}
        ns = target.namespace
        kube.request("patch", "pods/ephemeralcontainers", ns, "PATCH",
                     f"/api/v1/namespaces/{ns}/pods/{target.pod}/ephemeralcontainers",
                     body=body, content_type="application/strategic-merge-patch+json")

    def _make_pod(self, kube: Kube, namespace: str) -> None:
        self.pod = f"mirrortrace-agent-{self.session_id}"
        self.container = "agent"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.pod, "labels": {
                "app.kubernetes.io/name": "mirrortrace-agent",
                "app.kubernetes.io/managed-by": "mirrortrace"}},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "containers": [self._container_spec("agent", list(AGENT_ARGS), (65532, 65532))],
            },
        }
        kube.request("create", "pods", namespace, "POST", f"/api/v1/namespaces/{namespace}/pods",
                     body=body)
        self.made_pod = True

    def _wait_running(self, kube: Kube, namespace: str) -> None:
        """Until the agent's container runs; a hopeless wait fails at once with its reason.

        Watched, as kubectl debug does: the first event after the kubelet starts it
        says so, with no polling of the API server through a long image pull. A
        Role without `watch` on pods still works, polled gently instead.
        """
        from supervisor.k8s_api import WatchForbidden
        from supervisor.k8s_targets import get_pod

        deadline = time.monotonic() + self.settings.start_timeout
        state = _StartState()
        name = self.pod or ""
        watch = True
        while True:
            pod = get_pod(kube, namespace, name)
            if self._running(pod, namespace, state):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._start_timeout(namespace, state)
            if not watch:
                time.sleep(min(POLL, left))
                continue
            query = {"fieldSelector": f"metadata.name={name}",
                     "resourceVersion": str(pod.get("metadata", {}).get("resourceVersion", ""))}
            try:
                for event in kube.watch("pods", namespace, f"/api/v1/namespaces/{namespace}/pods",
                                        query=query, timeout=left):
                    obj = event.get("object") or {}
                    if event.get("type") == "DELETED":
                        raise AgentStartError(
                            f"the pod {name} was deleted while the agent was starting",
                            "run again once the workload has a running pod")
                    if event.get("type") in ("ADDED", "MODIFIED") and self._running(
                            obj, namespace, state):
                        return
            except WatchForbidden:
                watch = False  # and poll
            # The watch ended (its timeout, or the server closed it): look again.

    def _running(self, pod: dict[str, Any], namespace: str, state: _StartState) -> bool:
        """Whether the agent's container runs in this version of the pod; raises when it
        never will (ended, or waiting for a reason that waiting does not cure)."""
        key = "containerStatuses" if self.made_pod else "ephemeralContainerStatuses"
        for status in pod.get("status", {}).get(key) or []:
            st = status.get("state") or {}
            if status.get("name") != self.container or not st:
                continue
            if "running" in st:
                return True
            if "terminated" in st:
                t = st["terminated"]
                why = f": {t['message']}" if t.get("message") else ""
                raise AgentStartError(
                    f"the agent container {self.container} in pod {self.pod} ended "
                    f"(exit code {t.get('exitCode')}{why})",
                    f"see its log: kubectl logs -n {namespace} {self.pod} -c {self.container}",
                )
            if "waiting" in st:
                reason = st["waiting"].get("reason") or "waiting"
                message = st["waiting"].get("message")
                state.last = reason + (f": {message}" if message else "")
                if reason in HOPELESS:
                    raise AgentStartError(
                        f"the agent container cannot start in pod {self.pod}: {state.last}",
                        f"check that the cluster can pull {self.settings.image} "
                        "(or give --agent-image)",
                    )
        return False

    def _start_timeout(self, namespace: str, state: _StartState) -> AgentStartError:
        return AgentStartError(
            f"the agent container in pod {self.pod} did not start within "
            f"{self.settings.start_timeout:.0f}s ({state.last})",
            f"look at: kubectl describe pod -n {namespace} {self.pod}",
        )


@dataclass
class _StartState:
    last: str = "not started yet"  # the container's latest waiting reason, for messages


def security_context(uid: int | None, gid: int | None) -> dict[str, Any]:
    """The fewest privileges that let the agent see the target as the target sees itself.

    As the target's own non-root user, /proc/1/root and /proc/1/environ are readable
    without any capability and every file operation is the target's: no capability
    at all. Only when the target's user is unknown (the image's USER) or root does
    the agent run as root, with SYS_PTRACE to read another user's /proc/1, and it
    then switches to the target's credentials for each file operation.
    """
    if uid is not None and uid != 0:
        ctx: dict[str, Any] = {"runAsUser": uid, "runAsNonRoot": True,
                               "allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["ALL"]}}
        if gid is not None:
            ctx["runAsGroup"] = gid
        return ctx
    return {"runAsUser": 0, "runAsNonRoot": False,
            "capabilities": {"add": ["SYS_PTRACE"]}}
