"""Name resolution of a traced program is the pod's, for every resolver.

Each resolver reads /etc/resolv.conf and /etc/hosts itself and talks to the nameserver in
its own way (glibc: sendmmsg of A+AAAA on a connected socket; musl: parallel queries that
must come back from the configured server's address; Go: its own UDP and TCP code; c-ares
and JNDI: their own resolv.conf parsers). The reference is always the same program run in the
pod; the baseline is the same program failing in the laptop namespace, whose resolv.conf
names a loopback port where nothing answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import (
    DB_IP,
    DNS_IP,
    POD_HOSTNAME,
    POD_HOSTS,
    POD_IP,
    POD_RESOLV_CONF,
    SRV_NAME,
    WEB_FQDN,
    WEB_IP,
    WEB_IP6,
    Cluster,
)
from programs import Programs

pytestmark = pytest.mark.integration

HELLO = "hello from web\n"
CLIENTS_DIR = Path(__file__).resolve().parent.parent / "programs" / "clients"


def _py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-I", "-c", textwrap.dedent(code), *args]


def _parity(
    cluster: Cluster, argv: list[str], *, ok: bool = True, baseline: bool = True
) -> subprocess.CompletedProcess:
    """Run argv in the pod and traced from the laptop; both must print and exit the same.

    With ok=True the pod run must succeed and (with baseline=True) the untraced laptop run
    must fail, or at least not print the pod's answer, so the traced run's match can only
    come from mirrortrace. (baseline=False where the same program's baseline is checked in
    another case already and costs a resolver timeout.)
    """
    in_pod = cluster.pod_run(argv, timeout=30)
    if ok:
        assert in_pod.returncode == 0, in_pod.stderr
        assert in_pod.stdout.strip(), "the pod run printed nothing"
    if ok and baseline:
        base = cluster.laptop_run(argv, timeout=30)
        assert (base.returncode, base.stdout) != (0, in_pod.stdout), base.stdout
    traced = cluster.run(argv, timeout=30)
    assert (traced.returncode, traced.stdout) == (in_pod.returncode, in_pod.stdout), (
        f"pod: {in_pod.returncode} {in_pod.stdout!r} {in_pod.stderr!r}\n"
        f"traced: {traced.returncode} {traced.stdout!r} {traced.stderr!r}"
    )
    return traced


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- glibc


@pytest.mark.parametrize(
    "argv",
    [
        ["getent", "hosts", "web"],
        ["getent", "hosts", "web.default"],
        ["getent", "hosts", "db.other"],
        ["getent", "hosts", "www"],  # a CNAME to web
        ["getent", "hosts", f"{WEB_FQDN}."],
        ["getent", "hosts", POD_HOSTNAME],  # the pod's /etc/hosts
    ],
    ids=["short", "name.namespace", "other-namespace", "cname", "fqdn-dot", "pod-hosts-file"],
)
def test_getent_hosts(cluster: Cluster, argv: list[str]) -> None:
    _parity(cluster, argv)


def test_getent_ahosts_same_addresses(cluster: Cluster) -> None:
    """getaddrinfo(AF_UNSPEC) of web.default finds the same set of addresses as in the pod."""
    argv = ["getent", "ahosts", "web.default"]
    in_pod = cluster.pod_run(argv)
    assert in_pod.returncode == 0
    assert cluster.laptop_run(argv).returncode == 2
    traced = cluster.run(argv)
    assert traced.returncode == 0, traced.stderr
    assert sorted(traced.stdout.split()) == sorted(in_pod.stdout.split())
    assert {WEB_IP, WEB_IP6, WEB_FQDN} <= set(traced.stdout.split())


def test_getaddrinfo_order_is_the_pods(cluster: Cluster) -> None:
    """getaddrinfo sorts its answers (RFC 6724) by the source address each destination would
    get, which glibc learns by connecting a UDP socket to it and calling getsockname. In the
    pod, IPv6 comes first; the traced program must get the same order."""
    _parity(cluster, ["getent", "ahosts", "web.default"])


def test_nxdomain(cluster: Cluster) -> None:
    """An unknown name is "not found" (exit 2), after asking the pod's nameserver."""
    argv = ["getent", "hosts", "nope"]
    assert cluster.pod_run(argv).returncode == 2
    traced = cluster.run(argv, mt_args=["--ui", "json"])
    assert traced.returncode == 2, traced.stderr
    queries = [json.loads(x) for x in traced.stderr.splitlines() if '"kind": "dns"' in x]
    assert any(q["target"].startswith("nope.default.svc.cluster.local") for q in queries), (
        traced.stderr
    )
    assert all(q["result"] == "-NXDOMAIN" for q in queries if q["target"].startswith("nope."))


def test_glibc_sendmmsg_a_and_aaaa(cluster: Cluster, tmp_path: Path) -> None:
    """glibc sends the A and AAAA queries together with one sendmmsg on a connected socket;
    both must reach the pod's nameserver and both answers come back."""
    if shutil.which("strace"):
        # Precondition: this glibc really uses sendmmsg for it (seen in the pod, untraced).
        seen = cluster.pod_run(["strace", "-f", "-e", "trace=sendmmsg", "getent", "ahosts", "web"])
        assert "sendmmsg(" in seen.stderr, seen.stderr
    events = tmp_path / "events.jsonl"
    traced = cluster.run(["getent", "ahosts", "web"], mt_args=["--events", str(events)])
    assert traced.returncode == 0, traced.stderr
    assert {WEB_IP, WEB_IP6} <= set(traced.stdout.split())
    dns = {e["target"]: e["result"] for e in _events(events) if e["kind"] == "dns"}
    assert dns.get(f"{WEB_FQDN} A") == "0", dns
    assert dns.get(f"{WEB_FQDN} AAAA") == "0", dns


def test_python_getaddrinfo(cluster: Cluster) -> None:
    code = """
        import socket, sys
        for name in sys.argv[1:]:
            infos = socket.getaddrinfo(name, 8080, type=socket.SOCK_STREAM)
            print(name, sorted({i[4][0] for i in infos}))
    """
    _parity(cluster, _py(code, "web", "web.default", "db.other", "www", f"{WEB_FQDN}."))


def test_python_getaddrinfo_per_family(cluster: Cluster) -> None:
    """A (AF_INET) and AAAA (AF_INET6) lookups, without AI_ADDRCONFIG."""
    code = """
        import socket
        for fam in (socket.AF_INET, socket.AF_INET6):
            print(sorted({i[4][0] for i in socket.getaddrinfo("web", 80, fam)}))
    """
    traced = _parity(cluster, _py(code))
    assert traced.stdout.splitlines() == [f"['{WEB_IP}']", f"['{WEB_IP6}']"]


@pytest.mark.parametrize("family", ["ahostsv4", "ahostsv6"])
def test_getent_single_family_addrconfig(cluster: Cluster, family: str) -> None:
    """getent ahostsv4/ahostsv6 ask getaddrinfo with AI_ADDRCONFIG: glibc first checks over
    netlink which address families have a non-loopback address configured. The pod has
    both, so the pod answers; the traced program must get the pod's answer. (It sees the
    laptop's interfaces, which have IPv4 and, being up, an IPv6 link-local address, as
    real laptops do; a laptop with IPv6 disabled would drop AAAA answers here.)"""
    traced = _parity(cluster, ["getent", family, "web"])
    assert (WEB_IP if family == "ahostsv4" else WEB_IP6) in traced.stdout


# --------------------------------------------------------------------------- busybox (raw DNS)


@pytest.mark.parametrize(
    "args",
    [["web"], ["-type=AAAA", "web"], ["-type=SRV", SRV_NAME], ["nope"]],
    ids=["A-short", "AAAA", "SRV", "NXDOMAIN"],
)
def test_busybox_nslookup(cluster: Cluster, programs: Programs, args: list[str]) -> None:
    """busybox nslookup sends its own queries to the resolv.conf server and prints it."""
    argv = [programs.busybox, "nslookup", *args]
    traced = _parity(cluster, argv, ok=False)
    assert f"Address:\t{DNS_IP}:53" in traced.stdout
    if args == ["web"]:
        baseline = cluster.laptop_run(argv)  # costs busybox's 5 s timeout: once is enough
        assert DNS_IP not in baseline.stdout
        assert WEB_FQDN not in baseline.stdout
    if args[-1] == "nope":
        assert "NXDOMAIN" in traced.stdout
    if "-type=SRV" in args:
        assert f"service = 0 0 8080 {WEB_FQDN}" in traced.stdout
    elif args[-1] != "nope":
        assert WEB_FQDN in traced.stdout


def test_raw_udp_query_source_is_the_nameserver(cluster: Cluster) -> None:
    """An unconnected UDP socket: sendto 198.18.0.53:53, recvfrom says the reply came from
    198.18.0.53:53 (not from a loopback relay), as musl and others check."""
    code = f"""
        import socket, struct
        q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        for label in "{WEB_FQDN}".split("."):
            q += bytes([len(label)]) + label.encode()
        q += b"\\0" + struct.pack("!HH", 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(q, ("{DNS_IP}", 53))
        data, src = s.recvfrom(4096)
        print("from", src[0], src[1], "id", hex(struct.unpack("!H", data[:2])[0]))
        print("answer", socket.inet_ntoa(data[-4:]))
    """
    traced = _parity(cluster, _py(code))
    assert traced.stdout.splitlines() == [f"from {DNS_IP} 53 id 0x1234", f"answer {WEB_IP}"]


@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["udp", "tcp"])
def test_dnsq_raw_queries(cluster: Cluster, programs: Programs, transport: list[str]) -> None:
    """A raw query tool reading resolv.conf itself, over UDP and over TCP."""
    for name, qtype in ((WEB_FQDN, "A"), (WEB_FQDN, "AAAA"), (SRV_NAME, "SRV"), ("nope", "A")):
        argv = [*programs.dnsq, *transport, name, qtype]
        in_pod = json.loads(cluster.pod_run(argv).stdout)
        traced = cluster.run(argv)
        assert traced.returncode == 0, traced.stderr
        got = json.loads(traced.stdout)
        assert got["server"] == DNS_IP
        assert (got["rcode"], got["answers"]) == (in_pod["rcode"], in_pod["answers"])


# --------------------------------------------------------------------------- musl


@pytest.mark.parametrize("host", ["web", "web.default", f"{WEB_FQDN}.", "www"])
def test_musl_getaddrinfo(cluster: Cluster, programs: Programs, host: str) -> None:
    """musl's resolver (static binary): search list, FQDN, CNAME; replies must come from the
    configured nameserver's address or musl drops them."""
    argv = [programs.muslclient, host, "8080", "/hello"]
    traced = _parity(cluster, argv, baseline=host == "web")  # each baseline costs 5 s
    assert traced.stdout == HELLO


def test_musl_nxdomain(cluster: Cluster, programs: Programs) -> None:
    argv = [programs.muslclient, "nope", "8080", "/"]
    in_pod = cluster.pod_run(argv)
    traced = cluster.run(argv)
    assert (traced.returncode, traced.stderr) == (in_pod.returncode, in_pod.stderr)
    assert traced.stderr == "getaddrinfo: Name does not resolve\n"


# --------------------------------------------------------------------------- Go


@pytest.mark.parametrize(
    "args",
    [
        ["lookup", "web"],
        ["lookup", "db.other"],
        ["lookup", f"{WEB_FQDN}."],
        ["lookup", "www"],
        ["srv", "http", "tcp", "web"],
        ["srv", "http", "tcp", WEB_FQDN],
        ["hostname"],
    ],
    ids=["short", "other-namespace", "fqdn-dot", "cname", "srv-short", "srv-fqdn", "hostname"],
)
def test_go_pure_resolver(cluster: Cluster, programs: Programs, args: list[str]) -> None:
    _parity(cluster, [programs.goclient, *args])


def test_go_aaaa(cluster: Cluster, programs: Programs) -> None:
    traced = _parity(cluster, [programs.goclient, "lookup", "web"])
    assert traced.stdout.split() == [WEB_IP, WEB_IP6]


def test_go_nxdomain(cluster: Cluster, programs: Programs) -> None:
    argv = [programs.goclient, "lookup", "nope"]
    traced = cluster.run(argv)
    assert traced.returncode == 1
    assert traced.stderr == f"error: lookup nope on {DNS_IP}:53: no such host\n"
    assert traced.stderr == cluster.pod_run(argv).stderr


def test_go_lookups_lose_no_replies(cluster: Cluster, programs: Programs) -> None:
    """Go sends A and AAAA from two sockets at once. A reply lost on the way back costs Go
    a 5 s timeout per lookup; in the pod a lookup takes milliseconds."""
    argv = [programs.goclient, "stress", "16", "http://web:8080/hello", "4"]
    start = time.monotonic()
    traced = cluster.run(argv, timeout=30)
    elapsed = time.monotonic() - start
    assert (traced.returncode, traced.stdout) == (0, "ok 64\n"), traced.stderr
    assert elapsed < 4.5, f"64 lookups + GETs took {elapsed:.1f} s: DNS replies were lost"
    for _ in range(3):
        start = time.monotonic()
        one = cluster.run([programs.goclient, "lookup", "web"])
        assert one.stdout.split() == [WEB_IP, WEB_IP6], one.stderr
        assert time.monotonic() - start < 4.5, "a single Go lookup waited for a timeout"


@pytest.fixture(scope="module")
def gotcpdns() -> Iterator[str]:
    """tests/programs/clients/gotcpdns, built static (a Go resolver that only dials TCP)."""
    go = shutil.which("go")
    if not go:
        pytest.skip("no Go toolchain (apt-get install golang-go)")
    out = Path(tempfile.mkdtemp(prefix="mt-gotcpdns-"))
    out.chmod(0o755)
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOCACHE": str(out / "cache"),
        "GOPATH": str(out / "gopath"),
    }
    binary = out / "gotcpdns"
    build = subprocess.run(
        [go, "build", "-ldflags=-s -w", "-o", str(binary), "."],
        cwd=CLIENTS_DIR / "gotcpdns",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert build.returncode == 0, build.stderr
        binary.chmod(0o755)
        yield str(binary)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize(
    "args",
    [["lookup", "web"], ["lookup", "nope"], ["srv", "http", "tcp", "web"]],
    ids=["lookup", "nxdomain", "srv"],
)
def test_go_resolver_over_tcp(cluster: Cluster, gotcpdns: str, args: list[str]) -> None:
    """Go's resolver over TCP (what it falls back to for a truncated answer): the TCP
    connection to the pod's nameserver port 53 leaves from the pod."""
    argv = [gotcpdns, *args]
    in_pod = cluster.pod_run(argv)
    baseline = cluster.laptop_run(argv)
    assert baseline.returncode == 1
    assert "127.0.0.53" in baseline.stderr
    traced = cluster.run(argv)
    assert (traced.returncode, traced.stdout, traced.stderr) == (
        in_pod.returncode,
        in_pod.stdout,
        in_pod.stderr,
    )
    if args[-1] == "nope":
        assert "no such host" in traced.stderr
    else:
        assert traced.stdout.splitlines()[-1] == f"dialed tcp {DNS_IP}:53"


def test_go_tcp_dns_is_a_diverted_connect(cluster: Cluster, gotcpdns: str, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    traced = cluster.run([gotcpdns, "lookup", "web"], mt_args=["--events", str(events)])
    assert traced.returncode == 0, traced.stderr
    connects = [e for e in _events(events) if e["kind"] == "connect"]
    assert connects, _events(events)
    for event in connects:
        assert event["target"] == f"{DNS_IP}:53"
        assert "agent" in event["via"]
        assert event["result"] == "0"


# --------------------------------------------------------------------------- JVM and Node


@pytest.mark.parametrize("name", ["web", "web.default", POD_HOSTNAME, "db.other"])
def test_java_inetaddress(cluster: Cluster, programs: Programs, name: str) -> None:
    _parity(cluster, [*programs.java, "lookup", name])


@pytest.mark.parametrize(
    "name", [WEB_FQDN, f"{WEB_FQDN}.", "web", "nope.default.svc.cluster.local"]
)
def test_java_jndi_dns(cluster: Cluster, programs: Programs, name: str) -> None:
    """JNDI's DNS provider parses resolv.conf itself and sends its own queries."""
    ok = name.startswith(WEB_FQDN)
    traced = _parity(cluster, [*programs.java, "jndi", name], ok=ok)
    if ok:
        assert traced.stdout == f"{WEB_IP}\n"
    else:
        assert "NameNotFoundException" in traced.stderr


def test_node_dns_lookup_addresses(cluster: Cluster, programs: Programs) -> None:
    """dns.lookup (getaddrinfo on libuv's thread pool): the pod's addresses."""
    argv = [*programs.node, "lookup", "web"]
    in_pod = cluster.pod_run(argv)
    assert in_pod.returncode == 0
    assert cluster.laptop_run(argv).returncode == 1
    traced = cluster.run(argv)
    assert traced.returncode == 0, traced.stderr
    assert sorted(traced.stdout.split()) == sorted(in_pod.stdout.split()) == [WEB_IP, WEB_IP6]


@pytest.mark.parametrize(
    ("cmd", "name"),
    [
        ("resolve", WEB_FQDN),
        ("resolve6", WEB_FQDN),
        ("resolve", "db.other.svc.cluster.local"),
        ("resolve", "web"),
        ("resolve", "nope.default.svc.cluster.local"),
    ],
)
def test_node_c_ares(cluster: Cluster, programs: Programs, cmd: str, name: str) -> None:
    """c-ares reads resolv.conf itself; whatever it makes of the search list, the traced
    answer is the pod's (here c-ares does not search short names: ENOTFOUND in both)."""
    argv = [*programs.node, cmd, name]
    traced = _parity(cluster, argv, ok=name != "web" and not name.startswith("nope"))
    if name == WEB_FQDN:
        assert traced.stdout == (f"{WEB_IP}\n" if cmd == "resolve" else f"{WEB_IP6}\n")
    if name == "db.other.svc.cluster.local":
        assert traced.stdout == f"{DB_IP}\n"


# --------------------------------------------------------------------------- hostname


def test_hostname_is_the_pods(cluster: Cluster) -> None:
    assert cluster.laptop_run(["hostname"]).stdout.strip() != POD_HOSTNAME
    for argv in (["hostname"], ["uname", "-n"]):
        traced = cluster.run(argv)
        assert traced.stdout == f"{POD_HOSTNAME}\n", (argv, traced.stderr)


def test_hostname_resolves_to_the_pod_ip(cluster: Cluster) -> None:
    """The hostname a program sees and the address it resolves to agree, as in the pod."""
    code = """
        import os, socket
        name = socket.gethostname()
        print(name, os.uname().nodename)
        print(sorted({i[4][0] for i in socket.getaddrinfo(name, None)}))
        print(socket.gethostbyname(socket.getfqdn()))
    """
    traced = _parity(cluster, _py(code))
    assert traced.stdout.splitlines()[:2] == [f"{POD_HOSTNAME} {POD_HOSTNAME}", f"['{POD_IP}']"]
    shell = cluster.run(["sh", "-c", 'getent hosts "$(hostname)"; hostname -i'])
    assert shell.stdout.split() == [POD_IP, POD_HOSTNAME, POD_IP], shell.stderr


# --------------------------------------------------------------------------- the files, --no-dns


def test_resolver_files_are_the_pods(cluster: Cluster) -> None:
    traced = cluster.run(["cat", "/etc/resolv.conf", "/etc/hosts"])
    assert traced.stdout == POD_RESOLV_CONF + POD_HOSTS, traced.stderr
    nsswitch = cluster.run(["cat", "/etc/nsswitch.conf"]).stdout
    hosts = [line for line in nsswitch.splitlines() if line.startswith("hosts:")]
    assert hosts == ["hosts: files dns"], nsswitch


def test_no_dns_gives_back_the_laptops_resolution(cluster: Cluster) -> None:
    """--no-dns: the laptop's resolver files and nameserver again, so `web` is unknown."""
    argv = ["getent", "hosts", "web"]
    assert cluster.run(argv).returncode == 0
    traced = cluster.run(argv, mt_args=["--no-dns"])
    assert traced.returncode == 2, traced.stdout
    conf = cluster.run(["cat", "/etc/resolv.conf"], mt_args=["--no-dns"]).stdout
    assert DNS_IP not in conf
    assert conf == cluster.laptop_run(["cat", "/etc/resolv.conf"]).stdout
    # Connections by address still go to the pod: only name resolution changed.
    curl = cluster.run(
        ["curl", "-sS", "--max-time", "10", f"http://{WEB_IP}:8080/hello"], mt_args=["--no-dns"]
    )
    assert curl.stdout == HELLO, curl.stderr
