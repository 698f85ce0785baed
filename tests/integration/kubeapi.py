"""A Kubernetes API server test double that speaks the real wire protocols.

mirrortrace reaches a cluster through the API server: REST (discovery, GET/LIST, the
``pods/ephemeralcontainers`` PATCH, pod create/delete) and the exec/attach websocket. This
double serves exactly that, over TLS with bearer-token auth, from a socket that lives in the
simulated cluster's *laptop* network namespace, while its state lives in the pytest process so
a test can add objects, deny verbs and inspect requests in plain Python. It is checked against
the real ``kubectl`` and the official Python client (tests/integration/test_kubeapi.py).

What it plays, and how faithfully:

- ``/version`` says ``v1.30.x`` (the google-cloud-cli kubectl dispatcher then runs
  kubectl 1.30, which speaks websockets for exec). Discovery is served in the legacy form and
  aggregated (``apidiscovery.k8s.io`` v2 and v2beta1, chosen by the Accept header).
- GET/LIST (``labelSelector``, ``fieldSelector`` on metadata.name/namespace and status.phase,
  ``watch=true`` streams) for namespaces, pods, deployments, replicasets, statefulsets,
  daemonsets, jobs; the server-side ``Table`` kubectl asks for. List items carry no
  kind/apiVersion, as on a real server.
- Errors are ``Status`` objects with the real reasons and messages: 401 Unauthorized, 403
  Forbidden after :meth:`KubeDouble.deny` (worded like RBAC's), 404 NotFound, 422 Invalid.
- ``PATCH pods/NAME/ephemeralcontainers`` (strategic-merge, merge and JSON patch) appends
  ephemeral containers, never removes or changes one (422, as the real validation), and
  "starts" each: no status at first (the PATCH answer has none, as the kubelet adds it later),
  then waiting ContainerCreating, then a real process and running{startedAt},
  terminated{exitCode} when it exits; an image made unpullable stays waiting ImagePullBackOff.
  ``POST pods`` / ``DELETE pods`` do the same for a whole pod (the targetless agent pod).
- exec and attach over websockets (RFC 6455, binary channel frames), subprotocols
  ``v5.channel.k8s.io`` (client closes stdin with ``[255, 0]``) and ``v4.channel.k8s.io``;
  an empty first message on the lowest output channel, the final Status on channel 3, then a
  close frame, as the 1.30+ API server's stream translator does. exec runs the command in the
  pod's network namespace. An exec'd process is NOT killed when the client goes away (neither
  is a real one); every process the double started dies at :meth:`KubeDouble.close`.
- attach relays the container process's stdio from the moment of attaching: what a container
  writes while nobody is attached goes only to its log (``GET .../log``,
  :meth:`KubeDouble.logs`), as with containerd. With ``stdinOnce`` the container's stdin gets
  EOF when the first attach session closes stdin or ends.
- SPDY (``POST`` with ``Upgrade: SPDY/3.1`` or ``X-Stream-Protocol-Version``) is refused with
  a 400 Status and recorded in :attr:`KubeDouble.spdy_requests`: kubectl >= 1.30 silently
  falls back to SPDY when a websocket upgrade fails, and tests must notice.
- Authorization of the exec/attach websocket GET needs both ``get`` and ``create`` on
  ``pods/exec`` (``pods/attach``): 1.30 checks ``get`` only, 1.35 adds ``create``
  (AuthorizePodWebsocketUpgradeCreatePermission); a Role that passes here passes on both.

Not modelled: pagination (``limit`` is ignored), PUT, watch bookmarks and 410 Gone (a watch
starts at a given resourceVersion, or with synthetic ADDED events), PID namespaces
(``targetContainerName`` is stored, not enforced), container restarts (a container of a
``restartPolicy: Always`` pod that exits shows CrashLoopBackOff and is not restarted), TTYs.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from cluster import POD_IP, SAFE_PATH, Cluster

T = TypeVar("T")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
DISCOVERY_TYPE = "application/json;g=apidiscovery.k8s.io"
SUPPORTED_SUBPROTOCOLS = (V5, V4)
STREAM_CLOSE = 255  # v5: the client sends [255, channel] to close one of its streams
NODE = "sim-node-1"
HOST_IP = "198.18.0.1"
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names

# ---------------------------------------------------------------------------- resources

SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass(frozen=True)
class Resource:
    group: str
    name: str  # plural
    kind: str
    singular: str
    namespaced: bool = True
    short: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = (
        "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch",
    )  # fmt: skip
    # subresource -> (response kind, verbs)
    subresources: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified(self) -> str:
        """``pods``, ``deployments.apps``: how the API server names it in messages."""
        return f"{self.name}.{self.group}" if self.group else self.name


_STATUS_SUB = ("status", "", ("get", "patch", "update"))
_SCALE_SUB = ("scale", "Scale", ("get", "patch", "update"))
RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("", "namespaces", "Namespace", "namespace", namespaced=False, short=("ns",),
                 verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
                 subresources=(("finalize", "Namespace", ("update",)), _STATUS_SUB)),
        Resource("", "pods", "Pod", "pod", short=("po",), categories=("all",), subresources=(
            ("attach", "PodAttachOptions", ("create", "get")),
            ("ephemeralcontainers", "Pod", ("get", "patch", "update")),
            ("exec", "PodExecOptions", ("create", "get")),
            ("log", "Pod", ("get",)),
            _STATUS_SUB,
        )),
        Resource("apps", "deployments", "Deployment", "deployment", short=("deploy",),
                 categories=("all",), subresources=(_SCALE_SUB, _STATUS_SUB)),
        Resource("apps", "replicasets", "ReplicaSet", "replicaset", short=("rs",),
                 categories=("all",), subresources=(_SCALE_SUB, _STATUS_SUB)),
        Resource("apps", "statefulsets", "StatefulSet", "statefulset", short=("sts",),
                 categories=("all",), subresources=(_SCALE_SUB, _STATUS_SUB)),
        Resource("apps", "daemonsets", "DaemonSet", "daemonset", short=("ds",),
                 categories=("all",), subresources=(_STATUS_SUB,)),
        Resource("batch", "jobs", "Job", "job", categories=("all",),
                 subresources=(_STATUS_SUB,)),
    )
}  # fmt: skip
GROUPS = {"": "/api/v1", "apps": "/apis/apps/v1", "batch": "/apis/batch/v1"}


def _sub_kind(res: Resource, sub: str) -> str:
    return next(k for s, k, _ in res.subresources if s == sub) or res.kind


def legacy_resource_list(group: str) -> dict[str, Any]:
    """``APIResourceList`` for ``/api/v1`` or ``/apis/GROUP/v1``."""
    items: list[dict[str, Any]] = []
    for res in RESOURCES.values():
        if res.group != group:
            continue
        entry: dict[str, Any] = {
            "name": res.name, "singularName": res.singular, "namespaced": res.namespaced,
            "kind": res.kind, "verbs": list(res.verbs),
        }  # fmt: skip
        if res.short:
            entry["shortNames"] = list(res.short)
        if res.categories:
            entry["categories"] = list(res.categories)
        items.append(entry)
        for sub, _kind, verbs in res.subresources:
            items.append({
                "name": f"{res.name}/{sub}", "singularName": "", "namespaced": res.namespaced,
                "kind": _sub_kind(res, sub), "verbs": list(verbs),
            })  # fmt: skip
    gv = f"{group}/v1" if group else "v1"
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items}


def aggregated_discovery(core: bool, version: str) -> dict[str, Any]:
    """``APIGroupDiscoveryList`` (apidiscovery.k8s.io ``version``) for ``/api`` or ``/apis``."""
    groups = [""] if core else ["apps", "batch"]
    items = []
    for group in groups:
        resources = []
        for res in RESOURCES.values():
            if res.group != group:
                continue
            gvk = {"group": group, "version": "v1", "kind": res.kind}
            entry: dict[str, Any] = {
                "resource": res.name, "responseKind": gvk,
                "scope": "Namespaced" if res.namespaced else "Cluster",
                "singularResource": res.singular, "verbs": list(res.verbs),
            }  # fmt: skip
            if res.short:
                entry["shortNames"] = list(res.short)
            if res.categories:
                entry["categories"] = list(res.categories)
            entry["subresources"] = [
                {"subresource": sub, "responseKind": {**gvk, "kind": _sub_kind(res, sub)},
                 "verbs": list(verbs)}
                for sub, _kind, verbs in res.subresources
            ]  # fmt: skip
            resources.append(entry)
        meta = {"name": group} if group else {"creationTimestamp": None}
        items.append({
            "metadata": meta,
            "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
        })
    return {
        "kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {}, "items": items,
    }  # fmt: skip


# ---------------------------------------------------------------------------- small helpers

def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str | None) -> str:
    """Like kubectl's ``translateTimestampSince`` (k8s.io/apimachinery duration.HumanDuration)."""
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    secs = max(0, int((datetime.now(UTC) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def generated_suffix(seed: str, n: int = 5) -> str:
    """A deterministic name suffix in the alphabet Kubernetes uses for generated names."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_NAME_ALPHABET[b % len(_NAME_ALPHABET)] for b in digest[:n])


def status_object(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A ``metav1.Status`` failure as the API server writes it."""
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
    }  # fmt: skip
    if details:
        body["details"] = details
    body["code"] = code
    return body


class ApiError(Exception):
    """An error answer: raised inside a handler, written as a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status = status_object(code, reason, message, details)
        self.code = code


def not_found(res: Resource, name: str) -> ApiError:
    details = {"name": name, "kind": res.name}
    if res.group:
        details["group"] = res.group
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', details)


_LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def enter_netns(netns: str) -> None:
    """Move the CALLING THREAD into network namespace ``netns`` (setns(2) is per thread)."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a short-lived thread inside ``netns``; sockets it makes stay there."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(netns)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller, re-raised there
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"in-netns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---------------------------------------------------------------------------- selectors

_SEL_SET = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label selector syntax: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
    ``a notin (x)``, ``a``, ``!a``."""
    for req in _split_selector(selector):
        if m := _SEL_SET.match(req):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and key in labels and labels[key] in values:
                return False
        elif "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in req:
            key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


def field_selector_matches(selector: str, obj: dict[str, Any]) -> bool:
    for req in _split_selector(selector):
        neg = "!=" in req
        key, value = (s.strip() for s in req.replace("==", "=").replace("!=", "=").split("=", 1))
        actual: Any = obj
        for part in key.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (str(actual) == value if actual is not None else value == "") == neg:
            return False
    return True


# ---------------------------------------------------------------------------- patches

# Lists merged by key in a strategic merge patch (patchMergeKey in k8s.io/api core/v1).
_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "ownerReferences": "uid", "conditions": "type", "imagePullSecrets": "name",
}  # fmt: skip


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """The parts of Kubernetes' strategic merge patch the double's clients send: maps merge,
    lists with a merge key merge by it, ``$setElementOrder``/``$retainKeys`` are ignored,
    ``$patch: delete|replace`` honoured."""
    if isinstance(patch, list) and isinstance(target, list) and key in _MERGE_KEYS:
        mkey = _MERGE_KEYS[key]
        result = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict):
                continue
            idx = next((i for i, o in enumerate(result) if o.get(mkey) == item.get(mkey)), None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    result.pop(idx)
            elif idx is None:
                result.append({k: v for k, v in item.items() if not k.startswith("$")})
            else:
                result[idx] = strategic_merge_patch(result[idx], item)
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, value in patch.items():
        if k.startswith("$"):
            continue
        if value is None:
            result.pop(k, None)
        else:
            result[k] = strategic_merge_patch(result.get(k), value, k)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, copy, move)."""
    doc = copy.deepcopy(target)

    def walk(parts: list[str]) -> tuple[Any, str]:
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node = doc
        for part in _pointer(path):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def remove(path: str) -> Any:
        parent, last = walk(_pointer(path))
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    def add(path: str, value: Any) -> None:
        parent, last = walk(_pointer(path))
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    try:
        for op in ops:
            kind, path = op["op"], op["path"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"the JSON patch test at {path} failed")
            elif kind in ("copy", "move"):
                value = get(op["from"]) if kind == "copy" else remove(op["from"])
                add(path, copy.deepcopy(value))
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch operation {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc!r}") from exc
    return doc


# ---------------------------------------------------------------------------- websocket

def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (servers never mask: RFC 6455 section 5.1)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    # One big-integer XOR runs in C: a 1 MiB frame costs milliseconds, not a Python loop.
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class WebSocket:
    """The server side of one websocket over a TLS socket, carrying k8s channel messages.

    One thread (the HTTP handler's, in :meth:`run`) owns the socket: an OpenSSL connection
    must not be read and written from two threads at once. Other threads queue outgoing
    messages with :meth:`send` (which blocks while more than ``HIGH_WATER`` bytes wait, so a
    fast process cannot outrun a slow client) and wake the loop through a pipe.
    """

    HIGH_WATER = 8 << 20
    CLOSE_WAIT = 5.0  # after our close frame, how long to wait for the client's

    def __init__(self, sock: ssl.SSLSocket, subprotocol: str) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self.on_message: Callable[[int, bytes], None] = lambda ch, data: None
        self.can_receive: Callable[[], bool] = lambda: True  # inbound flow control
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._sent_close_at: float | None = None
        self._closing = False  # a close frame is queued or sent
        self.closed = threading.Event()  # the loop has ended
        self.client_closed = False
        self._inbuf = bytearray()
        self._fragments: list[bytes] = []

    def wake(self) -> None:
        with self._cond:  # never write to the pipe's fd once run() closed it (fds get reused)
            if not self.closed.is_set():
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")

    def send(self, channel: int, data: bytes) -> bool:
        """Queue ``[channel] + data`` as one binary message; False once the socket is done."""
        return self._queue(_ws_frame(0x2, bytes([channel]) + data))

    def _queue(self, frame: bytes, *, close: bool = False, block: bool = True) -> bool:
        """Queue a frame; ``block=False`` for the loop thread itself (pongs, close replies),
        which must never wait for the buffer it alone drains."""
        with self._cond:
            while block and self._out_bytes > self.HIGH_WATER and not self.closed.is_set():
                self._cond.wait(0.5)
            if self.closed.is_set() or self._closing:
                return False
            self._out.append(frame)
            self._out_bytes += len(frame)
            if close:
                self._closing = True
        self.wake()
        return True

    def finish(self, status: dict[str, Any] | None, code: int = 1000) -> None:
        """Send the final Status on channel 3 (if any), then a close frame."""
        if status is not None:
            self.send(3, json.dumps(status, separators=(",", ":")).encode())
        self._queue(_ws_frame(0x8, struct.pack("!H", code)), close=True)

    def run(self) -> None:
        """Serve the socket until the close handshake ends or the connection drops."""
        sock = self.sock
        sock.setblocking(False)
        chunk: bytes | None = None  # an SSL write must be retried with the same bytes
        chunk_len = 0
        try:
            while True:
                if self._sent_close_at and time.monotonic() - self._sent_close_at > self.CLOSE_WAIT:
                    return
                if chunk is None:
                    with self._cond:
                        if self._out:
                            chunk = self._out.popleft()
                            while self._out and len(chunk) < 256 << 10:
                                chunk += self._out.popleft()
                            chunk_len = len(chunk)
                want_read = self.can_receive()
                if want_read and sock.pending():
                    readable, writable = True, chunk is not None
                else:
                    rlist = [self._wake_r] + ([sock] if want_read else [])
                    wlist = [sock] if chunk is not None else []
                    r, w, _ = select.select(rlist, wlist, [], 0.5)
                    if self._wake_r in r:
                        os.read(self._wake_r, 4096)
                    readable, writable = sock in r, sock in w
                if writable and chunk is not None:
                    try:
                        sent = sock.send(chunk)
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                        sent = 0
                    if sent:
                        if sent < len(chunk):
                            chunk = chunk[sent:]
                        else:
                            with self._cond:
                                self._out_bytes -= chunk_len
                                self._cond.notify_all()
                            if self._closing and not self._out and self._sent_close_at is None:
                                self._sent_close_at = time.monotonic()
                            chunk = None
                            if self.client_closed and self._closing and not self._out:
                                return
                if readable:
                    try:
                        data = sock.recv(256 << 10)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        continue
                    if not data:
                        return
                    self._inbuf += data
                    if not self._parse():
                        return
        except (OSError, ssl.SSLError):
            return
        finally:
            with self._cond:
                self.closed.set()
                self._cond.notify_all()
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _parse(self) -> bool:
        """Consume complete frames from the input buffer; False when the connection is over."""
        buf = self._inbuf
        pos = 0
        try:
            while len(buf) - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                opcode, length, head = b0 & 0x0F, b1 & 0x7F, 2
                if not b1 & 0x80:
                    self._protocol_error(1002)  # clients must mask (RFC 6455 5.1)
                    return True
                if length == 126:
                    if len(buf) - pos < 4:
                        break
                    (length,) = struct.unpack_from("!H", buf, pos + 2)
                    head = 4
                elif length == 127:
                    if len(buf) - pos < 10:
                        break
                    (length,) = struct.unpack_from("!Q", buf, pos + 2)
                    head = 10
                if len(buf) - pos < head + 4 + length:
                    break
                mask = bytes(buf[pos + head : pos + head + 4])
                start = pos + head + 4
                payload = _unmask(mask, bytes(buf[start : start + length]))
                pos = start + length
                if not self._frame(b0 & 0x80 != 0, opcode, payload):
                    return False
        finally:
            del buf[:pos]
        return True

    def _protocol_error(self, code: int) -> None:
        self._inbuf.clear()
        self._queue(_ws_frame(0x8, struct.pack("!H", code)), close=True, block=False)

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> bool:
        if opcode == 0x8:  # close: answer it (once) and end when it is out
            self.client_closed = True
            if not self._closing:
                code = payload[:2] if len(payload) >= 2 else struct.pack("!H", 1000)
                self._queue(_ws_frame(0x8, code), close=True, block=False)
                return True
            return not self._sent_close_at and bool(self._out)
        if opcode == 0x9:  # ping
            self._queue(_ws_frame(0xA, payload), block=False)
            return True
        if opcode == 0xA:
            return True
        if opcode in (0x1, 0x2) or (opcode == 0x0 and self._fragments):
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments = []
                if message and not self._closing:
                    self.on_message(message[0], message[1:])
            return True
        self._protocol_error(1002)
        return True


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


# ---------------------------------------------------------------------------- processes

class Process:
    """A process the double started, with its stdio relayed.

    stdin is fed by a writer thread from a queue (:meth:`write_stdin`, :meth:`close_stdin`);
    stdout (channel 1) and stderr (2) are read by threads that hand each chunk to every
    listener present at that moment and append it to :attr:`log`. :attr:`done` is set once
    both outputs reached EOF and the process was reaped.
    """

    LOG_LIMIT = 4 << 20

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        cwd: str | None = None,
        listener: Callable[[int, bytes], None] | None = None,
    ) -> None:
        """Start ``argv``; ``listener`` (if any) hears its output from the first byte."""
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=cwd, start_new_session=True, bufsize=0,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.log = bytearray()
        self.returncode: int | None = None
        self.done = threading.Event()
        self._listeners: list[Callable[[int, bytes], None]] = [listener] if listener else []
        self._wakers: list[Callable[[], None]] = []
        self._on_done: list[Callable[[Process], None]] = []
        self._stdin: deque[bytes | None] = deque()
        self._stdin_bytes = 0
        self._cond = threading.Condition()
        self._open_outputs = 2
        self.stdin_closed = False
        for target, args in (
            (self._read, (1,)), (self._read, (2,)), (self._write_stdin, ()),
        ):  # fmt: skip
            threading.Thread(target=target, args=args, daemon=True, name=f"proc-{self.pid}").start()

    # -- stdin
    def write_stdin(self, data: bytes) -> None:
        with self._cond:
            if self.stdin_closed:
                return
            self._stdin.append(data)
            self._stdin_bytes += len(data)
            self._cond.notify_all()

    def close_stdin(self) -> None:
        with self._cond:
            if not self.stdin_closed:
                self.stdin_closed = True
                self._stdin.append(None)
                self._cond.notify_all()

    def stdin_backlog(self) -> int:
        return self._stdin_bytes

    def _write_stdin(self) -> None:
        assert self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        broken = False
        while True:
            with self._cond:
                while not self._stdin:
                    self._cond.wait()
                item = self._stdin.popleft()
                if item is not None:
                    self._stdin_bytes -= len(item)
            for cb in list(self._wakers):
                cb()  # the stdin backlog shrank: a socket paused on it may read again
            if item is None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
                return
            view = memoryview(item)
            while view and not broken:
                try:
                    view = view[os.write(fd, view) :]
                except OSError:  # EPIPE: the process closed stdin; drop what comes
                    broken = True

    def add_waker(self, cb: Callable[[], None]) -> None:
        """``cb`` runs whenever the stdin backlog shrinks (to resume reading a socket)."""
        self._wakers.append(cb)

    def remove_waker(self, cb: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._wakers.remove(cb)

    # -- output
    def add_listener(self, cb: Callable[[int, bytes], None]) -> None:
        with self._cond:
            self._listeners.append(cb)

    def remove_listener(self, cb: Callable[[int, bytes], None]) -> None:
        with self._cond:
            with contextlib.suppress(ValueError):
                self._listeners.remove(cb)

    def on_done(self, cb: Callable[[Process], None]) -> None:
        """Run ``cb(self)`` once the process is over (at once if it already is)."""
        with self._cond:
            if not self.done.is_set():
                self._on_done.append(cb)
                return
        cb(self)

    def _read(self, channel: int) -> None:
        pipe = self.proc.stdout if channel == 1 else self.proc.stderr
        assert pipe is not None
        fd = pipe.fileno()
        while True:
            try:
                data = os.read(fd, 64 << 10)
            except OSError:
                data = b""
            if not data:
                break
            with self._cond:
                listeners = list(self._listeners)
                if len(self.log) < self.LOG_LIMIT:
                    self.log += data[: self.LOG_LIMIT - len(self.log)]
            for cb in listeners:
                cb(channel, data)
        pipe.close()
        with self._cond:
            self._open_outputs -= 1
            last = self._open_outputs == 0
        if last:
            rc = self.proc.wait()
            self.returncode = 128 - rc if rc < 0 else rc  # signal N -> 128+N, as runtimes say
            with self._cond:
                self.done.set()
                callbacks, self._on_done = self._on_done, []
            for cb in callbacks:
                cb(self)

    def kill(self) -> None:
        """SIGKILL the process group (``ip netns exec`` execs, so the pid is the command's)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.close_stdin()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)


# ---------------------------------------------------------------------------- records

@dataclass
class PodRecord:
    """A pod the double holds: its object (``obj``, live: read it under ``kube.lock``), the
    network namespace that plays it, an optional root directory, and the processes started for
    its containers (by container name, regular and ephemeral alike)."""

    obj: dict[str, Any]
    netns: str
    root: Path | None = None
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.obj["metadata"]["namespace"]

    def container(self, name: str) -> dict[str, Any] | None:
        spec = self.obj["spec"]
        for c in [*spec.get("containers", []), *spec.get("ephemeralContainers", [])]:
            if c.get("name") == name:
                return c
        return None

    def status_of(self, name: str) -> dict[str, Any] | None:
        status = self.obj["status"]
        for key in ("containerStatuses", "ephemeralContainerStatuses"):
            for st in status.get(key, []):
                if st.get("name") == name:
                    return st
        return None


@dataclass
class RequestRecord:
    """One request the double answered (``status`` 101 for an accepted websocket)."""

    method: str
    path: str
    query: str
    user_agent: str
    status: int = 0
    accept: str = ""
    content_type: str = ""
    subprotocol: str = ""  # the websocket subprotocol chosen, if upgraded
    upgrade: str = ""  # the Upgrade header, if any


@dataclass
class ExecRecord:
    """One exec session: which pod and container, the command, its process."""

    namespace: str
    pod: str
    container: str
    command: list[str]
    subprotocol: str
    process: Process


# ---------------------------------------------------------------------------- the double

class KubeDouble:
    """The API server double; see the module docstring. One per test session (``kube``).

    Attributes: ``server`` (``https://127.0.0.1:PORT``, reachable in ``listen_netns``, by
    default the cluster's laptop namespace), ``port``, ``token``, ``user``, ``namespace`` (the
    kubeconfig context's), ``kubeconfig`` and ``ca_cert`` (world-readable Paths), ``version``,
    ``tmp``, ``lock``; records ``requests`` and ``spdy_requests`` (RequestRecord lists),
    ``execs`` (ExecRecord list).
    Hooks: ``container_argv(pod, spec) -> argv``, ``exec_argv(pod, container, command) ->
    argv``, ``images`` (image -> entrypoint for specs without a command), ``unpullable``
    (image -> pull error; see :meth:`make_unpullable`), ``start_delay`` (seconds in each
    container state), ``default_netns`` (plays new pods), ``ws_requires_create``.
    Helpers: ``add_namespace``, ``add_pod``, ``add_deployment``, ``add_statefulset``,
    ``add_daemonset``, ``add_job``, ``get``, ``pod``, ``pods``, ``container_status``, ``logs``,
    ``deny``/``allow``, ``make_unpullable``, ``wait_for``, ``in_laptop``, ``reset``, ``close``.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        namespace: str = "dev",
        version: str = "v1.30.14",
        user: str = "system:serviceaccount:dev:mirrortrace-tester",
        listen_netns: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.version = version
        self.user = user
        self.token = uuid.uuid4().hex
        self.listen_netns = listen_netns or cluster.laptop_ns
        self.default_netns = cluster.pod_ns
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._rv = 1000
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], PodRecord] = {}
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, type, resource, obj
        self._denied: set[tuple[str, str, str | None]] = set()
        self.unpullable: dict[str, str] = {}
        self.images: dict[str, list[str]] = {}  # image -> entrypoint, for specs without command
        self.start_delay = 0.1
        self.ws_requires_create = True
        self.container_argv: Callable[[PodRecord, dict[str, Any]], list[str]] = (
            self.default_container_argv
        )
        self.exec_argv: Callable[[PodRecord, str, list[str]], list[str]] = self.default_exec_argv
        self.requests: list[RequestRecord] = []
        self.spdy_requests: list[RequestRecord] = []
        self.execs: list[ExecRecord] = []
        self._processes: list[Process] = []
        self._connections: set[socket.socket] = set()
        self._closed = False
        # Inside the cluster's directory: removed with it, also by the sweep after a crash.
        self.tmp = Path(tempfile.mkdtemp(prefix="kubeapi-", dir=cluster.tmp))
        os.chmod(self.tmp, 0o755)
        try:
            self.ca_cert, cert, key = self._make_certs()
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl.load_cert_chain(cert, key)
            self._ssl.set_alpn_protocols(["http/1.1"])  # no h2: the handler speaks HTTP/1.1
            listener = in_netns(self.listen_netns, self._listen)
            self.port = listener.getsockname()[1]
            self.server = f"https://127.0.0.1:{self.port}"
            self._httpd = _Server(self, listener)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                daemon=True, name="kubeapi",
            )  # fmt: skip
            self._thread.start()
            self.kubeconfig = self._write_kubeconfig()
            self.add_namespace("default")
            self.add_namespace(namespace)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> KubeDouble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, kill every process the double started, remove its files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._changed:
            self._changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._kill_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _kill_all(self) -> None:
        procs, self._processes = self._processes, []
        for p in procs:
            p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(timeout=5)

    def reset(self) -> None:
        """Back to an empty cluster (namespaces ``default`` and the context's), default hooks,
        no denials, empty logs; kills the processes started so far."""
        with self.lock:
            self._objects.clear()
            self._pods.clear()
            self._events.clear()
            self._denied.clear()
            self.unpullable.clear()
            self.images.clear()
            self.requests.clear()
            self.spdy_requests.clear()
            self.execs.clear()
            self.container_argv = self.default_container_argv
            self.exec_argv = self.default_exec_argv
            self.start_delay = 0.1
            self.ws_requires_create = True
            self.default_netns = self.cluster.pod_ns
        self._kill_all()
        self.add_namespace("default")
        self.add_namespace(self.namespace)

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        return sock

    def _make_certs(self) -> tuple[Path, Path, Path]:
        """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
        if not shutil.which("openssl"):
            raise RuntimeError("the kube API double needs the openssl program (apt-get install "
                               "openssl)")  # fmt: skip
        d = self.tmp
        ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr",
                                                       "tls.crt"))  # fmt: skip
        ext = d / "ext.cnf"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for argv in (
            ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=mirrortrace-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver"],
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-out", cert,
             "-days", "2", "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
             "-extfile", ext],
        ):  # fmt: skip
            proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"openssl failed: {' '.join(map(str, argv))}\n{proc.stderr}")
        os.chmod(ca, 0o644)
        return ca, cert, key

    def _write_kubeconfig(self) -> Path:
        ca_data = base64.b64encode(self.ca_cert.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sim", "cluster": {
                "server": self.server, "certificate-authority-data": ca_data}}],
            "users": [{"name": "sim-user", "user": {"token": self.token}}],
            "contexts": [{"name": "sim", "context": {
                "cluster": "sim", "user": "sim-user", "namespace": self.namespace}}],
            "current-context": "sim",
            "preferences": {},
        }  # fmt: skip
        path = self.tmp / "kubeconfig"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML: every client reads it
        os.chmod(path, 0o644)
        return path

    def in_laptop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a thread inside the laptop namespace, where the double listens (a
        Python client made and used there reaches ``kube.server``)."""
        return in_netns(self.listen_netns, fn, *args, **kwargs)

    # ------------------------------------------------------------------ state helpers

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def _notify(self, etype: str, resource: str, obj: dict[str, Any]) -> None:
        """Record a change (caller holds the lock) and wake watchers."""
        self._events.append((self._rv, etype, resource, copy.deepcopy(obj)))
        del self._events[:-2000]
        self._changed.notify_all()

    def _store(self, resource: str, obj: dict[str, Any], etype: str = "ADDED") -> dict[str, Any]:
        with self.lock:
            meta = obj["metadata"]
            self._bump(obj)
            self._objects[(resource, meta.get("namespace", ""), meta["name"])] = obj
            self._notify(etype, resource, obj)
            return obj

    def _touch(self, resource: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self._bump(obj)
            self._notify("MODIFIED", resource, obj)

    def _meta(self, ns: str | None, name: str, labels: dict | None = None,
              annotations: dict | None = None) -> dict[str, Any]:  # fmt: skip
        meta: dict[str, Any] = {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": now()}
        if ns:
            meta = {"name": name, "namespace": ns, **{k: v for k, v in meta.items() if k != "name"}}
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        meta["generation"] = 1
        return meta

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any]:
        """A deep copy of an object (``resource`` is the plural: pods, deployments, ...)."""
        with self.lock:
            obj = self._objects.get((resource, ns if RESOURCES[resource].namespaced else "", name))
            if obj is None:
                raise KeyError(f"{resource} {ns}/{name}")
            return copy.deepcopy(obj)

    def pod(self, ns: str, name: str) -> PodRecord:
        with self.lock:
            return self._pods[(ns, name)]

    def pods(self, ns: str | None = None) -> list[PodRecord]:
        with self.lock:
            return [r for (n, _), r in sorted(self._pods.items()) if ns is None or n == ns]

    def container_status(self, ns: str, pod: str, container: str) -> dict[str, Any] | None:
        """A copy of a container's status entry (regular or ephemeral), or None."""
        with self.lock:
            st = self._pods[(ns, pod)].status_of(container)
            return copy.deepcopy(st)

    def logs(self, ns: str, pod: str, container: str) -> bytes:
        """Everything the container's process wrote so far (stdout and stderr)."""
        with self.lock:
            proc = self._pods[(ns, pod)].processes.get(container)
        return bytes(proc.log) if proc else b""

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
        """Poll ``predicate`` until it returns something truthy; raise TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or predicate}")
            time.sleep(0.02)

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Make ``verb`` on ``resource`` (``pods``, ``pods/exec``, ``deployments``, ...) fail
        with 403 Forbidden, as a missing RBAC rule would; ``namespace`` None means everywhere."""
        self._denied.add((verb, resource.split(".")[0], namespace))

    def allow(self, verb: str, resource: str, namespace: str | None = None) -> None:
        self._denied.discard((verb, resource.split(".")[0], namespace))

    def make_unpullable(self, image: str, message: str | None = None) -> None:
        """Containers with ``image`` never start: waiting ErrImagePull, then ImagePullBackOff."""
        self.unpullable[image] = message or (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
            f"failed to resolve reference \"{image}\": not found"
        )

    # ------------------------------------------------------------------ adding objects

    def add_namespace(self, name: str) -> dict[str, Any]:
        with self.lock:
            if ("namespaces", "", name) in self._objects:
                return self._objects[("namespaces", "", name)]
            meta = self._meta(None, name, labels={"kubernetes.io/metadata.name": name})
            obj = {"kind": "Namespace", "apiVersion": "v1", "metadata": meta,
                   "spec": {"finalizers": ["kubernetes"]},
                   "status": {"phase": "Active"}}  # fmt: skip
            return self._store("namespaces", obj)

    @staticmethod
    def _container_spec(c: str | dict[str, Any]) -> dict[str, Any]:
        spec = {"name": c} if isinstance(c, str) else dict(c)
        spec.setdefault("image", f"registry.example/{spec['name']}:1.0")
        spec.setdefault("imagePullPolicy", "IfNotPresent")
        spec.setdefault("resources", {})
        spec.setdefault("terminationMessagePath", "/dev/termination-log")
        spec.setdefault("terminationMessagePolicy", "File")
        return spec

    def _owner_ref(self, ns: str, owner: tuple[str, str]) -> dict[str, Any]:
        kind, name = owner
        res = next(r for r in RESOURCES.values() if r.kind == kind)
        try:
            uid = self.get(res.name, ns, name)["metadata"]["uid"]
        except KeyError:
            uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{ns}/{name}"))
        return {"apiVersion": res.api_version, "kind": kind, "name": name, "uid": uid,
                "controller": True, "blockOwnerDeletion": True}  # fmt: skip

    def add_pod(
        self,
        ns: str,
        name: str,
        containers: list[str | dict[str, Any]] | None = None,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        phase: str = "Running",
        owner: tuple[str, str] | None = None,
        netns: str | None = None,
        root: str | os.PathLike[str] | None = None,
        start: bool = False,
    ) -> PodRecord:
        """Add a pod (containers: names or container specs; default one "app"). It is played
        by ``netns`` (default ``kube.default_netns``, the cluster's pod namespace). ``start``
        runs a process for each container (``container_argv``), as ``POST pods`` does."""
        self.add_namespace(ns)
        if start:
            phase = "Pending"  # until its containers run
        specs = [self._container_spec(c) for c in (containers or ["app"])]
        meta = self._meta(ns, name, labels, annotations)
        if owner:
            meta["ownerReferences"] = [self._owner_ref(ns, owner)]
        obj = {
            "kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {
                "containers": specs, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "nodeName": NODE, "schedulerName":
                "default-scheduler", "terminationGracePeriodSeconds": 30, "securityContext": {},
                "enableServiceLinks": True,
            },
            "status": {"phase": phase, "hostIP": HOST_IP, "qosClass": "BestEffort",
                       "startTime": meta["creationTimestamp"]},
        }  # fmt: skip
        if phase in ("Running", "Succeeded", "Failed"):
            obj["status"]["podIP"] = POD_IP
            obj["status"]["podIPs"] = [{"ip": POD_IP}]
        record = PodRecord(obj, netns or self.default_netns, Path(root) if root else None)
        statuses = []
        for spec in specs:
            if start:
                state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
            elif phase == "Running":
                state = {"running": {"startedAt": meta["creationTimestamp"]}}
            elif phase in ("Succeeded", "Failed"):
                code = 0 if phase == "Succeeded" else 1
                state = {"terminated": {"exitCode": code,
                                        "reason": "Completed" if code == 0 else "Error",
                                        "startedAt": meta["creationTimestamp"],
                                        "finishedAt": meta["creationTimestamp"]}}  # fmt: skip
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            statuses.append(self._container_status(spec, state))
        obj["status"]["containerStatuses"] = statuses
        self._set_conditions(obj)
        with self.lock:
            self._pods[(ns, name)] = record
            self._store("pods", obj)
        if start:
            for spec in specs:
                self._start_container(record, spec, ephemeral=False)
        return record

    @staticmethod
    def _container_status(spec: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        running = "running" in state
        st: dict[str, Any] = {
            "name": spec["name"], "state": state, "lastState": {}, "ready": running,
            "restartCount": 0, "image": spec.get("image", ""), "imageID": "", "started": running,
        }  # fmt: skip
        if running or "terminated" in state:
            digest = hashlib.sha256(spec.get("image", "").encode()).hexdigest()
            st["imageID"] = f"{spec.get('image', '').split(':')[0]}@sha256:{digest}"
            st["containerID"] = f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}"
        return st

    @staticmethod
    def _set_conditions(pod: dict[str, Any]) -> None:
        statuses = pod["status"].get("containerStatuses", [])
        ready = bool(statuses) and all(s.get("ready") for s in statuses)
        ts = pod["metadata"]["creationTimestamp"]
        pod["status"]["conditions"] = [
            {"type": t, "status": s, "lastProbeTime": None, "lastTransitionTime": ts}
            for t, s in (("Initialized", "True"), ("Ready", str(ready)),
                         ("ContainersReady", str(ready)), ("PodScheduled", "True"))
        ]  # fmt: skip

    def _template(self, labels: dict[str, str], containers: list[str | dict[str, Any]]) -> dict:
        return {"metadata": {"labels": dict(labels)},
                "spec": {"containers": [self._container_spec(c) for c in containers],
                         "restartPolicy": "Always"}}  # fmt: skip

    def _workload(self, resource: str, ns: str, name: str, labels: dict[str, str] | None,
                  containers: list[str | dict[str, Any]] | None, spec: dict[str, Any],
                  status: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        self.add_namespace(ns)
        res = RESOURCES[resource]
        labels = labels or {"app": name}
        obj = {
            "kind": res.kind, "apiVersion": res.api_version,
            "metadata": self._meta(ns, name, labels),
            "spec": {"selector": {"matchLabels": dict(labels)},
                     "template": self._template(labels, containers or ["app"]), **spec},
            "status": {"observedGeneration": 1, **status},
        }  # fmt: skip
        return self._store(resource, obj)

    def add_deployment(self, ns: str, name: str, labels: dict[str, str] | None = None, *,
                       replicas: int = 1, containers: list[str | dict[str, Any]] | None = None,
                       netns: str | None = None, root: str | os.PathLike[str] | None = None,
                       ) -> dict[str, Any]:  # fmt: skip
        """A Deployment, its ReplicaSet and ``replicas`` running pods (owner chain pod ->
        replicaset -> deployment; ``pod-template-hash`` label as the controller sets it)."""
        available = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
        counts = {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                  "updatedReplicas": replicas}  # fmt: skip
        dep = self._workload("deployments", ns, name, labels, containers,
                             {"replicas": replicas, "strategy": {"type": "RollingUpdate"}},
                             {**counts, "conditions": [available]})  # fmt: skip
        template_hash = generated_suffix(f"{ns}/{name}/template", 10)
        rs_labels = {**dep["metadata"]["labels"], "pod-template-hash": template_hash}
        rs_name = f"{name}-{template_hash}"
        rs = self._workload("replicasets", ns, rs_name, rs_labels, containers,
                            {"replicas": replicas},
                            {**counts, "fullyLabeledReplicas": replicas})  # fmt: skip
        with self.lock:
            rs["metadata"]["ownerReferences"] = [self._owner_ref(ns, ("Deployment", name))]
            rs["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
        for i in range(replicas):
            pod_name = f"{rs_name}-{generated_suffix(f'{ns}/{rs_name}/{i}')}"
            self.add_pod(ns, pod_name, containers, labels=rs_labels,
                         owner=("ReplicaSet", rs_name), netns=netns, root=root)  # fmt: skip
        return dep

    def add_statefulset(self, ns: str, name: str, labels: dict[str, str] | None = None, *,
                        replicas: int = 1, containers: list[str | dict[str, Any]] | None = None,
                        netns: str | None = None, root: str | os.PathLike[str] | None = None,
                        ) -> dict[str, Any]:  # fmt: skip
        """A StatefulSet and its pods NAME-0, NAME-1, ..."""
        sts = self._workload("statefulsets", ns, name, labels, containers,
                             {"replicas": replicas, "serviceName": name},
                             {"replicas": replicas, "readyReplicas": replicas,
                              "currentReplicas": replicas,
                              "availableReplicas": replicas})  # fmt: skip
        revision = f"{name}-{generated_suffix(f'{ns}/{name}/rev', 10)}"
        for i in range(replicas):
            pod_labels = {**sts["metadata"]["labels"], "controller-revision-hash": revision,
                          "apps.kubernetes.io/pod-index": str(i),
                          "statefulset.kubernetes.io/pod-name": f"{name}-{i}"}  # fmt: skip
            self.add_pod(ns, f"{name}-{i}", containers, labels=pod_labels,
                         owner=("StatefulSet", name), netns=netns, root=root)  # fmt: skip
        return sts

    def add_daemonset(self, ns: str, name: str, labels: dict[str, str] | None = None, *,
                      replicas: int = 1, containers: list[str | dict[str, Any]] | None = None,
                      netns: str | None = None, root: str | os.PathLike[str] | None = None,
                      ) -> dict[str, Any]:  # fmt: skip
        """A DaemonSet and one pod per (simulated) node."""
        ds = self._workload("daemonsets", ns, name, labels, containers, {},
                            {"currentNumberScheduled": replicas,
                             "desiredNumberScheduled": replicas, "numberMisscheduled": 0,
                             "numberReady": replicas, "numberAvailable": replicas,
                             "updatedNumberScheduled": replicas})  # fmt: skip
        for i in range(replicas):
            pod_labels = {**ds["metadata"]["labels"], "pod-template-generation": "1"}
            self.add_pod(ns, f"{name}-{generated_suffix(f'{ns}/{name}/{i}')}", containers,
                         labels=pod_labels, owner=("DaemonSet", name), netns=netns, root=root)
        return ds

    def add_job(self, ns: str, name: str, labels: dict[str, str] | None = None, *,
                replicas: int = 1, containers: list[str | dict[str, Any]] | None = None,
                netns: str | None = None, root: str | os.PathLike[str] | None = None,
                phase: str = "Running") -> dict[str, Any]:  # fmt: skip
        """A Job and its pods (labels ``controller-uid``/``job-name`` as the controller sets)."""
        uid = str(uuid.uuid4())
        job_labels = {"batch.kubernetes.io/controller-uid": uid,
                      "batch.kubernetes.io/job-name": name, "controller-uid": uid,
                      "job-name": name, **(labels or {})}  # fmt: skip
        job = self._workload("jobs", ns, name, job_labels, containers,
                             {"parallelism": replicas, "completions": replicas,
                              "backoffLimit": 6, "completionMode": "NonIndexed"},
                             {"active": replicas if phase == "Running" else 0,
                              "startTime": now()})  # fmt: skip
        with self.lock:
            job["metadata"]["uid"] = uid
            job["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            job["spec"]["template"]["spec"]["restartPolicy"] = "Never"
        for i in range(replicas):
            self.add_pod(ns, f"{name}-{generated_suffix(f'{ns}/{name}/{i}')}", containers,
                         labels=job_labels, owner=("Job", name), netns=netns, root=root,
                         phase=phase)  # fmt: skip
        return job

    # ------------------------------------------------------------------ containers

    def default_container_argv(self, pod: PodRecord, spec: dict[str, Any]) -> list[str]:
        """``ip netns exec <pod netns>`` + the container's command (or ``kube.images``'s
        entrypoint for its image) + args."""
        command = spec.get("command") or self.images.get(spec.get("image", ""))
        if not command:
            raise LookupError(
                f'image "{spec.get("image")}" has no entrypoint known to the kube double: give '
                "the container a command, or set kube.images[image] or kube.container_argv"
            )
        return ["ip", "netns", "exec", pod.netns, *command, *spec.get("args", [])]

    def default_exec_argv(self, pod: PodRecord, container: str, command: list[str]) -> list[str]:
        """``ip netns exec <pod netns>`` + the exec'd command."""
        return ["ip", "netns", "exec", pod.netns, *command]

    def _env(self, pod: PodRecord, spec: dict[str, Any] | None) -> dict[str, str]:
        env = {"PATH": SAFE_PATH, "HOSTNAME": pod.name}
        for var in (spec or {}).get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
        return env

    def _set_state(self, pod: PodRecord, name: str, state: dict[str, Any], **extra: Any) -> None:
        with self.lock:
            st = pod.status_of(name)
            if st is None:
                return
            st["state"] = state
            st.update(extra)
            if pod.obj["spec"].get("containers") and st in pod.obj["status"].get(
                "containerStatuses", []
            ):
                self._update_phase(pod)
            self._touch("pods", pod.obj)

    def _update_phase(self, pod: PodRecord) -> None:
        """Pod phase and Ready from its regular containers (caller holds the lock)."""
        statuses = pod.obj["status"].get("containerStatuses", [])
        states = [s["state"] for s in statuses]
        status = pod.obj["status"]
        if states and all("running" in s for s in states):
            status["phase"] = "Running"
            status.setdefault("podIP", POD_IP)
            status.setdefault("podIPs", [{"ip": POD_IP}])
        elif states and all("terminated" in s for s in states) and (
            pod.obj["spec"].get("restartPolicy") != "Always"
        ):
            ok = all(s["terminated"]["exitCode"] == 0 for s in states)
            status["phase"] = "Succeeded" if ok else "Failed"
        self._set_conditions(pod.obj)

    def _start_container(self, pod: PodRecord, spec: dict[str, Any], *, ephemeral: bool) -> None:
        """Bring a container up in the background, going through the states a kubelet shows."""
        threading.Thread(target=self._run_container, args=(pod, dict(spec), ephemeral),
                         daemon=True, name=f"container-{spec['name']}").start()  # fmt: skip

    def _run_container(self, pod: PodRecord, spec: dict[str, Any], ephemeral: bool) -> None:
        name, image = spec["name"], spec.get("image", "")
        time.sleep(self.start_delay)
        if ephemeral:  # the kubelet noticed it: ContainerCreating first
            with self.lock:
                statuses = pod.obj["status"].setdefault("ephemeralContainerStatuses", [])
                statuses.append(self._container_status(
                    spec, {"waiting": {"reason": "ContainerCreating"}}))  # fmt: skip
                self._touch("pods", pod.obj)
            time.sleep(self.start_delay)
        if image in self.unpullable:
            message = self.unpullable[image]
            self._set_state(pod, name, {"waiting": {"reason": "ErrImagePull", "message": message}})
            time.sleep(self.start_delay)
            backoff = f'Back-off pulling image "{image}": ErrImagePull: {message}'
            self._set_state(pod, name, {"waiting": {"reason": "ImagePullBackOff",
                                                    "message": backoff}})  # fmt: skip
            return
        started = now()
        digest = hashlib.sha256(image.encode()).hexdigest()
        cid = f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}"
        ids = {"imageID": f"{image.split(':')[0]}@sha256:{digest}", "containerID": cid}
        try:
            argv = self.container_argv(pod, spec)
            proc = Process(argv, self._env(pod, spec), cwd=str(pod.root) if pod.root else None)
        except (OSError, LookupError) as exc:
            state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": str(exc),
                                    "startedAt": started, "finishedAt": now()}}  # fmt: skip
            self._set_state(pod, name, state, **ids)
            return
        with self.lock:
            if self._closed:
                proc.kill()
                return
            self._processes.append(proc)
            pod.processes[name] = proc
            if not spec.get("stdin"):
                proc.close_stdin()  # no stdin: the runtime gives /dev/null
        self._set_state(pod, name, {"running": {"startedAt": started}}, ready=not ephemeral,
                        started=True, **ids)  # fmt: skip

        def exited(p: Process) -> None:
            term = {"exitCode": p.returncode,
                    "reason": "Completed" if p.returncode == 0 else "Error",
                    "startedAt": started, "finishedAt": now(), "containerID": cid}  # fmt: skip
            if not ephemeral and pod.obj["spec"].get("restartPolicy", "Always") == "Always":
                message = f"back-off 10s restarting failed container={name} pod={pod.name}"
                self._set_state(pod, name, {"waiting": {"reason": "CrashLoopBackOff",
                                                        "message": message}},
                                lastState={"terminated": term}, ready=False, started=False,
                                restartCount=1)  # fmt: skip
            else:
                self._set_state(pod, name, {"terminated": term}, ready=False, started=False)

        proc.on_done(exited)

    # ------------------------------------------------------------------ HTTP

    def _forbidden(self, verb: str, res: Resource, sub: str, ns: str, name: str) -> ApiError:
        target = f"{res.name}/{sub}" if sub else res.name
        who = f'{res.qualified} "{name}"' if name else res.qualified
        where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
        message = (f'{who} is forbidden: User "{self.user}" cannot {verb} resource '
                   f'"{target}" in API group "{res.group}"{where}')  # fmt: skip
        details: dict[str, Any] = {"kind": res.name}
        if name:
            details["name"] = name
        if res.group:
            details["group"] = res.group
        return ApiError(403, "Forbidden", message, details)

    def _access_review(self, review: dict[str, Any]) -> dict[str, Any]:
        """SelfSubjectAccessReview: what `kubectl auth can-i` and `mirrortrace doctor` ask;
        answered from the same denials _authorize applies."""
        attrs = (review.get("spec") or {}).get("resourceAttributes") or {}
        resource = attrs.get("resource", "")
        if attrs.get("subresource"):
            resource += "/" + attrs["subresource"]
        verb, ns = attrs.get("verb", ""), attrs.get("namespace")
        denied = any(v in (verb, "*") and r in (resource, "*") and n in (None, ns)
                     for v, r, n in self._denied)
        status: dict[str, Any] = {"allowed": not denied}
        if denied:
            status["denied"] = False  # RBAC only says "no rule allows it", never "denied"
            status["reason"] = ""
        return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": review.get("spec", {}),
                "status": status}

    def _authorize(self, verbs: tuple[str, ...], res: Resource, sub: str, ns: str,
                   name: str) -> None:  # fmt: skip
        target = f"{res.name}/{sub}" if sub else res.name
        for verb in verbs:
            for v, r, n in self._denied:
                if v in (verb, "*") and r in (target, "*") and n in (None, ns):
                    raise self._forbidden(verb, res, sub, ns, name)

    def _handle(self, h: _Handler) -> None:
        """Answer one HTTP request (called in the connection's thread)."""
        url = urlsplit(h.path)
        rec = RequestRecord(h.command, url.path, url.query, h.headers.get("User-Agent", ""),
                            accept=h.headers.get("Accept", ""),
                            content_type=h.headers.get("Content-Type", ""),
                            upgrade=h.headers.get("Upgrade", ""))  # fmt: skip
        h.record = rec
        with self.lock:
            self.requests.append(rec)
        if rec.upgrade.lower() != "websocket":
            h.read_body()  # consumed up front, so an error answer leaves the connection in step
        query = parse_qs(url.query, keep_blank_values=True)
        spdy = "spdy" in rec.upgrade.lower() or "X-Stream-Protocol-Version" in h.headers
        if spdy:
            with self.lock:
                self.spdy_requests.append(rec)
        try:
            auth = h.headers.get("Authorization", "")
            if auth != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            self._route(h, rec, url.path, query, spdy)
        except ApiError as err:
            h.reply(err.code, err.status)

    def _route(self, h: _Handler, rec: RequestRecord, path: str, query: dict[str, list[str]],
               spdy: bool) -> None:  # fmt: skip
        accept = rec.accept
        if path == "/version" and h.command == "GET":
            minor = self.version.lstrip("v").split(".")[1]
            return h.reply(200, {
                "major": "1", "minor": minor, "gitVersion": self.version,
                "gitCommit": hashlib.sha1(self.version.encode()).hexdigest(),
                "gitTreeState": "clean", "buildDate": "2025-05-15T08:00:00Z",
                "goVersion": "go1.23.8", "compiler": "gc", "platform": "linux/amd64",
            })  # fmt: skip
        if path == SSAR_PATH and h.command == "POST":
            return h.reply(201, self._access_review(h.read_json()))
        if path in ("/api", "/apis") and h.command == "GET":
            for version in ("v2", "v2beta1"):
                ctype = f"{DISCOVERY_TYPE};v={version};as=APIGroupDiscoveryList"
                if ctype in accept.replace(" ", ""):
                    return h.reply(200, aggregated_discovery(path == "/api", version), ctype)
            if path == "/api":
                return h.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                     "serverAddressByClientCIDRs": [{
                                         "clientCIDR": "0.0.0.0/0",
                                         "serverAddress": f"127.0.0.1:{self.port}"}]})  # fmt: skip
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                       "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                      for g in ("apps", "batch")]  # fmt: skip
            return h.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for group, prefix in GROUPS.items():
            if path == prefix and h.command == "GET":
                return h.reply(200, legacy_resource_list(group))
            if group and path == prefix.rsplit("/", 1)[0] and h.command == "GET":
                gv = {"groupVersion": f"{group}/v1", "version": "v1"}
                return h.reply(200, {"kind": "APIGroup", "apiVersion": "v1", "name": group,
                                     "versions": [gv], "preferredVersion": gv})  # fmt: skip
            if path.startswith(prefix + "/"):
                return self._resource(h, rec, group, path[len(prefix) + 1 :], query, spdy)
        raise ApiError(404, "NotFound", "the server could not find the requested resource",
                       {})  # fmt: skip

    def _resource(self, h: _Handler, rec: RequestRecord, group: str, rest: str,
                  query: dict[str, list[str]], spdy: bool) -> None:  # fmt: skip
        parts = rest.split("/")
        ns = ""
        if parts[0] == "namespaces" and len(parts) >= 3:
            ns, parts = parts[1], parts[2:]
        if len(parts) > 3 or not parts[0]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res = RESOURCES.get(parts[0])
        if res is None or res.group != group:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = parts[1] if len(parts) > 1 else ""
        sub = parts[2] if len(parts) > 2 else ""
        if sub and sub not in {s for s, _, _ in res.subresources}:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        method = h.command
        first = lambda key, default="": query.get(key, [default])[0]  # noqa: E731
        if sub in ("exec", "attach"):
            websocket = h.headers.get("Upgrade", "").lower() == "websocket"
            if spdy or method == "POST":
                self._authorize(("create",), res, sub, ns, name)
                raise ApiError(400, "BadRequest",
                               f"SPDY {sub} is not supported by this API server test double: "
                               f"use the {V5} websocket (kubectl >= 1.30, or fix the "
                               "fallback)")  # fmt: skip
            if method != "GET" or not websocket:
                raise ApiError(400, "BadRequest", f"{sub} needs a websocket upgrade (GET)")
            verbs = ("get", "create") if self.ws_requires_create else ("get",)
            self._authorize(verbs, res, sub, ns, name)
            return self._stream(h, rec, ns, name, sub, query)
        if method == "GET":
            if not name:
                watch = first("watch").lower() in ("1", "true")
                self._authorize(("watch" if watch else "list",), res, sub, ns, name)
                if watch:
                    return self._watch(h, rec, res, ns, query)
                return self._list(h, rec, res, ns, first("labelSelector"),
                                  first("fieldSelector"))  # fmt: skip
            self._authorize(("get",), res, sub, ns, name)
            obj = self._lookup(res, ns, name)
            if sub not in ("", "status", "ephemeralcontainers", "log"):
                raise ApiError(405, "MethodNotAllowed", f"GET {res.name}/{sub} is not served by "
                                                        "the kube API double")  # fmt: skip
            if sub == "log":
                return h.reply_raw(200, self.logs(ns, name, self._pick_container(
                    self.pod(ns, name), first("container"))), "text/plain")  # fmt: skip
            if "as=Table" in rec.accept:
                return h.reply(200, self._table(res, [obj], query))
            return h.reply(200, obj)
        if method == "PATCH" and name:
            self._authorize(("patch",), res, sub, ns, name)
            body = h.read_json()
            if res.name == "pods" and sub == "ephemeralcontainers":
                result = self._patch_ephemeral(ns, name, body, rec.content_type)
            elif sub in ("", "status"):
                result = self._patch_object(res, ns, name, body, rec.content_type)
            else:
                raise ApiError(405, "MethodNotAllowed", f"PATCH is not supported on {sub}")
            return h.reply(200, result)
        if method == "POST" and not name and res.name == "pods":
            self._authorize(("create",), res, sub, ns, name)
            return h.reply(201, self._create_pod(ns, h.read_json()))
        if method == "DELETE" and name and res.name == "pods" and not sub:
            self._authorize(("delete",), res, sub, ns, name)
            return h.reply(200, self._delete_pod(ns, name))
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    def _lookup(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self._objects.get((res.name, ns, name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def _matching(self, res: Resource, ns: str, labels: str, fields: str) -> list[dict]:
        with self.lock:
            out = []
            for (r, n, _), obj in sorted(self._objects.items()):
                if r != res.name or (ns and n != ns):
                    continue
                if labels and not selector_matches(labels, obj["metadata"].get("labels", {})):
                    continue
                if fields and not field_selector_matches(fields, obj):
                    continue
                out.append(copy.deepcopy(obj))
            return out

    def _list(self, h: _Handler, rec: RequestRecord, res: Resource, ns: str, labels: str,
              fields: str) -> None:  # fmt: skip
        items = self._matching(res, ns, labels, fields)
        if "as=Table" in rec.accept:
            return h.reply(200, self._table(res, items, {}))
        for item in items:  # list items carry no kind/apiVersion on the wire
            item.pop("kind", None)
            item.pop("apiVersion", None)
        h.reply(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                      "metadata": {"resourceVersion": str(self._rv)}, "items": items})  # fmt: skip

    def _watch(self, h: _Handler, rec: RequestRecord, res: Resource, ns: str,
               query: dict[str, list[str]]) -> None:  # fmt: skip
        """A watch stream: chunked JSON lines ``{"type": ..., "object": ...}``."""
        labels = query.get("labelSelector", [""])[0]
        fields = query.get("fieldSelector", [""])[0]
        timeout = float(query.get("timeoutSeconds", ["1800"])[0] or 1800)
        deadline = time.monotonic() + min(timeout, 1800)

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj["metadata"]
            return ((not ns or meta.get("namespace") == ns)
                    and (not labels or selector_matches(labels, meta.get("labels", {})))
                    and (not fields or field_selector_matches(fields, obj)))  # fmt: skip

        h.start_chunked(200)
        with self.lock:
            since = int(query.get("resourceVersion", ["0"])[0] or 0)
            pending: list[tuple[str, dict]] = []
            if since == 0:  # no resourceVersion: synthetic ADDED for what exists now
                pending = [("ADDED", o) for o in self._matching(res, ns, labels, fields)]
                since = self._rv
        try:
            while True:
                for etype, obj in pending:
                    h.write_chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                with self._changed:
                    while not self._closed and time.monotonic() < deadline:
                        fresh = [(e, o) for rv, e, r, o in self._events
                                 if rv > since and r == res.name and wanted(o)]  # fmt: skip
                        if fresh:
                            since = self._rv
                            break
                        if h.client_gone():  # a watcher hangs up by closing: stop waiting
                            return
                        self._changed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                    else:
                        break
                pending = fresh
        except OSError:
            return
        h.end_chunked()

    # ------------------------------------------------------------------ tables

    def _table(self, res: Resource, items: list[dict], query: dict[str, list[str]]) -> dict:
        """The ``meta.k8s.io/v1`` Table kubectl asks for, with the columns the real server uses."""
        def cols(*spec: tuple[str, str, int]) -> list[dict[str, Any]]:
            return [{"name": n, "type": t, "format": "name" if n == "Name" else "",
                     "description": "", "priority": p} for n, t, p in spec]  # fmt: skip

        rows = []
        if res.name == "pods":
            columns = cols(("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0),
                           ("Restarts", "string", 0), ("Age", "string", 0), ("IP", "string", 1),
                           ("Node", "string", 1), ("Nominated Node", "string", 1),
                           ("Readiness Gates", "string", 1))  # fmt: skip
        elif res.name == "deployments":
            columns = cols(("Name", "string", 0), ("Ready", "string", 0),
                           ("Up-to-date", "integer", 0), ("Available", "integer", 0),
                           ("Age", "string", 0), ("Containers", "string", 1),
                           ("Images", "string", 1), ("Selector", "string", 1))  # fmt: skip
        else:
            columns = cols(("Name", "string", 0), ("Age", "string", 0))
        for obj in items:
            meta, status, spec = obj["metadata"], obj.get("status", {}), obj.get("spec", {})
            age = _age(meta.get("creationTimestamp"))
            if res.name == "pods":
                statuses = status.get("containerStatuses", [])
                reason = status.get("phase", "Unknown")
                for st in statuses:
                    if "waiting" in st["state"] and st["state"]["waiting"].get("reason"):
                        reason = st["state"]["waiting"]["reason"]
                    elif "terminated" in st["state"] and reason != "Running":
                        reason = st["state"]["terminated"].get("reason", reason)
                if meta.get("deletionTimestamp"):
                    reason = "Terminating"
                ready = sum(1 for s in statuses if s.get("ready"))
                restarts = sum(s.get("restartCount", 0) for s in statuses)
                cells: list[Any] = [meta["name"], f"{ready}/{len(spec.get('containers', []))}",
                                    reason, str(restarts), age, status.get("podIP", "<none>"),
                                    spec.get("nodeName", "<none>"), "<none>", "<none>"]  # fmt: skip
            elif res.name == "deployments":
                containers = spec.get("template", {}).get("spec", {}).get("containers", [])
                match = spec.get("selector", {}).get("matchLabels", {})
                selector = ",".join(f"{k}={v}" for k, v in match.items())
                cells = [meta["name"],
                         f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
                         status.get("updatedReplicas", 0), status.get("availableReplicas", 0),
                         age, ",".join(c["name"] for c in containers),
                         ",".join(c.get("image", "") for c in containers), selector]  # fmt: skip
            else:
                cells = [meta["name"], age]
            include = query.get("includeObject", ["PartialObjectMetadata"])[0]
            if include == "Object":
                row_obj: dict[str, Any] = obj
            elif include == "None":
                row_obj = {}
            else:
                row_obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": meta}  # fmt: skip
            rows.append({"cells": cells, "object": row_obj})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "columnDefinitions": columns, "rows": rows}  # fmt: skip

    # ------------------------------------------------------------------ writes

    def _apply_patch(self, obj: dict[str, Any], body: Any, content_type: str) -> dict[str, Any]:
        ctype = content_type.split(";")[0].strip()
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            return json_patch(obj, body)
        if ctype == "application/merge-patch+json":
            return merge_patch(obj, body)
        if ctype == "application/strategic-merge-patch+json":
            return strategic_merge_patch(obj, body)
        raise ApiError(415, "UnsupportedMediaType",
                       "the body of the request was in an unknown format - accepted media types "
                       "include: application/json-patch+json, application/merge-patch+json, "
                       "application/strategic-merge-patch+json")  # fmt: skip

    def _patch_object(self, res: Resource, ns: str, name: str, body: Any,
                      content_type: str) -> dict[str, Any]:  # fmt: skip
        with self.lock:
            obj = self._objects.get((res.name, ns, name))
            if obj is None:
                raise not_found(res, name)
            patched = self._apply_patch(obj, body, content_type)
            # Only metadata labels/annotations and the status are taken over: enough for the
            # clients here, and nothing a test set up can be rewritten behind its back.
            for key in ("labels", "annotations"):
                if key in patched.get("metadata", {}):
                    obj["metadata"][key] = patched["metadata"][key]
            if "status" in patched:
                obj["status"] = patched["status"]
            self._touch(res.name, obj)
            return copy.deepcopy(obj)

    def _invalid(self, pod: str, field_path: str, reason: str, message: str) -> ApiError:
        cause = {"reason": reason, "message": message, "field": field_path}
        return ApiError(422, "Invalid", f'Pod "{pod}" is invalid: {field_path}: {message}',
                        {"name": pod, "kind": "Pod", "causes": [cause]})

    def _patch_ephemeral(self, ns: str, name: str, body: Any, content_type: str) -> dict:
        """PATCH pods/NAME/ephemeralcontainers: only additions to spec.ephemeralContainers."""
        res = RESOURCES["pods"]
        with self.lock:
            record = self._pods.get((ns, name))
            if record is None:
                raise not_found(res, name)
            pod = record.obj
            patched = self._apply_patch(pod, body, content_type)
            old = pod["spec"].get("ephemeralContainers", [])
            new = patched.get("spec", {}).get("ephemeralContainers", []) or []
            new_by_name = {c.get("name"): c for c in new}
            for i, c in enumerate(old):
                path = f"spec.ephemeralContainers[{i}]"
                if c["name"] not in new_by_name:
                    raise self._invalid(name, "spec.ephemeralContainers", "FieldValueForbidden",
                                        f'Forbidden: existing ephemeral containers "{c["name"]}"'
                                        " may not be removed")  # fmt: skip
                if {k: v for k, v in new_by_name[c["name"]].items() if v is not None} != c:
                    raise self._invalid(name, path, "FieldValueForbidden",
                                        f'Forbidden: existing ephemeral containers "{c["name"]}"'
                                        " may not be changed")  # fmt: skip
            taken = {c["name"] for c in pod["spec"].get("containers", [])} | {
                c["name"] for c in old}
            added = []
            for i, c in enumerate(new):
                if c.get("name") in {o["name"] for o in old}:
                    continue
                path = f"spec.ephemeralContainers[{i}]"
                if not c.get("name"):
                    raise self._invalid(name, f"{path}.name", "FieldValueRequired",
                                        "Required value")  # fmt: skip
                if c["name"] in taken:
                    raise self._invalid(name, f"{path}.name", "FieldValueDuplicate",
                                        f'Duplicate value: "{c["name"]}"')  # fmt: skip
                if not c.get("image"):
                    raise self._invalid(name, f"{path}.image", "FieldValueRequired",
                                        "Required value")  # fmt: skip
                for forbidden in ("ports", "livenessProbe", "readinessProbe", "startupProbe",
                                  "lifecycle"):  # fmt: skip
                    if c.get(forbidden):
                        raise self._invalid(name, f"{path}.{forbidden}", "FieldValueForbidden",
                                            "Forbidden: cannot be set for an Ephemeral "
                                            "Container")  # fmt: skip
                spec = {k: v for k, v in c.items() if v is not None}
                spec.setdefault("imagePullPolicy", "IfNotPresent")
                spec.setdefault("terminationMessagePath", "/dev/termination-log")
                spec.setdefault("terminationMessagePolicy", "File")
                spec.setdefault("resources", {})
                taken.add(spec["name"])
                added.append(spec)
            # No status entry yet: the kubelet adds it later (_run_container), as on a real
            # cluster, where the PATCH answer shows none either.
            pod["spec"]["ephemeralContainers"] = old + added
            self._touch("pods", pod)
            result = copy.deepcopy(pod)
        for spec in added:
            self._start_container(record, spec, ephemeral=True)
        return result

    def _create_pod(self, ns: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise ApiError(400, "BadRequest", "the request body is not a Pod")
        with self.lock:
            if ("namespaces", "", ns) not in self._objects:
                raise not_found(RESOURCES["namespaces"], ns)
        meta = body.get("metadata") or {}
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + generated_suffix(uuid.uuid4().hex)
        if not name:
            raise self._invalid("", "metadata.name", "FieldValueRequired",
                                "Required value: name or generateName is required")  # fmt: skip
        with self.lock:
            if (ns, name) in self._pods:
                raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists',
                               {"name": name, "kind": "pods"})  # fmt: skip
        containers = body["spec"].get("containers") or []
        if not containers or not all(c.get("name") and c.get("image") for c in containers):
            raise self._invalid(name, "spec.containers", "FieldValueRequired",
                                "Required value: each container needs a name and an image")
        record = self.add_pod(ns, name, containers, labels=meta.get("labels"),
                              annotations=meta.get("annotations"), start=True)  # fmt: skip
        with self.lock:
            spec = record.obj["spec"]
            for key, value in body["spec"].items():
                if key != "containers":
                    spec[key] = copy.deepcopy(value)
            spec.setdefault("restartPolicy", "Always")
            self._touch("pods", record.obj)
            return copy.deepcopy(record.obj)

    def _delete_pod(self, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            record = self._pods.get((ns, name))
            if record is None:
                raise not_found(RESOURCES["pods"], name)
            record.obj["metadata"]["deletionTimestamp"] = now()
            record.obj["metadata"]["deletionGracePeriodSeconds"] = 30
            self._touch("pods", record.obj)
            result = copy.deepcopy(record.obj)
            procs = list(record.processes.values())
        for p in procs:
            p.terminate()

        def reap() -> None:  # grace period: SIGTERM, then SIGKILL after 2 s
            deadline = time.monotonic() + 2
            for p in procs:
                if not p.done.wait(max(0.0, deadline - time.monotonic())):
                    p.kill()
            with self.lock:
                if self._pods.get((ns, name)) is record:
                    del self._pods[(ns, name)]
                    obj = self._objects.pop(("pods", ns, name))
                    self._bump(obj)
                    self._notify("DELETED", "pods", obj)

        threading.Thread(target=reap, daemon=True, name=f"delete-{name}").start()
        return result

    # ------------------------------------------------------------------ exec / attach

    def _pick_container(self, pod: PodRecord, wanted: str) -> str:
        if wanted:
            if pod.container(wanted) is None:
                raise ApiError(400, "BadRequest",
                               f"container {wanted} is not valid for pod {pod.name}")  # fmt: skip
            return wanted
        containers = pod.obj["spec"].get("containers", [])
        if len(containers) == 1:
            return containers[0]["name"]
        names = " ".join(c["name"] for c in containers)
        raise ApiError(400, "BadRequest", f"a container name must be specified for pod "
                                          f"{pod.name}, choose one of: [{names}]")  # fmt: skip

    def _stream(self, h: _Handler, rec: RequestRecord, ns: str, name: str, sub: str,
                query: dict[str, list[str]]) -> None:  # fmt: skip
        with self.lock:
            record = self._pods.get((ns, name))
            if record is None:
                raise not_found(RESOURCES["pods"], name)
            phase = record.obj["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            raise ApiError(400, "BadRequest", f"cannot {sub} into a container in a completed "
                                              f"pod; current phase is {phase}")  # fmt: skip
        container = self._pick_container(record, query.get("container", [""])[0])
        flag = lambda key: query.get(key, ["false"])[0].lower() in ("1", "true")  # noqa: E731
        want = {0: flag("stdin"), 1: flag("stdout"), 2: flag("stderr")}
        offered = [p.strip() for p in h.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        chosen = next((p for p in offered if p in SUPPORTED_SUBPROTOCOLS), None)
        if chosen is None:
            supported = list(SUPPORTED_SUBPROTOCOLS)
            raise ApiError(400, "BadRequest", f"requested protocol(s) are not supported: "
                                              f"{offered}; supports {supported}")  # fmt: skip
        if sub == "exec":
            command = query.get("command", [])
            if not command:
                raise ApiError(400, "BadRequest", "you must specify at least 1 command")
            with self.lock:
                spec = record.container(container)
            argv, env = self.exec_argv(record, container, command), self._env(record, spec)

            def start(listener: Callable[[int, bytes], None]) -> Process:
                if self.exec_argv == self.default_exec_argv and not _executable(command[0]):
                    raise FileNotFoundError(
                        f'OCI runtime exec failed: exec failed: unable to start container '
                        f'process: exec: "{command[0]}": executable file not found in $PATH: '
                        "unknown"
                    )
                proc = Process(argv, env, listener=listener)
                with self.lock:
                    self._processes.append(proc)
                    self.execs.append(ExecRecord(ns, name, container, command, chosen, proc))
                return proc
        else:
            with self.lock:
                running = record.processes.get(container)
                spec = record.container(container) or {}
            if running is None or running.done.is_set():
                raise ApiError(400, "BadRequest", f"container {container} in pod {name} is not "
                                                  "running")  # fmt: skip

            def start(listener: Callable[[int, bytes], None]) -> Process:
                assert running is not None
                running.add_listener(listener)
                return running

        ws = h.upgrade(chosen)
        rec.subprotocol = chosen
        self._relay(ws, start, want, attach=(sub == "attach"),
                    stdin_once=bool(spec.get("stdinOnce")))  # fmt: skip

    def _relay(self, ws: WebSocket, start: Callable[[Callable[[int, bytes], None]], Process],
               want: dict[int, bool], *, attach: bool, stdin_once: bool) -> None:  # fmt: skip
        """Connect a websocket to a process (``start(listener)`` starts it, or attaches the
        listener to a running one) until either side is done; runs in the handler thread."""
        stdin_open = want[0]

        def on_output(channel: int, data: bytes) -> None:
            if want.get(channel):
                ws.send(channel, data)

        # The API server's first message: an empty one on the lowest output channel.
        ws.send(1 if want[1] else 2 if want[2] else 3, b"")
        try:
            proc = start(on_output)
        except OSError as exc:  # the command could not be started: say so on channel 3
            ws.finish(internal_error_status(str(exc)))
            ws.run()
            return
        if not attach and not want[0]:
            proc.close_stdin()

        def on_message(channel: int, data: bytes) -> None:
            nonlocal stdin_open
            if channel == 0 and stdin_open:
                proc.write_stdin(data)
            elif channel == STREAM_CLOSE and ws.subprotocol == V5 and data[:1] == b"\x00":
                if stdin_open and (not attach or stdin_once):
                    proc.close_stdin()
                stdin_open = False

        ws.on_message = on_message
        ws.can_receive = lambda: proc.stdin_backlog() < (4 << 20)
        proc.add_waker(ws.wake)
        if attach:
            proc.on_done(lambda p: ws.finish({"metadata": {}, "status": "Success"}))
        else:
            proc.on_done(lambda p: ws.finish(exit_status(p.returncode or 0)))
        try:
            ws.run()
        finally:
            proc.remove_listener(on_output)
            proc.remove_waker(ws.wake)
            if stdin_open and (not attach or stdin_once):
                proc.close_stdin()  # the stream ended: EOF, never a kill (exec'd processes leak)


def _executable(name: str) -> bool:
    if "/" in name:
        return os.access(name, os.X_OK)
    return shutil.which(name, path=SAFE_PATH) is not None


def internal_error_status(cause: str) -> dict[str, Any]:
    """The channel-3 Status for an exec that could not start (apierrors.NewInternalError)."""
    message = f"error executing command in container: failed to exec in container: {cause}"
    return {
        "metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
        "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500,
    }  # fmt: skip


def exit_status(code: int) -> dict[str, Any]:
    """The Status the 1.30+ API server writes on channel 3 when an exec'd command ends."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: command terminated with exit "
                   f"code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }  # fmt: skip


# ---------------------------------------------------------------------------- HTTP plumbing

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    rbufsize = 0  # unbuffered: nothing of a websocket's first frames hides in a buffer
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # the request log is kept instead
        pass

    def _dispatch(self) -> None:
        self.record, self._body = None, None  # one handler serves a keep-alive connection
        self.server.double._handle(self)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch  # noqa: N815

    record: RequestRecord | None = None
    _body: bytes | None = None

    def read_body(self) -> bytes:
        """The request body (read once, then cached)."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self._read_exact(size)
                self.rfile.readline()
        return self._read_exact(int(self.headers.get("Content-Length") or 0))

    def _read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.rfile.read(n - len(out))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            out += chunk
        return bytes(out)

    def read_json(self) -> Any:
        raw = self.read_body()
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from exc

    def reply_raw(self, code: int, body: bytes, ctype: str) -> None:
        if self.record is not None:
            self.record.status = code
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply(self, code: int, obj: Any, ctype: str = "application/json") -> None:
        self.reply_raw(code, json.dumps(obj).encode(), ctype)

    def client_gone(self) -> bool:
        """During a streamed answer: has the client closed its side (EOF or TLS close)?"""
        readable, _, _ = select.select([self.connection], [], [], 0)
        return bool(readable)

    def start_chunked(self, code: int) -> None:
        if self.record is not None:
            self.record.status = code
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(b"0\r\n\r\n")

    def upgrade(self, subprotocol: str) -> WebSocket:
        """Answer 101 Switching Protocols and hand the socket to a :class:`WebSocket`."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.record is not None:
            self.record.status = 101
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(key))
        self.send_header("Sec-WebSocket-Protocol", subprotocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        return WebSocket(self.connection, subprotocol)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, double: KubeDouble, sock: socket.socket) -> None:
        self.double = double
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the connection's own thread, then HTTP."""
        double = self.double
        double._connections.add(request)
        try:
            # As the real API server (Go) does: without it a small websocket write waits
            # for a delayed ACK now and then (40 ms stalls in latency benches).
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(10)
            tls = double._ssl.wrap_socket(request, server_side=True)
            tls.settimeout(None)
        except (OSError, ssl.SSLError):
            double._connections.discard(request)
            return
        double._connections.add(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, ssl.SSLError, ConnectionError):
            pass
        finally:
            double._connections.discard(tls)
            double._connections.discard(request)
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called inside socketserver's `except Exception:`: re-raise so a bug in the double
        # reaches threading.excepthook, which pytest turns into a failure.
        raise


@contextlib.contextmanager
def kube_double(cluster: Cluster, **kwargs: Any) -> Iterator[KubeDouble]:
    """A :class:`KubeDouble` that is always closed."""
    double = KubeDouble(cluster, **kwargs)
    try:
        yield double
    finally:
        double.close()
