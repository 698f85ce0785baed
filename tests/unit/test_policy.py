"""Which connects are diverted: examples for every rule, then properties over random inputs."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from supervisor.policy import (
    Decision,
    NetworkPolicy,
    ResolvConf,
    Route,
    parse_resolv_conf,
)
from syscalls.sockaddr import SockAddr, decode_sockaddr, inet, inet6, unix

STREAM, DGRAM, RAW = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW
K8S = NetworkPolicy(outgoing="remote", dns=True, nameservers=["10.96.0.10"])


def decide(policy: NetworkPolicy, addr: SockAddr, sock_type: int = STREAM) -> tuple[Route, str]:
    d = policy.decide_connect(addr, sock_type)
    return d.route, d.reason


@pytest.mark.parametrize(
    ("policy", "addr", "sock_type", "route", "reason"),
    [
        (K8S, inet("127.0.0.1", 8080), STREAM, Route.LOCAL, "loopback stays local"),
        (K8S, inet("127.9.9.9", 53), DGRAM, Route.LOCAL, "loopback stays local"),
        (K8S, inet6("::1", 5432), STREAM, Route.LOCAL, "loopback stays local"),
        (K8S, inet6("::ffff:127.0.0.53", 53), DGRAM, Route.LOCAL, "loopback stays local"),
        (K8S, inet("0.0.0.0", 80), STREAM, Route.LOCAL, "unspecified address means loopback"),
        (K8S, inet6("::", 80), STREAM, Route.LOCAL, "unspecified address means loopback"),
        (K8S, inet("10.96.0.10", 53), DGRAM, Route.DIVERT, "port 53 to the pod's nameserver"),
        (K8S, inet("10.96.0.10", 53), STREAM, Route.DIVERT, "port 53 to the pod's nameserver"),
        (K8S, inet("198.18.0.10", 8080), STREAM, Route.DIVERT, "outgoing remote"),
        (K8S, inet6("2001:2::10", 8080), STREAM, Route.DIVERT, "outgoing remote"),
        (K8S, inet("169.254.169.254", 80), STREAM, Route.LOCAL, "link-local stays local"),
        (K8S, inet6("fe80::1", 80, scope_id=2), STREAM, Route.LOCAL, "link-local stays local"),
        (K8S, inet("224.0.0.251", 5353), DGRAM, Route.LOCAL, "multicast stays local"),
        (K8S, inet6("ff02::fb", 5353), DGRAM, Route.LOCAL, "multicast stays local"),
        (K8S, inet("255.255.255.255", 67), DGRAM, Route.LOCAL, "broadcast stays local"),
        (K8S, unix(b"/run/docker.sock"), STREAM, Route.LOCAL, "unix socket stays local"),
        (K8S, inet("198.18.0.10", 0), RAW, Route.LOCAL, "SOCK_RAW sockets stay local"),
        (
            K8S,
            inet("198.18.0.10", 443),
            STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            Route.DIVERT,
            "outgoing remote",
        ),
        (
            NetworkPolicy(local_cidrs=["10.0.0.0/8", "10.1.0.0/16"]),
            inet("10.1.2.3", 443),
            STREAM,
            Route.LOCAL,
            "--local-cidr 10.1.0.0/16",
        ),
        (
            NetworkPolicy(outgoing="local", nameservers=["10.96.0.10"]),
            inet("10.96.0.10", 53),
            DGRAM,
            Route.DIVERT,
            "port 53 to the pod's nameserver",
        ),
        (
            NetworkPolicy(outgoing="local", nameservers=["10.96.0.10"]),
            inet("10.96.0.10", 80),
            STREAM,
            Route.LOCAL,
            "outgoing local",
        ),
        (
            NetworkPolicy(dns=False, outgoing="local", nameservers=["10.96.0.10"]),
            inet("10.96.0.10", 53),
            DGRAM,
            Route.LOCAL,
            "outgoing local",
        ),
        (
            NetworkPolicy(local_cidrs=["10.0.0.0/8"], nameservers=["10.96.0.10"]),
            inet("10.96.0.10", 53),
            DGRAM,
            Route.DIVERT,
            "port 53 to the pod's nameserver",
        ),
        (
            # NodeLocal DNSCache listens on a link-local address.
            NetworkPolicy(nameservers=["169.254.20.10"]),
            inet("169.254.20.10", 53),
            DGRAM,
            Route.DIVERT,
            "port 53 to the pod's nameserver",
        ),
        (
            NetworkPolicy(divert_link_local=True),
            inet("169.254.169.254", 80),
            STREAM,
            Route.DIVERT,
            "outgoing remote",
        ),
        (
            NetworkPolicy(nameservers=["fd00::a"]),
            inet6("fd00::a", 53),
            DGRAM,
            Route.DIVERT,
            "port 53 to the pod's nameserver",
        ),
        (
            NetworkPolicy(nameservers=["10.96.0.10"]),
            inet6("::ffff:10.96.0.10", 53),
            DGRAM,
            Route.DIVERT,
            "port 53 to the pod's nameserver",
        ),
        (
            NetworkPolicy(local_cidrs=["::ffff:10.0.0.0/104"]),
            inet("10.2.3.4", 80),
            STREAM,
            Route.LOCAL,
            "--local-cidr 10.0.0.0/8",
        ),
    ],
)
def test_examples(
    policy: NetworkPolicy, addr: SockAddr, sock_type: int, route: Route, reason: str
) -> None:
    assert decide(policy, addr, sock_type) == (route, reason)


def test_unspec_disconnect_and_other_families_stay_local() -> None:
    disconnect = decode_sockaddr(struct.pack("=H", socket.AF_UNSPEC) + bytes(14))
    assert decide(K8S, disconnect) == (Route.LOCAL, "AF_UNSPEC disconnects, stays local")
    netlink = decode_sockaddr(struct.pack("=HHII", socket.AF_NETLINK, 0, 0, 0))
    assert decide(K8S, netlink) == (Route.LOCAL, "AF_NETLINK stays local")
    assert decide(K8S, SockAddr(250, None, None, raw=b"\xfa\x00"))[1] == (
        "address family 250 stays local"
    )


def test_decision_and_policy_values() -> None:
    assert Decision(Route.DIVERT, "x").diverted and not Decision(Route.LOCAL, "x").diverted
    assert Route.DIVERT == "divert"
    with pytest.raises(ValueError):
        NetworkPolicy(outgoing="sometimes")
    with pytest.raises(ValueError):
        NetworkPolicy(local_cidrs=["10.0.0.1/8"])  # host bits set, like --local-cidr
    policy = NetworkPolicy(nameservers=["fe80::1%eth0", "::ffff:10.0.0.1"])
    assert policy.nameservers == [ipaddress.ip_address("fe80::1"), ipaddress.ip_address("10.0.0.1")]


# --- properties -------------------------------------------------------------

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4)
v6 = st.ip_addresses(v=6)
v4_mapped = v4.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
any_ip = v4 | v6 | v4_mapped
sock_types = st.sampled_from([STREAM, DGRAM, STREAM | socket.SOCK_NONBLOCK, DGRAM | 0o2000000])


def sockaddr_of(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> SockAddr:
    if ip.version == 4:
        return inet(str(ip), port)
    return inet6(str(ip), port)


@st.composite
def cidrs_around(draw: st.DrawFn, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list:
    nets = []
    for _ in range(draw(st.integers(0, 3))):
        base = draw(st.just(ip) | any_ip)
        prefix = draw(st.integers(0, base.max_prefixlen))
        nets.append(ipaddress.ip_network((base, prefix), strict=False))
    return nets


@st.composite
def cases(draw: st.DrawFn) -> tuple[NetworkPolicy, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ip = draw(any_ip)
    policy = NetworkPolicy(
        outgoing=draw(st.sampled_from(["remote", "local"])),
        dns=draw(st.booleans()),
        local_cidrs=draw(cidrs_around(ip)),
        nameservers=draw(st.lists(st.just(ip) | any_ip, max_size=3)),
        divert_link_local=draw(st.booleans()),
    )
    return policy, ip


def is_special(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        ip.is_loopback
        or ip.is_unspecified
        or ip.is_link_local
        or ip.is_multicast
        or ip == ipaddress.IPv4Address("255.255.255.255")
    )


@given(cases(), ports, sock_types)
def test_loopback_is_always_local(case: tuple, port: int, sock_type: int) -> None:
    policy, _ = case
    for host in ("127.0.0.1", "127.255.0.7"):
        assert decide(policy, inet(host, port), sock_type) == (Route.LOCAL, "loopback stays local")
        assert decide(policy, inet6("::ffff:" + host, port), sock_type)[0] == Route.LOCAL
    assert decide(policy, inet6("::1", port), sock_type)[0] == Route.LOCAL


@given(cases(), ports, sock_types)
def test_v4_mapped_is_judged_as_its_ipv4_address(case: tuple, port: int, sock_type: int) -> None:
    policy, ip = case
    assume(ip.version == 4)
    assert decide(policy, inet6(f"::ffff:{ip}", port), sock_type) == decide(
        policy, inet(str(ip), port), sock_type
    )


@given(cases(), ports, sock_types)
def test_decision_follows_the_rules(case: tuple, port: int, sock_type: int) -> None:
    policy, given_ip = case
    route, reason = decide(policy, sockaddr_of(given_ip, port), sock_type)
    ip = getattr(given_ip, "ipv4_mapped", None) or given_ip  # judged as IPv4
    dns_rule = (
        policy.dns
        and port == 53
        and ip in policy.nameservers
        and not ip.is_loopback
        and not ip.is_unspecified
    )
    if dns_rule:
        assert (route, reason) == (Route.DIVERT, "port 53 to the pod's nameserver")
        return
    if ip.is_link_local and policy.divert_link_local and not ip.is_multicast:
        pass  # falls through to the cidr and outgoing rules below
    elif is_special(ip):
        assert route == Route.LOCAL
        return
    matching = [n for n in policy.local_cidrs if ip in n]
    if matching:
        assert route == Route.LOCAL
        assert reason == f"--local-cidr {max(matching, key=lambda n: n.prefixlen)}"
    elif policy.outgoing == "remote":
        assert (route, reason) == (Route.DIVERT, "outgoing remote")
    else:
        assert (route, reason) == (Route.LOCAL, "outgoing local")


@given(cases(), ports, sock_types)
def test_outgoing_local_diverts_only_dns(case: tuple, port: int, sock_type: int) -> None:
    policy, ip = case
    policy.outgoing = "local"
    decision = policy.decide_connect(sockaddr_of(ip, port), sock_type)
    if decision.diverted:
        assert policy.dns and port == 53 and decision.reason == "port 53 to the pod's nameserver"


@given(cases(), ports)
def test_raw_sockets_are_never_diverted(case: tuple, port: int) -> None:
    policy, ip = case
    assert not policy.decide_connect(sockaddr_of(ip, port), RAW).diverted


# --- resolv.conf -------------------------------------------------------------

K8S_RESOLV_CONF = """\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
"""


def test_parse_kubernetes_resolv_conf() -> None:
    conf = parse_resolv_conf(K8S_RESOLV_CONF)
    assert conf == ResolvConf(
        nameservers=[ipaddress.ip_address("10.96.0.10")],
        search=["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        options={"ndots": "5"},
    )
    assert conf.ndots == 5


def test_parse_resolv_conf_details() -> None:
    conf = parse_resolv_conf(
        "# generated\n"
        "; also a comment\n"
        "domain example.org\n"
        "nameserver 10.0.0.2 # trailing words are ignored\n"
        "nameserver not-an-address\n"
        "nameserver\n"
        "  nameserver fd00::53\n"
        "nameserver fe80::1%eth0\n"
        "search a.example b.example\n"
        "options rotate timeout:2\n"
        "options ndots:40 edns0\n"
        "sortlist 10.0.0.0/255.0.0.0\n"
    )
    assert [str(a) for a in conf.nameservers] == ["10.0.0.2", "fd00::53", "fe80::1%eth0"]
    assert conf.search == ["a.example", "b.example"]
    assert conf.options == {"rotate": None, "timeout": "2", "ndots": "40", "edns0": None}
    assert conf.ndots == 15
    assert parse_resolv_conf("search a.example\ndomain b.example\n").search == ["b.example"]


def test_empty_resolv_conf() -> None:
    conf = parse_resolv_conf("")
    assert conf == ResolvConf() and conf.ndots == 1
    assert parse_resolv_conf("options ndots:x\n").ndots == 1


def test_policy_from_resolv_conf() -> None:
    conf = parse_resolv_conf(K8S_RESOLV_CONF)
    policy = NetworkPolicy(outgoing="local", nameservers=conf.nameservers)
    assert policy.decide_connect(inet("10.96.0.10", 53), DGRAM).diverted


@given(st.text(max_size=400))
def test_parse_resolv_conf_never_raises(text: str) -> None:
    conf = parse_resolv_conf(text)
    assert 0 <= conf.ndots <= 15


def test_a_loopback_nameserver_of_the_pod_is_the_pods() -> None:
    """Docker's embedded DNS (127.0.0.11) or a hostNetwork pod's 127.0.0.53: port 53
    there means the pod's resolver, not this machine's."""
    policy = NetworkPolicy(outgoing="local", dns=True, local_cidrs=[], nameservers=["127.0.0.11"])
    assert decide(policy, inet("127.0.0.11", 53), DGRAM) == (
        Route.DIVERT, "port 53 to the pod's nameserver"
    )
    assert decide(policy, inet("127.0.0.11", 80), STREAM) == (Route.LOCAL, "loopback stays local")
    assert decide(policy, inet("127.0.0.53", 53), DGRAM) == (Route.LOCAL, "loopback stays local")
