"""mirrortrace as an ordinary user: no root, no capabilities, the agent reached over a pipe.

The supervisor and COMMAND run as ``nobody`` (setpriv, a venv that user can read); the agent
side is started by root in the pod, reached through a socket bridge, as a real user reaches
it through ``kubectl exec -i``. ptrace of one's own children, seccomp with no_new_privs and
pidfd_getfd of a traced child all work unprivileged, so every scenario must still pass.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
from cluster import (
    CLOSED_PORT,
    DNS_IP,
    POD_HOSTNAME,
    WEB_FQDN,
    WEB_IP,
    WEB_IP6,
    WEB_PORT,
    Cluster,
    connect_errno_script,
    expected_bytes_sha256,
)
from programs import Programs

pytestmark = pytest.mark.integration

USER = "nobody"
HELLO = "hello from web\n"
URL = f"http://web:{WEB_PORT}/hello"


@pytest.fixture(scope="module")
def unpriv(cluster: Cluster, unpriv_python: str) -> Cluster:
    """The cluster, with the world-readable venv built before the first timed test."""
    return cluster


def test_runs_as_the_user(unpriv: Cluster) -> None:
    res = unpriv.run(["id", "-un"], user=USER)
    assert (res.returncode, res.stdout) == (0, f"{USER}\n"), res.stderr
    status = unpriv.run(["grep", "-E", "^(Uid|CapEff):", "/proc/self/status"], user=USER).stdout
    assert "CapEff:\t0000000000000000" in status, status
    assert "\t0\t" not in status.splitlines()[0], status  # no uid 0 anywhere


def test_curl(unpriv: Cluster) -> None:
    res = unpriv.run(["curl", "-sS", "--max-time", "15", URL], user=USER)
    assert (res.returncode, res.stdout) == (0, HELLO), res.stderr


def test_python_urllib_whoami(unpriv: Cluster, programs: Programs) -> None:
    res = unpriv.run([*programs.python_get, f"http://web:{WEB_PORT}/whoami"], user=USER)
    assert res.returncode == 0, res.stderr
    ip = ipaddress.ip_address(res.stdout.strip())
    assert ip in ipaddress.ip_network("198.18.0.0/15") or ip in ipaddress.ip_network(
        "2001:2::/48"
    ), ip


def test_getent(unpriv: Cluster) -> None:
    res = unpriv.run(["getent", "hosts", "web"], user=USER)
    assert res.returncode == 0, res.stderr
    assert res.stdout == unpriv.pod_run(["getent", "hosts", "web"]).stdout
    nx = unpriv.run(["getent", "hosts", "nope"], user=USER)
    assert nx.returncode == 2


def test_hostname(unpriv: Cluster) -> None:
    res = unpriv.run(["hostname"], user=USER)
    assert res.stdout == f"{POD_HOSTNAME}\n", res.stderr


def test_go_client(unpriv: Cluster, programs: Programs) -> None:
    lookup = unpriv.run([programs.goclient, "lookup", "web"], user=USER)
    assert lookup.stdout.split() == [WEB_IP, WEB_IP6], lookup.stderr
    srv = unpriv.run([programs.goclient, "srv", "http", "tcp", "web"], user=USER)
    assert srv.stdout == f"{WEB_FQDN}. 8080 0 0\n", srv.stderr
    get = unpriv.run([programs.goclient, "get", URL], user=USER)
    assert (get.returncode, get.stdout) == (0, HELLO), get.stderr
    refused = unpriv.run([programs.goclient, "dial", f"web:{CLOSED_PORT}"], user=USER)
    assert refused.returncode == 1
    assert "connection refused" in refused.stderr


def test_musl_client(unpriv: Cluster, programs: Programs) -> None:
    res = unpriv.run([programs.muslclient, "web", str(WEB_PORT), "/hello"], user=USER)
    assert (res.returncode, res.stdout) == (0, HELLO), res.stderr


def test_refused_and_unreachable_errnos(unpriv: Cluster, programs: Programs) -> None:
    # The test's own interpreter may live where nobody cannot read it: use the system one.
    argv = [programs.python, *connect_errno_script(WEB_IP, CLOSED_PORT)[1:]]
    res = unpriv.run(argv, user=USER)
    assert res.stdout.strip() == "ECONNREFUSED", res.stderr
    local = unpriv.run(argv, user=USER, mt_args=["--local-cidr", "198.18.0.0/24"])
    assert local.stdout.strip() == "ENETUNREACH", local.stderr


def test_download_byte_exact(unpriv: Cluster) -> None:
    size = 10 * 1024 * 1024
    script = f"curl -sS --max-time 30 http://web:{WEB_PORT}/bytes/{size} | sha256sum"
    res = unpriv.run(["sh", "-c", script], user=USER, timeout=40)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == expected_bytes_sha256(size)


def test_events_file(unpriv: Cluster) -> None:
    events = unpriv.home_of(USER) / "events.jsonl"
    res = unpriv.run(["curl", "-sS", URL], user=USER, mt_args=["--events", str(events)])
    assert res.stdout == HELLO, res.stderr
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert any(e["kind"] == "dns" and e["target"] == f"{WEB_FQDN} A" for e in lines), lines
    assert any(
        e["kind"] == "udp" and e["target"] == f"{DNS_IP}:53" and e["result"] == "0" for e in lines
    ), lines
