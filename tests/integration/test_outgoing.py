"""Outgoing connections of a traced program leave from the pod.

Every test here has three sides: the client run in the pod itself (the reference), the same
client run in the laptop namespace without mirrortrace (which must FAIL: there is no route
and no nameserver there), and the client run through mirrortrace from the laptop (which must
give the pod's answer). Only the third side passing while the second fails shows that the
supervisor diverted the call.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster import (
    CLOSED_PORT,
    WEB_IP,
    WEB_IP6,
    WEB_PORT,
    Cluster,
    connect_errno_script,
    expected_bytes_sha256,
)
from programs import Programs

pytestmark = pytest.mark.integration

HELLO = "hello from web\n"
POD_NETS = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:2::/48"))
CURL = ["curl", "-sS", "--max-time", "15"]

# A client is a function of (programs, host, port, path) giving the argv of one HTTP GET
# whose body goes to stdout and whose failure is a non-zero exit.
Client = Callable[[Programs, str, int, str], list[str]]


def _url(host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


CLIENTS: dict[str, Client] = {
    "curl": lambda p, h, port, path: [*CURL, _url(h, port, path)],
    "python-urllib": lambda p, h, port, path: [*p.python_get, _url(h, port, path)],
    "busybox-wget": lambda p, h, port, path: [p.busybox, "wget", "-qO-", _url(h, port, path)],
    "go-static": lambda p, h, port, path: [p.goclient, "get", _url(h, port, path)],
    "musl-static": lambda p, h, port, path: [p.muslclient, h, str(port), path],
    "java": lambda p, h, port, path: [*p.java, _url(h, port, path)],
    "node": lambda p, h, port, path: [*p.node, "get", _url(h, port, path)],
}


def _is_pod_address(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return any(ip in net for net in POD_NETS)


def _py(code: str) -> list[str]:
    """argv running a Python snippet with the interpreter the tests run on."""
    return [sys.executable, "-I", "-c", textwrap.dedent(code)]


# --------------------------------------------------------------------------- every client


@pytest.mark.parametrize("name", list(CLIENTS))
def test_get_short_service_name(cluster: Cluster, programs: Programs, name: str) -> None:
    """GET http://web:8080/hello: short name via the pod's search domains, then the pod's
    route. Same body as in the pod; without mirrortrace the laptop cannot do it."""
    argv = CLIENTS[name](programs, "web", WEB_PORT, "/hello")
    in_pod = cluster.pod_run(argv, timeout=30)
    assert (in_pod.returncode, in_pod.stdout) == (0, HELLO), in_pod.stderr
    baseline = cluster.laptop_run(argv, timeout=30)
    assert baseline.returncode != 0, baseline.stdout
    assert "hello" not in baseline.stdout
    traced = cluster.run(argv, timeout=30)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == in_pod.stdout


@pytest.mark.parametrize("name", list(CLIENTS))
def test_whoami_is_a_pod_address(cluster: Cluster, programs: Programs, name: str) -> None:
    """The web server sees the connection coming from the pod, never from the laptop."""
    argv = CLIENTS[name](programs, "web", WEB_PORT, "/whoami")
    before = cluster.web_log.read_text() if cluster.web_log.exists() else ""
    traced = cluster.run(argv, timeout=30)
    assert traced.returncode == 0, traced.stderr
    seen = traced.stdout.strip()
    assert _is_pod_address(seen), f"web saw {seen!r}"
    assert not ipaddress.ip_address(seen).is_loopback
    new = cluster.web_log.read_text()[len(before) :].splitlines()
    whoami = [line for line in new if " GET /whoami " in line]
    assert whoami, new
    assert all(_is_pod_address(line.split()[0]) for line in whoami), whoami


# --------------------------------------------------------------------------- refused


def test_closed_port_is_refused_fast_curl(cluster: Cluster) -> None:
    """A closed port in the pod is ECONNREFUSED for the app too (curl: exit 7), at once."""
    argv = [*CURL, f"http://web:{CLOSED_PORT}/"]
    in_pod = cluster.pod_run(argv)
    assert in_pod.returncode == 7, in_pod.stderr
    start = time.monotonic()
    traced = cluster.run(argv, timeout=20)
    elapsed = time.monotonic() - start
    assert traced.returncode == 7, traced.stderr
    assert "Couldn't connect" in traced.stderr or "refused" in traced.stderr, traced.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s: a refused connect must not wait for a timeout"


def test_closed_port_is_refused_go(cluster: Cluster, programs: Programs) -> None:
    argv = [programs.goclient, "dial", f"web:{CLOSED_PORT}"]
    in_pod = cluster.pod_run(argv)
    assert in_pod.returncode == 1
    assert "connection refused" in in_pod.stderr
    start = time.monotonic()
    traced = cluster.run(argv, timeout=20)
    assert traced.returncode == 1, traced.stdout
    assert "connection refused" in traced.stderr, traced.stderr
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("host", [WEB_IP, WEB_IP6])
def test_closed_port_errno_parity(cluster: Cluster, host: str) -> None:
    """The raw errno of connect(2) to a closed port is the pod's: ECONNREFUSED."""
    argv = connect_errno_script(host, CLOSED_PORT)
    assert cluster.pod_run(argv).stdout.strip() == "ECONNREFUSED"
    assert cluster.laptop_run(argv).stdout.strip() == "ENETUNREACH"
    traced = cluster.run(argv, timeout=20)
    assert traced.stdout.strip() == "ECONNREFUSED", traced.stderr


# --------------------------------------------------------------------------- volume


def test_50_mib_download_is_byte_exact(cluster: Cluster, tmp_path: Path) -> None:
    """50 MiB through the relay and the channel, compared by sha256 with what was sent."""
    size = 50 * 1024 * 1024
    out = tmp_path / "download.bin"
    argv = [
        "curl",
        "-sS",
        "--max-time",
        "50",
        "-o",
        str(out),
        f"http://web:{WEB_PORT}/bytes/{size}",
    ]
    start = time.monotonic()
    traced = cluster.run(argv, timeout=60)
    elapsed = time.monotonic() - start
    assert traced.returncode == 0, traced.stderr
    assert out.stat().st_size == size
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == expected_bytes_sha256(size)
    assert elapsed < 60


def test_go_download_sha_matches(cluster: Cluster, programs: Programs) -> None:
    """The static Go client's own sha256 of a 5 MB body matches the pod's stream."""
    size = 5_000_011
    traced = cluster.run([programs.goclient, "get", "-sha", f"http://web:8080/bytes/{size}"])
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.split() == [str(size), expected_bytes_sha256(size)]


CONCURRENT = """
    import hashlib, sys, threading, time, urllib.request
    from concurrent.futures import ThreadPoolExecutor
    N = 50
    barrier = threading.Barrier(N)

    def stream(n):
        out, i = b"", 0
        while len(out) < n:
            out += hashlib.sha256(i.to_bytes(8, "big")).digest()
            i += 1
        return out[:n]

    def one(i):
        barrier.wait(timeout=30)
        slow = urllib.request.urlopen("http://web:8080/slow?ms=1500", timeout=30).read()
        assert slow == b"slow 1500\\n", slow
        n = 10000 + 997 * i
        body = urllib.request.urlopen(f"http://web:8080/bytes/{n}", timeout=30).read()
        assert body == stream(n), (i, len(body))
        who = urllib.request.urlopen("http://web:8080/whoami", timeout=30).read()
        return who.decode().strip()

    start = time.monotonic()
    with ThreadPoolExecutor(N) as pool:
        whos = list(pool.map(one, range(N)))
    print("ok", len(whos), round(time.monotonic() - start, 1))
    print(" ".join(sorted(set(whos))))
"""


def test_50_concurrent_connections_from_threads(cluster: Cluster) -> None:
    """50 threads connect at once; every body is checked. Each first waits 1.5 s on the
    server, so the run only finishes in time if the 50 connections really overlap."""
    argv = _py(CONCURRENT)
    baseline = cluster.laptop_run(argv, timeout=30)
    assert baseline.returncode != 0
    traced = cluster.run(argv, timeout=30)
    assert traced.returncode == 0, traced.stderr[-3000:]
    first, whos = traced.stdout.splitlines()
    word, count, seconds = first.split()
    assert (word, count) == ("ok", "50")
    assert float(seconds) < 15, f"50 x 1.5 s took {seconds} s: connections were serialised"
    assert all(_is_pod_address(w) for w in whos.split()), whos


# --------------------------------------------------------------------------- processes


def test_shell_pipeline(cluster: Cluster) -> None:
    """curl forked by a shell, its output piped into another program."""
    argv = ["sh", "-c", f"curl -sS --max-time 15 http://web:{WEB_PORT}/hello | tr a-z A-Z"]
    assert cluster.pod_run(argv).stdout == "HELLO FROM WEB\n"
    assert cluster.laptop_run(argv).stdout == ""
    traced = cluster.run(argv)
    assert (traced.returncode, traced.stdout) == (0, "HELLO FROM WEB\n"), traced.stderr


def test_nested_shells_then_python(cluster: Cluster) -> None:
    """sh -> sh -> python: two fork/exec levels down, the connection still leaves the pod."""
    code = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode().strip())"
    inner = f'{sys.executable} -I -c "{code}" http://web:{WEB_PORT}/whoami'
    argv = ["sh", "-c", f"sh -c '{inner}'"]
    assert cluster.laptop_run(argv).returncode != 0
    traced = cluster.run(argv)
    assert traced.returncode == 0, traced.stderr
    assert _is_pod_address(traced.stdout), traced.stdout


FORKS = f"""
    import os, subprocess, sys, urllib.request

    def get(path):
        return urllib.request.urlopen("http://web:{WEB_PORT}" + path, timeout=15).read()

    pid = os.fork()
    if pid == 0:
        os._exit(0 if get("/hello") == b"hello from web\\n" else 3)
    _, status = os.waitpid(pid, 0)
    print("forked child", os.waitstatus_to_exitcode(status))
    out = subprocess.run(["curl", "-sS", "--max-time", "15", "http://web:{WEB_PORT}/hello"],
                         capture_output=True, text=True)
    print("subprocess", out.returncode, out.stdout.strip())
    print("parent", get("/hello").decode().strip())
"""


def test_fork_and_subprocess_children(cluster: Cluster) -> None:
    """A forked child (no exec), an exec'd subprocess and the parent itself all connect."""
    traced = cluster.run(_py(FORKS))
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.splitlines() == [
        "forked child 0",
        "subprocess 0 hello from web",
        "parent hello from web",
    ]


# --------------------------------------------------------------------------- what stays local


def test_local_cidr_keeps_destination_local(cluster: Cluster) -> None:
    """--local-cidr 198.18.0.0/24 makes 198.18.0.10 local: the laptop has no route to it, so
    the connect now fails with ENETUNREACH where without the option it works."""
    argv = connect_errno_script(WEB_IP, WEB_PORT)
    assert cluster.run(argv).stdout.strip() == "ok"
    traced = cluster.run(argv, mt_args=["--local-cidr", "198.18.0.0/24"])
    assert traced.stdout.strip() == "ENETUNREACH", traced.stderr
    # A CIDR that does not cover the destination changes nothing; v6 is still diverted.
    other = cluster.run(argv, mt_args=["--local-cidr", "198.18.1.0/24"])
    assert other.stdout.strip() == "ok", other.stderr
    v6 = connect_errno_script(WEB_IP6, WEB_PORT)
    assert cluster.run(v6, mt_args=["--local-cidr", "198.18.0.0/24"]).stdout.strip() == "ok"
    assert cluster.run(v6, mt_args=["--local-cidr", "2001:2::/48"]).stdout.strip() == "ENETUNREACH"


def test_local_cidr_with_curl(cluster: Cluster) -> None:
    argv = [*CURL, f"http://{WEB_IP}:{WEB_PORT}/hello"]
    assert cluster.run(argv).stdout == HELLO
    traced = cluster.run(argv, mt_args=["--local-cidr", "198.18.0.0/24"])
    assert traced.returncode == 7, traced.stderr
    assert "hello" not in traced.stdout


def test_outgoing_local(cluster: Cluster) -> None:
    """--outgoing local: connects are the laptop's own (ENETUNREACH here), but names are still
    the pod's, since DNS goes to the pod's nameserver either way."""
    argv = connect_errno_script(WEB_IP, WEB_PORT)
    traced = cluster.run(argv, mt_args=["--outgoing", "local"])
    assert traced.stdout.strip() == "ENETUNREACH", traced.stderr
    curl = cluster.run([*CURL, f"http://web:{WEB_PORT}/hello"], mt_args=["--outgoing", "local"])
    assert curl.returncode == 7, curl.stderr  # resolved (not 6), then could not connect
    names = cluster.run(["getent", "hosts", "web"], mt_args=["--outgoing", "local"])
    assert names.returncode == 0, names.stderr
    assert names.stdout.split()[0] in (WEB_IP, WEB_IP6)


LOOPBACK = """
    import http.server, os, subprocess, sys, threading, urllib.request
    os.chdir(sys.argv[1])
    with open("local.txt", "w") as f:
        f.write("served on the laptop\\n")
    handler = http.server.SimpleHTTPRequestHandler
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = urllib.request.urlopen(f"http://127.0.0.1:{port}/local.txt", timeout=10).read()
    print("python", local.decode().strip())
    out = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/local.txt"],
                         capture_output=True, text=True)
    print("curl", out.returncode, out.stdout.strip())
    remote = urllib.request.urlopen("http://web:8080/hello", timeout=10).read()
    print("remote", remote.decode().strip())
    server.shutdown()
"""


def test_loopback_stays_local(cluster: Cluster, tmp_path: Path) -> None:
    """A server on 127.0.0.1 started by the traced program is reachable by it (and by its
    children), while web:8080 in the same run still comes from the pod."""
    tmp_path.chmod(0o755)
    traced = cluster.run([*_py(LOOPBACK), str(tmp_path)])
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.splitlines() == [
        "python served on the laptop",
        "curl 0 served on the laptop",
        "remote hello from web",
    ]


def test_ipv6_literal_with_curl(cluster: Cluster) -> None:
    url = f"http://[{WEB_IP6}]:{WEB_PORT}"
    assert cluster.laptop_run([*CURL, url + "/hello"]).returncode == 7
    traced = cluster.run([*CURL, url + "/hello"])
    assert (traced.returncode, traced.stdout) == (0, HELLO), traced.stderr
    who = cluster.run([*CURL, url + "/whoami"]).stdout.strip()
    assert ipaddress.ip_address(who) in POD_NETS[1], who


def test_getpeername_shows_the_remote(cluster: Cluster) -> None:
    """The app sees the address it connected to, never the loopback relay."""
    code = f"""
        import socket
        for host in ("{WEB_IP}", "{WEB_IP6}", "web.default.svc.cluster.local."):
            s = socket.create_connection((host, {WEB_PORT}), timeout=10)
            print(s.getpeername()[0], s.getpeername()[1])
            s.close()
    """
    traced = cluster.run(_py(code))
    assert traced.returncode == 0, traced.stderr
    lines = traced.stdout.splitlines()
    assert lines[:2] == [f"{WEB_IP} {WEB_PORT}", f"{WEB_IP6} {WEB_PORT}"]
    assert lines[2] in (f"{WEB_IP} {WEB_PORT}", f"{WEB_IP6} {WEB_PORT}")


def test_getpeername_right_after_connect_never_shows_the_relay(cluster: Cluster) -> None:
    """The relay accepts in its own thread; the program may ask who it is connected to
    the instant connect() returns, before that accept ran. Ask at once, many times."""
    code = f"""
        import socket
        wrong = []
        for i in range(300):
            host = ("{WEB_IP}", "{WEB_IP6}")[i % 2]
            s = socket.create_connection((host, {WEB_PORT}), timeout=10)
            peer = s.getpeername()[:2]
            if peer != (host, {WEB_PORT}):
                wrong.append(peer)
            s.close()
        print(len(wrong), wrong[:3])
    """
    traced = cluster.run(_py(code), timeout=120)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.strip() == "0 []"
