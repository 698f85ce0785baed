"""The simulated cluster itself works, before mirrortrace is involved.

Every mirrortrace integration test compares "in the pod" with "on the laptop, traced". These
tests pin down both ends: the pod resolves and serves as a Kubernetes pod would, and the
laptop namespace really cannot reach any of it on its own, so a passing traced test can only
mean mirrortrace diverted the traffic.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cluster import (
    BLACKHOLE_IP,
    DB_FQDN,
    DB_IP,
    DNS_IP,
    DNS_IP6,
    HERE,
    POD_HOSTNAME,
    POD_IP,
    SRV_NAME,
    TIMEOUT_IP,
    UNREACHABLE_IP,
    WEB_FQDN,
    WEB_IP,
    WEB_IP6,
    WWW_FQDN,
    Cluster,
    connect_errno_script,
    expected_bytes_sha256,
)

pytestmark = pytest.mark.integration

DNSQ = [sys.executable, "-I", "-S", str(HERE / "dnsq.py")]


def dnsq(cluster: Cluster, *args: str) -> dict[str, Any]:
    """Raw DNS query from inside the pod (dnsq.py), parsed."""
    res = cluster.pod_run([*DNSQ, *args])
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout)
    result["data"] = [r["data"] for r in result["answers"]]
    return result


def test_pod_sees_its_own_etc_files_and_hostname(cluster: Cluster) -> None:
    res = cluster.pod_run(["cat", "/etc/resolv.conf"])
    assert f"nameserver {DNS_IP}" in res.stdout
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in res.stdout
    assert "options ndots:5" in res.stdout
    hosts = cluster.pod_run(["cat", "/etc/hosts"]).stdout
    assert f"{POD_IP} {POD_HOSTNAME}" in hosts
    assert cluster.pod_run(["hostname"]).stdout.strip() == POD_HOSTNAME


def test_laptop_does_not_see_the_pod_files(cluster: Cluster) -> None:
    assert DNS_IP not in cluster.laptop_run(["cat", "/etc/resolv.conf"]).stdout
    assert POD_HOSTNAME not in cluster.laptop_run(["cat", "/etc/hosts"]).stdout


def test_short_service_name_resolves_in_pod_with_glibc(cluster: Cluster) -> None:
    v4 = cluster.pod_run(["getent", "ahostsv4", "web"])
    assert v4.returncode == 0
    assert v4.stdout.split()[0] == WEB_IP
    assert WEB_FQDN in v4.stdout  # found through the search list
    both = cluster.pod_run(["getent", "hosts", "web"])
    assert both.returncode == 0
    assert both.stdout.split()[0] in (WEB_IP, WEB_IP6)


def test_hosts_file_name_resolves_in_pod(cluster: Cluster) -> None:
    res = cluster.pod_run(["getent", "ahostsv4", POD_HOSTNAME])
    assert res.stdout.split()[0] == POD_IP


def test_http_in_pod_and_not_from_laptop(cluster: Cluster) -> None:
    ok = cluster.pod_run(["curl", "-sS", "--max-time", "10", "http://web:8080/hello"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hello from web\n"
    by_name = cluster.laptop_run(["curl", "-sS", "--max-time", "10", "http://web:8080/hello"])
    assert by_name.returncode == 6  # could not resolve host
    by_ip = cluster.laptop_run(["curl", "-sS", "--max-time", "10", f"http://{WEB_IP}:8080/hello"])
    assert by_ip.returncode == 7  # could not connect: network unreachable
    assert "hello" not in by_ip.stdout


def test_laptop_has_no_route_to_the_cluster(cluster: Cluster) -> None:
    for host in (WEB_IP, WEB_IP6, DNS_IP):
        res = cluster.laptop_run(connect_errno_script(host, 8080))
        assert res.stdout.strip() == "ENETUNREACH", host


def test_web_routes(cluster: Cluster) -> None:
    curl = ["curl", "-sS", "--max-time", "10"]
    assert cluster.pod_run([*curl, "http://web/hello"]).stdout == "hello from web\n"
    assert cluster.pod_run([*curl, f"http://[{WEB_IP6}]:8080/hello"]).stdout == "hello from web\n"
    assert cluster.pod_run([*curl, f"http://{POD_IP}:8080/hello"]).stdout == "hello from web\n"
    whoami = cluster.pod_run([*curl, f"http://{WEB_IP}:8080/whoami"]).stdout.strip()
    assert whoami.startswith("198.18.")
    whoami6 = cluster.pod_run([*curl, f"http://[{WEB_IP6}]:8080/whoami"]).stdout.strip()
    assert whoami6.startswith("2001:2:")
    digest = cluster.pod_run(
        ["sh", "-c", f"curl -sS --max-time 20 http://{WEB_IP}:8080/bytes/1000003 | sha256sum"]
    ).stdout.split()[0]
    assert digest == expected_bytes_sha256(1000003)
    start = time.monotonic()
    slow = cluster.pod_run([*curl, f"http://{WEB_IP}:8080/slow?ms=300"])
    assert slow.stdout == "slow 300\n"
    assert time.monotonic() - start >= 0.3
    echo = cluster.pod_run([*curl, "--data-binary", "@-", f"http://{WEB_IP}:8080/sha"], input="abc")
    assert echo.stdout.split() == [
        "3",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ]
    log = cluster.web_log.read_text()
    assert "GET /hello 200" in log


def test_expected_bytes_sha256_is_the_documented_stream() -> None:
    import hashlib

    stream = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(4))
    assert expected_bytes_sha256(100) == hashlib.sha256(stream[:100]).hexdigest()
    assert expected_bytes_sha256(0) == hashlib.sha256(b"").hexdigest()


def test_dns_records_over_udp_and_tcp(cluster: Cluster) -> None:
    for tcp in ([], ["--tcp"]):
        a = dnsq(cluster, *tcp, "--server", DNS_IP, WEB_FQDN, "A")
        assert a["rcode"] == "NOERROR"
        assert a["data"] == [WEB_IP]
        assert dnsq(cluster, *tcp, "--server", DNS_IP6, WEB_FQDN, "AAAA")["data"] == [WEB_IP6]
        assert dnsq(cluster, *tcp, DB_FQDN, "A")["data"] == [DB_IP]
        assert dnsq(cluster, *tcp, DB_FQDN, "AAAA")["data"] == []
        assert dnsq(cluster, *tcp, SRV_NAME, "SRV")["data"] == [f"0 0 8080 {WEB_FQDN}."]
        assert dnsq(cluster, *tcp, WWW_FQDN, "A")["data"] == [f"{WEB_FQDN}.", WEB_IP]


def test_unknown_names_are_nxdomain(cluster: Cluster) -> None:
    for name in ("nope.default.svc.cluster.local", "nope", "example.com"):
        assert dnsq(cluster, name, "A")["rcode"] == "NXDOMAIN", name
    glibc = cluster.pod_run(["getent", "ahosts", "nope"])
    assert glibc.returncode == 2  # key not found


def test_srv_with_busybox(cluster: Cluster) -> None:
    res = cluster.pod_run(["busybox", "nslookup", "-type=SRV", SRV_NAME])
    assert f"0 0 8080 {WEB_FQDN}" in res.stdout


def test_dns_queries_are_logged(cluster: Cluster) -> None:
    dnsq(cluster, "logged-probe.default.svc.cluster.local", "A")
    assert "logged-probe.default.svc.cluster.local" in cluster.dns_log.read_text()


def test_connect_errors_in_pod(cluster: Cluster) -> None:
    refused = cluster.pod_run(connect_errno_script(WEB_IP, 9))
    assert refused.stdout.strip() == "ECONNREFUSED"
    unreachable = cluster.pod_run(connect_errno_script(UNREACHABLE_IP, 80))
    assert unreachable.stdout.strip() == "EHOSTUNREACH"
    blackhole = cluster.pod_run(connect_errno_script(BLACKHOLE_IP, 80))
    assert blackhole.stdout.strip() == "EINVAL"
    start = time.monotonic()
    timeout = cluster.pod_run(connect_errno_script(TIMEOUT_IP, 80), timeout=20)
    elapsed = time.monotonic() - start
    assert timeout.stdout.strip() == "ETIMEDOUT"
    assert 2 < elapsed < 10


def test_run_timeout_kills_and_fails(cluster: Cluster, tmp_path: Path) -> None:
    from cluster import _run_captured

    pidfile = tmp_path / "pid"
    # The grandchild leaves the process group, as the supervisor's agent does.
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' & sleep 30"
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="timed out after 0.5 s"):
        _run_captured(["sh", "-c", script], timeout=0.5, env=None, input=None)
    assert time.monotonic() - start < 5
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break  # dead, waiting to be reaped
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"process {pid} outside the process group survived the timeout")


def test_agent_exec_enters_the_pod(cluster: Cluster) -> None:
    """The agent command starts a process in the pod's network namespace and hostname."""
    assert cluster.agent_argv[:4] == ["ip", "netns", "exec", cluster.pod_ns]
    assert shlex.split(cluster.agent_exec) == cluster.agent_argv
    code = "import socket; print(socket.gethostname()); print(open('/etc/resolv.conf').read())"
    probe = [*cluster.pod_prefix, sys.executable, "-I", "-S", "-c", code]
    res = cluster.laptop_run(probe)  # started from the laptop, as the supervisor does
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == POD_HOSTNAME
    assert f"nameserver {DNS_IP}" in res.stdout


def test_agent_module_starts_in_the_pod(cluster: Cluster) -> None:
    """The exact agent command line imports the agent with -I -S and exits on EOF."""
    res = cluster.laptop_run(cluster.agent_argv, input="", timeout=30)
    assert "Traceback" not in res.stderr, res.stderr


def test_unprivileged_venv_and_agent_bridge(cluster: Cluster, unpriv_python: str) -> None:
    """nobody can run the installed mirrortrace and reach the agent through the bridge."""
    setpriv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    code = "import supervisor, agent_image, syscalls; print(supervisor.__file__)"
    res = cluster.laptop_run([*setpriv, unpriv_python, "-c", code], cwd=cluster.home_of("nobody"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("/tmp/"), res.stdout
    assert "/work/" not in res.stdout
    bridge = shlex.split(cluster.agent_exec_unprivileged())
    res = cluster.laptop_run([*setpriv, *bridge], input="", timeout=30, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in (cluster.tmp / "bridge.log").read_text()
