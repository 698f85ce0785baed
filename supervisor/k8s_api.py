"""The cluster's API, through the official `kubernetes` client, with errors a user can act on.

The client gives us everything a kubeconfig can say (contexts, exec auth
plugins such as `gke-gcloud-auth-plugin` or `aws eks get-token`, client
certificates, in-cluster service accounts); this module only decides which
configuration to load and turns the client's exceptions into one sentence
each: the resource is missing, RBAC forbids the verb (naming it), the
credentials were refused, or the cluster cannot be reached.

Imported only for `--target` runs, `ls` and `doctor`: the client is heavy.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import config
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from supervisor.errors import TargetError

REQUEST_TIMEOUT = 15.0


class WatchForbidden(TargetError):
    """RBAC allows get but not watch: the caller can fall back to polling."""


@dataclass
class Kube:
    """A loaded configuration, and plain JSON requests through the client's transport.

    The client's generated API classes cost most of a second to import (every model
    comes with them) and then build model objects we would only read; so requests go
    through its ApiClient (authentication, TLS, proxies, exec plugins, retries all
    the client's own) and answers stay JSON.
    """

    configuration: Configuration
    api: ApiClient
    namespace: str  # the default namespace of the context (or the pod's, in-cluster)
    where: str  # "context staging at https://...": for messages

    def request(self, verb: str, resource: str, namespace: str | None, method: str,
                path: str, *, query: dict[str, str] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One API call; its answer as JSON, or a TargetError that names what we tried."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            args = self.api.param_serialize(
                method, path, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=list(self.configuration.auth_settings()))
            resp = self.api.call_api(*args, _request_timeout=REQUEST_TIMEOUT)
            data = resp.read()
        except ApiException as exc:
            raise api_error(exc, verb, resource, namespace, self.where) from None
        except Exception as exc:  # urllib3's connection errors, SSL errors, DNS
            raise TargetError(
                f"cannot reach the cluster ({self.where}): {_root_cause(exc)}",
                "check your network or VPN, and the context: kubectl cluster-info",
            ) from None
        if not 200 <= resp.status <= 299:
            exc = ApiException(status=resp.status, reason=resp.reason,
                               body=data.decode(errors="replace") if data else None)
            raise api_error(exc, verb, resource, namespace, self.where)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise TargetError(f"the API server answered {method} {path} with something that "
                              "is not JSON") from None

    def watch(self, resource: str, namespace: str, path: str, *, query: dict[str, str],
              timeout: float) -> Iterator[dict[str, Any]]:
        """A watch's events ({"type": ..., "object": ...}) as the API server sends them,
        for at most `timeout` seconds; WatchForbidden when RBAC has no `watch` for it."""
        from kubernetes.watch.watch import iter_resp_lines

        seconds = max(1, int(timeout))
        params = {**query, "watch": "true", "timeoutSeconds": str(seconds)}
        try:
            args = self.api.param_serialize(
                "GET", path, query_params=list(params.items()),
                header_params={"Accept": "application/json"},
                auth_settings=list(self.configuration.auth_settings()))
            resp = self.api.call_api(*args, _request_timeout=(REQUEST_TIMEOUT, seconds + 5))
        except ApiException as exc:
            raise api_error(exc, "watch", resource, namespace, self.where) from None
        except Exception as exc:  # urllib3's connection errors, SSL errors, DNS
            raise TargetError(
                f"cannot reach the cluster ({self.where}): {_root_cause(exc)}",
                "check your network or VPN, and the context: kubectl cluster-info",
            ) from None
        raw = resp.response
        try:
            if not 200 <= resp.status <= 299:
                data = resp.read()
                exc = ApiException(status=resp.status, reason=resp.reason,
                                   body=data.decode(errors="replace") if data else None)
                if resp.status == 403:
                    raise WatchForbidden(str(api_error(exc, "watch", resource, namespace,
                                                       self.where)))
                raise api_error(exc, "watch", resource, namespace, self.where)
            for line in iter_resp_lines(raw):
                try:
                    event = json.loads(line)
                except ValueError:
                    raise TargetError("the API server sent a watch event that is not "
                                      "JSON") from None
                if isinstance(event, dict):
                    yield event
        except Exception as exc:
            if isinstance(exc, TargetError):
                raise
            raise TargetError(f"the watch of {resource} broke ({self.where}): "
                              f"{_root_cause(exc)}") from None
        finally:
            raw.close()  # a watch cut short must not go back to the pool half-read

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for a websocket, refreshed the way the client does
        (exec plugins and expiring tokens run again when needed)."""
        cfg = self.configuration
        headers = {}
        # auth_settings() is how the client itself builds its headers (it runs the
        # refresh hook of exec plugins and expiring tokens as needed).
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"]).title()] = str(setting["value"])
        return headers

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for our own websocket, from the same configuration as the REST calls."""
        cfg = self.configuration
        if not cfg.host.startswith("https"):
            return None
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        return ctx

    def server_hostname(self) -> str | None:
        cfg = self.configuration
        return getattr(cfg, "tls_server_name", None) or urlsplit(cfg.host).hostname


def connect(kubeconfig: Path | None = None, context: str | None = None) -> Kube:
    """Load the configuration the way kubectl would: --kubeconfig, else $KUBECONFIG or
    ~/.kube/config, else the in-cluster service account."""
    cfg = Configuration()
    namespace = "default"
    explicit = kubeconfig is not None or os.environ.get("KUBECONFIG")
    default_file = Path(os.path.expanduser(config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION))
    try:
        if explicit or default_file.exists():
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None,
                                    context=context, client_configuration=cfg,
                                    persist_config=False)
            contexts, active = config.list_kube_config_contexts(
                config_file=str(kubeconfig) if kubeconfig else None)
            chosen = context or (active or {}).get("name")
            for ctx in contexts or []:
                if ctx.get("name") == chosen:
                    namespace = (ctx.get("context") or {}).get("namespace") or "default"
            where = f"context {chosen} at {cfg.host}"
        else:
            if context:
                raise TargetError(f"--context {context}: there is no kubeconfig to take it from",
                                  "give --kubeconfig FILE, or set KUBECONFIG")
            try:
                config.load_incluster_config(client_configuration=cfg)
            except ConfigException:
                raise TargetError(
                    f"no Kubernetes configuration: no {default_file}, no $KUBECONFIG, and "
                    "not running inside a cluster",
                    "give --kubeconfig FILE, or set KUBECONFIG",
                ) from None
            where = f"the in-cluster API at {cfg.host}"
            ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            if ns_file.exists():
                namespace = ns_file.read_text().strip() or "default"
    except ConfigException as exc:
        raise TargetError(
            f"no usable Kubernetes configuration: {exc}",
            "give --kubeconfig FILE and --context NAME, or check: kubectl config view",
        ) from None
    except (OSError, ValueError) as exc:
        where_file = kubeconfig or os.environ.get("KUBECONFIG") or default_file
        raise TargetError(f"cannot read the kubeconfig {where_file}: {exc}",
                          "check the file, or give --kubeconfig FILE") from None
    cfg.retries = 1  # a refused connection should fail now, not after urllib3's 3 retries
    return Kube(cfg, ApiClient(cfg), namespace, where)


def api_error(exc: ApiException, verb: str, resource: str, namespace: str | None,
              where: str) -> TargetError:
    """One sentence for an API failure, naming what was tried."""
    message = _status_message(exc)
    scope = f" in namespace {namespace}" if namespace else ""
    if exc.status == 403:
        return TargetError(
            f"forbidden: RBAC does not let you {verb} {resource}{scope} ({message})",
            f"ask for a Role granting '{verb}' on '{resource}'; the Role mirrortrace needs is "
            "in the README (mirrortrace doctor checks each verb)",
        )
    if exc.status == 401:
        return TargetError(f"the cluster refused our credentials ({where}): {message}",
                           "log in again (e.g. refresh your cloud credentials) and retry")
    if exc.status == 404:
        return TargetError(f"{message}", "list what there is with: mirrortrace ls -n NAMESPACE")
    return TargetError(f"the API server refused to {verb} {resource}{scope}: "
                       f"HTTP {exc.status} {message}")


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or f"HTTP {exc.status}")


def _root_cause(exc: BaseException) -> str:
    """urllib3 wraps the real reason (connection refused, name not known) deep inside."""
    seen = exc
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    text = str(seen)
    if "] " in text and text.startswith("<"):
        text = text.split("] ", 1)[-1]
    return text.split(": ", 1)[-1] if "Errno" in text else text
