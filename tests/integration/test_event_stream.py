"""What mirrortrace reports about the calls it diverts: --events FILE and --ui.

One traced shell runs three curls: by service name (a DNS query, then a connect), by pod
address, and to a closed port. The events must name each of those calls as COMMAND made
them (``target``), say where they went (``via``) and how they ended (``result``).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cluster import CLOSED_PORT, DNS_IP, WEB_FQDN, WEB_IP, WEB_PORT, Cluster

pytestmark = pytest.mark.integration

KEYS = ("ts", "pid", "comm", "syscall", "kind", "target", "via", "result", "latency_us")
SCRIPT = (
    f"curl -s --max-time 10 http://web:{WEB_PORT}/hello; "
    f"curl -s --max-time 10 http://{WEB_IP}:{WEB_PORT}/hello; "
    f"curl -s --max-time 10 http://{WEB_IP}:{CLOSED_PORT}/; echo refused=$?"
)
EXPECTED_OUT = "hello from web\nhello from web\nrefused=7\n"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def traced(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run with --events FILE and --ui json together: the file, stderr and stdout."""
    events = tmp_path_factory.mktemp("events") / "events.jsonl"
    start = time.time()
    res = cluster.run(["sh", "-c", SCRIPT], mt_args=["--events", str(events), "--ui", "json"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == EXPECTED_OUT, res.stderr
    return {"file": _lines(events), "stderr": res.stderr, "start": start, "end": time.time()}


def _find(events: list[dict[str, Any]], **want: str) -> list[dict[str, Any]]:
    return [e for e in events if all(e.get(k) == v for k, v in want.items())]


def test_every_event_has_the_contract_keys(traced: dict[str, Any]) -> None:
    events = traced["file"]
    assert events
    for event in events:
        missing = [k for k in KEYS if k not in event]
        assert not missing, (missing, event)
        assert isinstance(event["ts"], int | float)
        assert traced["start"] - 1 <= event["ts"] <= traced["end"] + 1, event
        assert isinstance(event["pid"], int) and event["pid"] > 0
        assert isinstance(event["latency_us"], int) and event["latency_us"] >= 0
        assert isinstance(event["result"], str)
        assert (
            event["result"] == "0"
            or event["result"].startswith("-E")
            or (event["kind"] == "dns" and event["result"].startswith("-"))
        ), event
        assert event["kind"] in (
            "dns", "connect", "udp", "open", "stat", "listen", "incoming", "env"
        ), event  # fmt: skip


def test_connect_event(traced: dict[str, Any]) -> None:
    # syscall too: a stream's end is a "close" event of kind connect with the same target.
    events = _find(traced["file"], syscall="connect", kind="connect",
                   target=f"{WEB_IP}:{WEB_PORT}")
    assert events, traced["file"]  # the curl by address (the one by name may use IPv6)
    ok = [e for e in events if e["result"] == "0"]
    assert ok, events
    for event in ok:
        assert "agent" in event["via"], event
        assert event["comm"] == "curl"
        assert event["syscall"] == "connect"


def test_dns_event(traced: dict[str, Any]) -> None:
    queries = _find(traced["file"], kind="dns", target=f"{WEB_FQDN} A")
    assert queries, [e for e in traced["file"] if e["kind"] == "dns"]
    event = queries[0]
    assert event["result"] == "0"
    assert DNS_IP in event["via"] and "agent" in event["via"]
    assert event["comm"] == "curl"
    # The bytes of the query (a 12-byte header and the question) and of the answer.
    assert event["detail"]["sent"] > 12 + len(WEB_FQDN), event
    assert event["detail"]["received"] > event["detail"]["sent"], event  # + the answer
    # The query socket itself: a UDP connect to the pod's nameserver, through the agent.
    udp = _find(traced["file"], kind="udp", target=f"{DNS_IP}:53")
    assert udp and all("agent" in e["via"] and e["result"] == "0" for e in udp), udp


def test_refused_connect_event(traced: dict[str, Any]) -> None:
    events = _find(traced["file"], kind="connect", target=f"{WEB_IP}:{CLOSED_PORT}")
    assert len(events) == 1, traced["file"]
    assert events[0]["result"] == "-ECONNREFUSED"
    assert "agent" in events[0]["via"]


def test_resolver_file_open_events(traced: dict[str, Any]) -> None:
    opened = {e["target"] for e in traced["file"] if e["kind"] == "open" and e["result"] == "0"}
    assert {"/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"} <= opened, opened
    for event in _find(traced["file"], kind="open", target="/etc/resolv.conf"):
        assert event["syscall"] in ("open", "openat", "openat2")
        assert event["via"] == "pod"


def test_events_come_from_the_right_processes(traced: dict[str, Any]) -> None:
    """Three curls, three processes; the shell itself diverts nothing."""
    connects = [e for e in traced["file"] if e["kind"] == "connect"]
    assert {e["comm"] for e in connects} == {"curl"}
    assert len({e["pid"] for e in connects}) == 3, connects


def test_ui_json_prints_the_same_events_on_stderr(traced: dict[str, Any]) -> None:
    printed = [json.loads(line) for line in traced["stderr"].splitlines() if line.strip()]
    events = [e for e in printed if e.get("kind") != "notice"]
    assert events == traced["file"]


def test_ui_plain_prints_readable_lines(cluster: Cluster) -> None:
    res = cluster.run(["sh", "-c", SCRIPT], mt_args=["--ui", "plain"])
    assert res.stdout == EXPECTED_OUT, res.stderr
    lines = res.stderr.splitlines()
    assert lines
    assert not any(line.lstrip().startswith("{") for line in lines), lines
    connect = [ln for ln in lines if "connect" in ln and f"{WEB_IP}:{WEB_PORT}" in ln]
    assert connect and "curl[" in connect[0] and "agent" in connect[0], lines
    assert any(f"{WEB_IP}:{CLOSED_PORT}" in ln and "ECONNREFUSED" in ln for ln in lines), lines
    assert any(f"{WEB_FQDN} A" in ln for ln in lines), lines
    assert any("/etc/resolv.conf" in ln for ln in lines), lines


@pytest.mark.parametrize("ui", [["--ui", "none"], []], ids=["none", "default-not-a-tty"])
def test_ui_none_prints_nothing_of_ours(cluster: Cluster, ui: list[str]) -> None:
    """Only COMMAND's own stderr: here curl's error line for the closed port."""
    script = (
        f"curl -sS --max-time 10 http://web:{WEB_PORT}/hello; curl -sS http://web:{CLOSED_PORT}/"
    )
    in_pod = cluster.pod_run(["sh", "-c", script])
    res = cluster.run(["sh", "-c", script], mt_args=ui)
    assert res.stdout == "hello from web\n"
    assert res.returncode == in_pod.returncode == 7
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("curl: (7) "), res.stderr


def test_events_file_is_written_when_command_fails(cluster: Cluster, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    res = cluster.run(
        ["curl", "-sS", "--max-time", "10", f"http://web:{CLOSED_PORT}/"],
        mt_args=["--events", str(events)],
    )
    assert res.returncode == 7
    refused = [e for e in _lines(events) if e["result"] == "-ECONNREFUSED"]
    assert refused and refused[0]["kind"] == "connect", _lines(events)


def test_every_relayed_stream_ends_in_a_close_event(traced: dict[str, Any]) -> None:
    """One per connect that reached the pod, from the same process, with the same target
    and via (a non-blocking connect the pod was slow to answer shows -EINPROGRESS)."""

    def who(e: dict[str, Any]) -> tuple[int, str, str, str]:
        return e["pid"], e["comm"], e["target"], e["via"]

    connects = _find(traced["file"], syscall="connect", kind="connect")
    done = [who(e) for e in connects if e["result"] == "0" and "agent" in e["via"]]
    maybe = [who(e) for e in connects if e["result"] == "-EINPROGRESS"]
    closed = _find(traced["file"], syscall="close", kind="connect")
    ended = [who(e) for e in closed]
    assert done and len(ended) == len(set(ended)), traced["file"]
    assert set(done) <= set(ended) <= set(done + maybe), traced["file"]
    for event in closed:
        assert event["result"] == "0", event  # the server closed, then curl did
        assert event["detail"]["received"] >= len("hello from web\n"), event


BODY = 3_000_000  # bytes: more than the flow-control window, so the count spans grants
FETCH = textwrap.dedent(f"""
    import socket
    request = b"GET /bytes/{BODY} HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n"
    with socket.create_connection(("{WEB_IP}", {WEB_PORT})) as s:
        s.sendall(request)
        received = 0
        while chunk := s.recv(1 << 16):
            received += len(chunk)
    print(len(request), received)
""")


def test_close_event_counts_the_bytes_of_a_fetch(cluster: Cluster, tmp_path: Path) -> None:
    """A known request and a known-size body: the close event's detail counts both
    exactly, so a replay of the events file has the totals."""
    events = tmp_path / "events.jsonl"
    res = cluster.run([sys.executable, "-I", "-c", FETCH], mt_args=["--events", str(events)])
    assert res.returncode == 0, res.stderr
    request_size, response_size = map(int, res.stdout.split())
    assert response_size > BODY  # the body and the status line and headers
    target = f"{WEB_IP}:{WEB_PORT}"
    [connect] = _find(_lines(events), syscall="connect", target=target)
    [close] = _find(_lines(events), syscall="close", target=target)
    assert connect["result"] == "0", connect
    assert (close["kind"], close["via"], close["pid"], close["comm"], close["result"]) == (
        "connect", connect["via"], connect["pid"], connect["comm"], "0")
    assert close["detail"] == {"sent": request_size, "received": response_size}, close
    assert close["ts"] >= connect["ts"]
    assert 0 < close["latency_us"] < 60e6
