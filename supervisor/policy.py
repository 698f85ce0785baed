"""Which outgoing connections are diverted to the pod, and why.

One pure function of the destination, the socket type and the user's
options, so the rules read in one place and every decision carries a short
reason for the event stream. The rules, first match wins:

1. Non-IP families (AF_UNIX, AF_UNSPEC = disconnect, netlink...) stay local.
2. Only SOCK_STREAM and SOCK_DGRAM are diverted; raw and other types stay local.
3. A v4-mapped address (::ffff:a.b.c.d) is judged as the IPv4 address the
   kernel will actually use (ipv6(7)).
4. Loopback stays local: it is this machine, always.
5. The unspecified address stays local: connect(2) to 0.0.0.0 or :: reaches
   the loopback address (tcp_v4_connect via ip_route_connect, and
   tcp_v6_connect/ip6_datagram_connect replace :: with ::1).
6. With DNS on, port 53 to one of the pod's nameservers is diverted, even
   when outgoing is local: the app reads the pod's resolv.conf, so its
   queries must reach the pod's nameserver. This comes before the
   link-local rule on purpose: node-local DNS caches listen on link-local
   addresses (GKE/EKS NodeLocal DNSCache on 169.254.20.10).
7. Link-local, multicast and broadcast stay local. Link-local addresses
   mean "this link": 169.254.169.254 is the metadata service of whatever
   machine the packet is on. Diverting it would hand the local program the
   cloud credentials and identity of the pod's node, a surprise nobody
   asked for, so it takes divert_link_local=True. Multicast and broadcast
   cannot be relayed over one stream at all.
8. A --local-cidr match stays local (the most specific match is named).
9. outgoing "remote" diverts; outgoing "local" keeps it local.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass, field

from syscalls.sockaddr import AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC, SockAddr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

OUTGOING_MODES = ("remote", "local")
DNS_PORT = 53
SOCK_TYPE_MASK = 0xF  # socket(2) type may carry SOCK_NONBLOCK | SOCK_CLOEXEC
_DIVERTIBLE_TYPES = {socket.SOCK_STREAM: "SOCK_STREAM", socket.SOCK_DGRAM: "SOCK_DGRAM"}
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class Route(enum.StrEnum):
    LOCAL = "local"
    DIVERT = "divert"


@dataclass(frozen=True)
class Decision:
    """Where a connect goes, and a few words saying why (shown in events)."""

    route: Route
    reason: str

    @property
    def diverted(self) -> bool:
        return self.route is Route.DIVERT


def _local(reason: str) -> Decision:
    return Decision(Route.LOCAL, reason)


def _divert(reason: str) -> Decision:
    return Decision(Route.DIVERT, reason)


@dataclass
class NetworkPolicy:
    """The user's outgoing-traffic options plus the pod's nameservers.

    local_cidrs and nameservers accept strings too; nameservers lose any
    %scope and v4-mapped ones are stored as IPv4, so they compare equal to
    the address a connect names.
    """

    outgoing: str = "remote"
    dns: bool = True
    local_cidrs: list[IPNetwork] = field(default_factory=list)
    nameservers: list[IPAddress] = field(default_factory=list)
    divert_link_local: bool = False

    def __post_init__(self) -> None:
        if self.outgoing not in OUTGOING_MODES:
            raise ValueError(f"outgoing must be one of {OUTGOING_MODES}, got {self.outgoing!r}")
        self.local_cidrs = [_as_network(n) for n in self.local_cidrs]
        self.nameservers = [_plain(ipaddress.ip_address(str(a))) for a in self.nameservers]

    def decide_connect(self, addr: SockAddr, sock_type: int) -> Decision:
        """Decide whether connect(2) (or sendto with an address) to addr is diverted."""
        if addr.family not in (AF_INET, AF_INET6):
            return _local(_family_reason(addr.family))
        kind = sock_type & SOCK_TYPE_MASK
        if kind not in _DIVERTIBLE_TYPES:
            return _local(f"{_sock_type_name(kind)} sockets stay local")
        ip = _plain(addr.unmapped().ip)
        # First, even before loopback: a pod whose resolv.conf names a loopback server
        # (Docker's 127.0.0.11, a hostNetwork pod's 127.0.0.53) means the pod's own.
        if self.dns and addr.port == DNS_PORT and ip in self.nameservers:
            return _divert("port 53 to the pod's nameserver")
        if ip.is_loopback:
            return _local("loopback stays local")
        if ip.is_unspecified:
            return _local("unspecified address means loopback")
        if ip.is_multicast:
            return _local("multicast stays local")
        if ip == _BROADCAST:
            return _local("broadcast stays local")
        if ip.is_link_local and not self.divert_link_local:
            return _local("link-local stays local")
        matches = [n for n in self.local_cidrs if ip in n]
        if matches:
            best = max(matches, key=lambda n: n.prefixlen)
            return _local(f"--local-cidr {best}")
        if self.outgoing == "remote":
            return _divert("outgoing remote")
        return _local("outgoing local")


def _plain(ip: IPAddress | None) -> IPAddress:
    """Drop a %scope and unmap ::ffff:a.b.c.d, so equal addresses compare equal."""
    if ip is None:
        raise ValueError("not an IP address")
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:
            return ipaddress.IPv6Address(ip.packed)
    return ip


def _as_network(value: IPNetwork | str) -> IPNetwork:
    net = ipaddress.ip_network(value) if isinstance(value, str) else value
    # A v4-mapped range means the IPv4 range, as addresses are judged unmapped.
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def _family_reason(family: int) -> str:
    if family == AF_UNIX:
        return "unix socket stays local"
    if family == AF_UNSPEC:
        return "AF_UNSPEC disconnects, stays local"
    try:
        name = socket.AddressFamily(family).name
    except ValueError:
        name = f"address family {family}"
    return f"{name} stays local"


def _sock_type_name(kind: int) -> str:
    try:
        return socket.SocketKind(kind).name
    except ValueError:
        return f"socket type {kind}"


# --- resolv.conf -----------------------------------------------------------


@dataclass(frozen=True)
class ResolvConf:
    """What resolv.conf(5) says, as the pod's resolvers will read it.

    options maps each option to its value ("ndots" -> "5") or None for flags
    ("rotate", "edns0"). An empty nameservers list means the resolver's
    default, 127.0.0.1 for glibc and musl.
    """

    nameservers: list[IPAddress] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: dict[str, str | None] = field(default_factory=dict)

    @property
    def ndots(self) -> int:
        """options ndots:N, default 1, capped at 15 like glibc (RES_MAXNDOTS)."""
        value = self.options.get("ndots")
        try:
            return min(max(int(value), 0), 15) if value is not None else 1
        except ValueError:
            return 1


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf text.

    Follows resolv.conf(5): lines starting with ';' or '#' are comments;
    "domain" and "search" override each other, the last one wins; "options"
    lines accumulate. A nameserver that does not parse is skipped, as glibc
    does. All nameservers are kept, not only the first three glibc and musl
    use (MAXNS): for deciding what to divert, more is safer. Leading blanks
    are tolerated (glibc would ignore such a line; Go's resolver would not).
    """
    nameservers: list[IPAddress] = []
    search: list[str] = []
    options: dict[str, str | None] = {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0][0] in ";#":
            continue
        keyword, args = words[0], words[1:]
        if keyword == "nameserver" and args:
            try:
                nameservers.append(ipaddress.ip_address(args[0]))
            except ValueError:
                continue
        elif keyword == "domain" and args:
            search = [args[0]]
        elif keyword == "search":
            search = list(args)
        elif keyword == "options":
            for opt in args:
                key, sep, value = opt.partition(":")
                options[key] = value if sep else None
    return ResolvConf(nameservers, search, options)
