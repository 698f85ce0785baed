"""The demo pod's DNS responder, and the demo's checks before it makes namespaces."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import demo, demo_pod
from supervisor.demo_pod import (
    DnsFormatError,
    build_query,
    build_response,
    parse_query,
)

RECORDS = {"web.demo.svc.cluster.local": "198.18.0.10"}


def header(message: bytes) -> tuple[int, ...]:
    return struct.unpack_from("!HHHHHH", message)


def test_hand_built_query_parses() -> None:
    # id 0xbeef, RD, one question: web.demo.svc.cluster.local A IN
    query = (
        b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        b"\x03web\x04demo\x03svc\x07cluster\x05local\x00"
        b"\x00\x01\x00\x01"
    )
    qid, flags, name, qtype, qclass, end = parse_query(query)
    assert (qid, flags, name, qtype, qclass, end) == (
        0xBEEF,
        0x0100,
        "web.demo.svc.cluster.local",
        1,
        1,
        len(query),
    )
    assert build_query("web.demo.svc.cluster.local", qid=0xBEEF) == query


def test_a_query_for_the_service_gets_its_address() -> None:
    query = build_query("web.demo.svc.cluster.local", qid=7)
    reply = build_response(query, RECORDS)
    qid, flags, qd, an, ns, ar = header(reply)
    assert qid == 7
    assert flags & 0x8000  # a response
    assert flags & 0x0400  # authoritative
    assert flags & 0x0100  # recursion desired echoed
    assert flags & 0x000F == 0  # NOERROR
    assert (qd, an, ns, ar) == (1, 1, 0, 0)
    question_end = len(query)
    assert reply[12:question_end] == query[12:]
    name_ptr, rtype, rclass, ttl, rdlen = struct.unpack_from("!HHHIH", reply, question_end)
    assert (name_ptr, rtype, rclass, rdlen) == (0xC00C, 1, 1, 4)
    assert ttl > 0
    assert socket.inet_ntoa(reply[question_end + 12 :]) == "198.18.0.10"


def test_names_match_without_case_or_trailing_dot() -> None:
    reply = build_response(build_query("WEB.Demo.svc.cluster.local."), RECORDS)
    assert header(reply)[3] == 1


def test_other_names_get_nxdomain() -> None:
    for name in ("web", "web.svc.cluster.local", "example.com"):
        reply = build_response(build_query(name), RECORDS)
        _, flags, qd, an, _, _ = header(reply)
        assert flags & 0x000F == 3, name
        assert (qd, an) == (1, 0)


def test_aaaa_for_a_known_name_is_nodata_not_nxdomain() -> None:
    # glibc asks A and AAAA together; NXDOMAIN for AAAA would be a lie.
    reply = build_response(build_query("web.demo.svc.cluster.local", qtype=28), RECORDS)
    _, flags, qd, an, _, _ = header(reply)
    assert flags & 0x000F == 0
    assert (qd, an) == (1, 0)


def test_non_query_opcode_is_not_implemented() -> None:
    query = bytearray(build_query("web.demo.svc.cluster.local"))
    query[2] |= 2 << 3  # opcode STATUS
    _, flags, *_ = header(build_response(bytes(query), RECORDS))
    assert flags & 0x000F == 4


@pytest.mark.parametrize(
    "bad",
    [
        b"\x00\x01\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00",  # two questions, none there
        b"\x00\x01\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",  # a response
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab",  # label past the end
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # no type/class
    ],
)
def test_malformed_queries_get_formerr(bad: bytes) -> None:
    with pytest.raises(DnsFormatError):
        parse_query(bad)
    reply = build_response(bad, RECORDS)
    qid, flags, qd, an, ns, ar = header(reply)
    assert qid == 1
    assert flags == 0x8000 | 1
    assert (qd, an, ns, ar) == (0, 0, 0, 0)


def test_too_short_to_answer_at_all() -> None:
    with pytest.raises(DnsFormatError):
        build_response(b"\x00", RECORDS)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(st.lists(_label, min_size=1, max_size=6), st.integers(0, 0xFFFF), st.integers(1, 255))
def test_query_round_trip(labels: list[str], qid: int, qtype: int) -> None:
    name = ".".join(labels)
    parsed = parse_query(build_query(name, qtype=qtype, qid=qid))
    assert parsed[:5] == (qid, 0x0100, name, qtype, 1)
    reply = build_response(build_query(name, qtype=qtype, qid=qid), {name: "10.1.2.3"})
    _, flags, qd, an, _, _ = header(reply)
    assert flags & 0x000F == 0
    assert an == (1 if qtype == 1 else 0)


@given(st.binary(max_size=80))
def test_garbage_never_crashes_the_responder(data: bytes) -> None:
    try:
        reply = build_response(data, RECORDS)
    except DnsFormatError:
        assert len(data) < 2
    else:
        assert header(reply)[1] & 0x8000


def test_pod_files_look_like_the_kubelets() -> None:
    files = demo_pod.pod_files()
    assert files["resolv.conf"].splitlines() == [
        "nameserver 198.18.0.53",
        "search demo.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]
    assert "198.18.0.10\tdemo-pod-7d9f" in files["hosts"]
    assert "hosts: files dns" in files["nsswitch.conf"]


# The demo's checks before it makes namespaces


def test_disabled_user_namespaces_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(demo.shutil, "which", lambda name: f"/usr/bin/{name}")

    def refuse(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args[0], 1, "", "unshare: Operation not permitted")

    monkeypatch.setattr(demo.subprocess, "run", refuse)
    with pytest.raises(demo.DemoError, match="unprivileged user namespaces are disabled") as info:
        demo.unshare_command()
    assert "sudo" in str(info.value)
    assert "\n" not in str(info.value)


def test_root_needs_no_user_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 0)
    monkeypatch.setattr(demo.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert demo.unshare_command() == ["unshare", "--net", "--mount", "--uts"]


def test_missing_ip_program_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: None if name == "ip" else name)
    with pytest.raises(demo.DemoError, match="the ip program"):
        demo.unshare_command()


def test_default_client_ignores_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/curl")
    assert "--noproxy" in demo.default_client()
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    client = demo.default_client()
    assert "ProxyHandler({})" in client[-1]


def test_the_demo_summary_counts_calls_not_stream_ends(tmp_path: Path) -> None:
    from supervisor.demo import summarize
    from supervisor.events import Event

    events = [
        Event(1.0, 9, "curl", "sendto", "dns", "web A", "agent", "0", 900),
        Event(1.1, 9, "curl", "connect", "connect", "198.18.0.10:80", "agent", "0", 900),
        Event(1.2, 9, "curl", "close", "connect", "198.18.0.10:80", "agent", "0", 5000,
              {"sent": 77, "received": 149}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in events))
    assert summarize(path) == "2 calls diverted to the pod (connect 1, dns 1)"
    assert summarize(tmp_path / "missing.jsonl") == "no events were recorded"
