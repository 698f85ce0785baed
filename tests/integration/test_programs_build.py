"""The test client programs build, are static where they must be, and work in the pod.

Run untraced inside the pod netns, each client must resolve the short service name and fetch
from the web service. That proves the programs themselves are right, so when the same call
fails under mirrortrace the supervisor is to blame, not the client.
"""

from __future__ import annotations

import shutil

import pytest
from cluster import (
    DNS_IP,
    POD_HOSTNAME,
    POD_IP,
    WEB_FQDN,
    WEB_IP,
    WEB_IP6,
    Cluster,
    expected_bytes_sha256,
)
from programs import Programs, is_static

pytestmark = pytest.mark.integration

HELLO = "hello from web\n"
URL = "http://web:8080/hello"


@pytest.mark.parametrize(
    ("name", "toolchain"),
    [("goclient", "go"), ("muslclient", "musl-gcc"), ("busybox", "busybox")],
)
def test_static_programs_are_static(programs: Programs, name: str, toolchain: str) -> None:
    if not shutil.which(toolchain) and name not in programs.errors:
        pytest.fail(f"{name} built without {toolchain}?")
    path = programs.require(name)
    static, said = is_static(path)
    assert static, said


def test_every_available_toolchain_built(programs: Programs) -> None:
    assert programs.failures == {}
    for name, tool in (("goclient", "go"), ("muslclient", "musl-gcc"), ("java", "javac")):
        if shutil.which(tool):
            assert name not in programs.errors, programs.errors[name]


class TestGo:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "get", URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_get_sha(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "get", "-sha", "http://web:8080/bytes/300001"])
        assert res.stdout.split() == ["300001", expected_bytes_sha256(300001)], res.stderr

    def test_lookup(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "lookup", "web"])
        assert res.stdout.split() == [WEB_IP, WEB_IP6], res.stderr

    def test_lookup_unknown(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "lookup", "nope"])
        assert res.returncode == 1
        assert "no such host" in res.stderr

    def test_srv(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "srv", "http", "tcp", WEB_FQDN])
        assert res.stdout == f"{WEB_FQDN}. 8080 0 0\n", res.stderr

    def test_hostname(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "hostname"])
        assert res.stdout.split() == [POD_HOSTNAME, POD_IP], res.stderr

    def test_dial_refused_and_whoami(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "dial", f"{WEB_IP}:9"])
        assert res.returncode == 1
        assert "connection refused" in res.stderr
        ok = cluster.pod_run([programs.goclient, "dial", f"{WEB_IP}:8080"])
        assert ok.stdout == f"connected {WEB_IP}:8080\n", ok.stderr
        who = cluster.pod_run([programs.goclient, "get", "http://web:8080/whoami"])
        assert who.stdout.strip() in (WEB_IP, WEB_IP6)

    def test_stress(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "stress", "8", URL, "5"])
        assert (res.returncode, res.stdout) == (0, "ok 40\n"), res.stderr

    def test_fails_on_the_laptop(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.laptop_run([programs.goclient, "get", URL])
        assert res.returncode == 1
        assert "hello" not in res.stdout


class TestMusl:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.muslclient, "web", "8080", "/hello"])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_refused(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.muslclient, "web", "9", "/"])
        assert (res.returncode, res.stderr) == (1, "connect: Connection refused\n")

    def test_unknown_name(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.muslclient, "nope", "80", "/"], timeout=30)
        assert res.returncode == 1
        assert res.stderr.startswith("getaddrinfo: "), res.stderr

    def test_fails_on_the_laptop(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.laptop_run([programs.muslclient, WEB_IP, "8080", "/hello"])
        assert (res.returncode, res.stderr) == (1, "connect: Network unreachable\n")


class TestJava:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_lookup(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, "lookup", "web"])
        assert WEB_IP in res.stdout.split(), res.stderr

    def test_jndi(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, "jndi", WEB_FQDN])
        assert res.stdout.split() == [WEB_IP], res.stderr

    def test_refused(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, "http://web:9/"])
        assert res.returncode == 1
        assert "Connection refused" in res.stderr


class TestNode:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.node, "get", URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_resolve_with_c_ares(self, cluster: Cluster, programs: Programs) -> None:
        # c-ares' resolve4 applies no search list: it needs the full name.
        res = cluster.pod_run([*programs.node, "resolve", WEB_FQDN])
        assert res.stdout.split() == [WEB_IP], res.stderr
        res6 = cluster.pod_run([*programs.node, "resolve6", WEB_FQDN])
        assert res6.stdout.split() == [WEB_IP6], res6.stderr

    def test_lookup_with_getaddrinfo(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.node, "lookup", "web"])
        assert sorted(res.stdout.split()) == sorted([WEB_IP, WEB_IP6]), res.stderr

    def test_refused(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.node, "get", f"http://{WEB_IP}:9/"])
        assert res.returncode == 1
        assert "ECONNREFUSED" in res.stderr


class TestBusyboxAndPython:
    def test_busybox_wget(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.busybox, "wget", "-qO-", URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_busybox_nslookup(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.busybox, "nslookup", WEB_FQDN])
        assert res.returncode == 0, res.stdout
        assert DNS_IP in res.stdout
        assert WEB_IP in res.stdout

    def test_python_urllib(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.python_get, URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_dnsq(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.dnsq, WEB_FQDN, "A"])
        assert '"rcode": "NOERROR"' in res.stdout
        assert WEB_IP in res.stdout


def test_programs_are_usable_by_nobody(cluster: Cluster, programs: Programs) -> None:
    """Unprivileged runs trace these same files, so other users must be able to run them."""
    setpriv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    res = cluster.pod_run([*setpriv, programs.goclient, "get", URL], cwd="/")
    assert res.stdout == HELLO, res.stderr
    res = cluster.pod_run([*setpriv, *programs.java, URL], cwd="/", env={"HOME": "/"})
    assert res.stdout == HELLO, res.stderr
