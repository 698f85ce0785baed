"""A raw DNS query tool (standard library only) for checking what a nameserver answers.

Used by the integration tests inside the pod (``cluster.pod_run``) and as a traced program
(``cluster.run``): unlike getaddrinfo it shows the response code (NXDOMAIN vs NOERROR) and
record types the libc resolver hides, and it can force TCP.

    python dnsq.py [--tcp] [--server IP] [--port 53] NAME [TYPE]

TYPE is A (default), AAAA, SRV, TXT, PTR, CNAME or a number. The server defaults to the
first ``nameserver`` of /etc/resolv.conf. Prints one JSON object on stdout:
``{"rcode": "NOERROR", "server": "198.18.0.53", "tcp": false,
"answers": [{"name": ..., "type": "A", "ttl": 0, "data": "198.18.0.10"}]}``.
SRV data is ``"PRIORITY WEIGHT PORT TARGET."``. Exit 0 when an answer arrived (whatever
its rcode), 1 with ``error: ...`` on stderr otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def first_nameserver(path: str = "/etc/resolv.conf") -> str:
    """The resolver this process would use, so the tool follows the namespace it runs in."""
    with open(path, encoding="utf-8") as conf:
        for line in conf:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    return "127.0.0.1"


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("idna")
    return out + b"\0"


def build_query(name: str, qtype: int, qid: int) -> bytes:
    """A standard recursive query with one question."""
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, 1)
    )


def read_name(msg: bytes, off: int) -> tuple[str, int]:
    """Decode a possibly compressed name; returns (name, offset after it)."""
    labels: list[str] = []
    end = None
    for _ in range(128):
        length = msg[off]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((length & 0x3F) << 8) | msg[off + 1]
            continue
        off += 1
        if length == 0:
            break
        labels.append(msg[off : off + length].decode("ascii", "replace"))
        off += length
    return ".".join(labels) + ".", end if end is not None else off


def parse_response(msg: bytes) -> dict[str, object]:
    """The rcode and answer records of a DNS response."""
    qid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = read_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        name, off = read_name(msg, off)
        rtype, _rclass, ttl, rdlen = struct.unpack("!HHIH", msg[off : off + 10])
        off += 10
        rdata = msg[off : off + rdlen]
        if rtype == 1:
            data = str(ipaddress.IPv4Address(rdata))
        elif rtype == 28:
            data = str(ipaddress.IPv6Address(rdata))
        elif rtype in (2, 5, 12):
            data = read_name(msg, off)[0]
        elif rtype == 33:
            prio, weight, port = struct.unpack("!HHH", rdata[:6])
            data = f"{prio} {weight} {port} {read_name(msg, off + 6)[0]}"
        elif rtype == 16:
            data = rdata[1 : 1 + rdata[0]].decode("utf-8", "replace") if rdata else ""
        else:
            data = rdata.hex()
        answers.append(
            {"name": name, "type": TYPE_NAMES.get(rtype, str(rtype)), "ttl": ttl, "data": data}
        )
        off += rdlen
    return {
        "id": qid,
        "rcode": RCODES.get(flags & 0xF, str(flags & 0xF)),
        "truncated": bool(flags & 0x0200),
        "answers": answers,
    }


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        piece = sock.recv(n - len(buf))
        if not piece:
            raise OSError("connection closed by the nameserver")
        buf += piece
    return buf


def query(
    name: str, qtype: int, server: str, port: int = 53, tcp: bool = False, timeout: float = 5
) -> dict[str, object]:
    """Send one query over UDP or TCP and return the parsed response."""
    qid = random.randrange(1, 0xFFFF)
    packet = build_query(name, qtype, qid)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))
        if tcp:
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (length,) = struct.unpack("!H", recv_exact(sock, 2))
            msg = recv_exact(sock, length)
        else:
            sock.send(packet)
            while True:
                msg = sock.recv(65535)
                if msg[:2] == packet[:2]:
                    break
    result = parse_response(msg)
    result["server"] = server
    result["tcp"] = tcp
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="raw DNS query")
    parser.add_argument("name")
    parser.add_argument("type", nargs="?", default="A")
    parser.add_argument("--server")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--tcp", action="store_true")
    parser.add_argument("--timeout", type=float, default=5)
    args = parser.parse_args(argv)
    qtype = int(args.type) if args.type.isdigit() else TYPES[args.type.upper()]
    server = args.server or first_nameserver()
    try:
        result = query(args.name, qtype, server, args.port, args.tcp, args.timeout)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
