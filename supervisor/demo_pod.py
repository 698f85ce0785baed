"""The demo's throwaway "pod", and the bridge mirrortrace reaches its agent through.

``python -m supervisor.demo_pod serve STATEDIR`` runs inside fresh network,
mount and UTS namespaces (``supervisor.demo`` starts it under unshare) and
makes them look like a small Kubernetes pod:

- lo up, with 198.18.0.10 (the pod, and the ``web`` service) and 198.18.0.53
  (the cluster DNS) — 198.18.0.0/15 is the benchmarking range (RFC 2544), so
  it clashes with nothing real;
- hostname ``demo-pod-7d9f``, and generated /etc/resolv.conf (search domains,
  ndots:5, as the kubelet writes it), /etc/hosts, /etc/hostname and
  /etc/nsswitch.conf bind-mounted over the host's, in the private mount
  namespace only;
- an HTTP server on 198.18.0.10:80 and a DNS server on 198.18.0.53:53 (UDP
  and TCP) that knows one name;
- a unix socket STATEDIR/agent.sock: each connection gets its own
  ``python -m agent_image`` inside the pod, relayed to its stdin/stdout.

``python -m supervisor.demo_pod connect SOCKET`` runs outside the pod and
copies stdin/stdout to and from that socket: it is the demo's
``--agent-exec`` command, the same role ``kubectl exec -i`` plays for a real
pod. (Unix socket paths, unlike abstract ones, are not scoped by network
namespace, so the host side can reach it.)

Standard library only, like the agent.
"""

from __future__ import annotations

import ctypes
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

POD_IP = "198.18.0.10"
DNS_IP = "198.18.0.53"
HOSTNAME = "demo-pod-7d9f"
NAMESPACE = "demo"
SEARCH = (f"{NAMESPACE}.svc.cluster.local", "svc.cluster.local", "cluster.local")
SERVICE = f"web.{NAMESPACE}.svc.cluster.local"
RECORDS = {SERVICE: POD_IP}
GREETING = "hello from the demo pod (inside its network namespace)\n"
# What the pod's containers see in their environment (the agent serves it
# for --env remote/merge).
POD_ENV = {
    "HOSTNAME": HOSTNAME,
    "POD_NAMESPACE": NAMESPACE,
    "WEB_SERVICE_HOST": POD_IP,
    "WEB_SERVICE_PORT": "80",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
}

# --- DNS: a compact RFC 1035 responder ------------------------------------------

QTYPE_A = 1
QCLASS_IN = 1
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
_HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(ValueError):
    """A message that is not a DNS query we can parse."""


def parse_query(data: bytes) -> tuple[int, int, str, int, int, int]:
    """Return (id, flags, qname, qtype, qclass, end of question) of a one-question query.

    Names are read label by label (RFC 1035 section 4.1.2); a query has no
    reason to use compression pointers, so they are refused.
    """
    if len(data) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions, expected 1")
    labels = []
    offset = _HEADER.size
    while True:
        if offset >= len(data):
            raise DnsFormatError("name runs past the end")
        length = data[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise DnsFormatError("compressed or extended label in a question")
        label = data[offset : offset + length]
        if len(label) != length:
            raise DnsFormatError("label runs past the end")
        labels.append(label.decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(data):
        raise DnsFormatError("question has no type and class")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    return qid, flags, ".".join(labels), qtype, qclass, offset + 4


def build_response(query: bytes, records: dict[str, str], ttl: int = 30) -> bytes:
    """Answer a query from records (name -> IPv4): A, NODATA or NXDOMAIN.

    A known name asked for another type gets NOERROR with no answer, not
    NXDOMAIN, so resolvers that send A and AAAA together keep the A answer.
    A message we cannot parse gets FORMERR when it has a header at all.
    """
    try:
        qid, flags, qname, qtype, qclass, end = parse_query(query)
    except DnsFormatError:
        if len(query) < 2:
            raise
        qid = struct.unpack_from("!H", query)[0]
        return _HEADER.pack(qid, 0x8000 | RCODE_FORMERR, 0, 0, 0, 0)
    opcode = (flags >> 11) & 0xF
    # QR=1, opcode echoed, AA=1, RD echoed, RA=0.
    out_flags = 0x8000 | (opcode << 11) | 0x0400 | (flags & 0x0100)
    question = query[_HEADER.size : end]
    if opcode != 0:
        return _HEADER.pack(qid, out_flags | RCODE_NOTIMP, 1, 0, 0, 0) + question
    address = records.get(qname.lower().rstrip("."))
    if address is None:
        return _HEADER.pack(qid, out_flags | RCODE_NXDOMAIN, 1, 0, 0, 0) + question
    if qtype != QTYPE_A or qclass != QCLASS_IN:
        return _HEADER.pack(qid, out_flags, 1, 0, 0, 0) + question
    # The answer's name is a pointer to the question's (offset 12).
    answer = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, ttl, 4)
    answer += socket.inet_aton(address)
    return _HEADER.pack(qid, out_flags, 1, 1, 0, 0) + question + answer


def build_query(name: str, qtype: int = QTYPE_A, qid: int = 0x1234) -> bytes:
    """A standard recursive query for name (used by tests and the readiness probe)."""
    labels = b"".join(
        bytes([len(part)]) + part.encode("ascii") for part in name.strip(".").split(".") if part
    )
    return _HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


class _DnsUdp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        try:
            sock.sendto(build_response(data, RECORDS), self.client_address)
        except DnsFormatError:
            pass


class _DnsTcp(socketserver.StreamRequestHandler):
    # Over TCP each message has a two-byte length in front (RFC 1035 4.2.2);
    # Go's resolver and truncated answers use it.
    def handle(self) -> None:
        while True:
            size = self.rfile.read(2)
            if len(size) < 2:
                return
            data = self.rfile.read(struct.unpack("!H", size)[0])
            try:
                reply = build_response(data, RECORDS)
            except DnsFormatError:
                return
            self.wfile.write(struct.pack("!H", len(reply)) + reply)


class _UdpServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


# --- HTTP -------------------------------------------------------------------------


class _Web(BaseHTTPRequestHandler):
    server_version = "demo-pod"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = GREETING.encode() if self.path == "/" else b"not found\n"
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"web: {self.client_address[0]} {format % args}", file=sys.stderr, flush=True)


# --- Making the namespaces look like a pod ----------------------------------------

MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def _mount(source: str | None, target: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    src = source.encode() if source else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def pod_files() -> dict[str, str]:
    """The /etc files of the pod, as the kubelet would write them."""
    return {
        "resolv.conf": (f"nameserver {DNS_IP}\nsearch {' '.join(SEARCH)}\noptions ndots:5\n"),
        "hosts": (
            "# Kubernetes-managed hosts file (the mirrortrace demo).\n"
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{POD_IP}\t{HOSTNAME}\n"
        ),
        "hostname": f"{HOSTNAME}\n",
        # files then dns: no mDNS or systemd-resolved module to swallow
        # cluster names (.local) on their way.
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    }


def setup_pod(state: Path) -> None:
    """Network, hostname and /etc files; needs CAP_SYS_ADMIN and CAP_NET_ADMIN in the namespaces."""
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{POD_IP}/32", "dev", "lo"],
        ["ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo"],
    ):
        subprocess.run(command, check=True, capture_output=True, text=True)
    socket.sethostname(HOSTNAME)
    # Mounts made here must never reach the host, whatever unshare defaulted to.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    etc = state / "etc"
    etc.mkdir(exist_ok=True)
    for name, text in pod_files().items():
        (etc / name).write_text(text)
        target = Path("/etc") / name
        if target.exists():
            _mount(str(etc / name), str(target), MS_BIND)


def _pump(read: int, write: socket.socket | int, on_eof: object) -> None:
    """Copy bytes from fd read to write (a socket or an fd) until EOF, then call on_eof."""
    try:
        while data := os.read(read, 65536):
            if isinstance(write, socket.socket):
                write.sendall(data)
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(write, view) :]
    except OSError:
        pass
    finally:
        on_eof()  # type: ignore[operator]


def _start_agent(conn: socket.socket, log: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One agent for one connection, relayed through pipes.

    The agent gets pipes, as it would from kubectl exec, rather than the
    socket itself: an asyncio write-pipe transport on a socket takes the
    socket becoming readable for the peer closing it.
    """
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent_image"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        cwd="/",
    )
    assert agent.stdin is not None and agent.stdout is not None
    to_agent, from_agent = agent.stdin, agent.stdout

    def down_done() -> None:
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        from_agent.close()

    threading.Thread(
        target=_pump, args=(conn.fileno(), to_agent.fileno(), to_agent.close), daemon=True
    ).start()
    threading.Thread(target=_pump, args=(from_agent.fileno(), conn, down_done), daemon=True).start()
    return agent


def _serve_agents(listener: socket.socket, log: int, env: dict[str, str]) -> None:
    agents: list[tuple[subprocess.Popen[bytes], socket.socket]] = []
    while True:
        conn, _ = listener.accept()
        agents.append((_start_agent(conn, log, env), conn))
        alive = []
        for agent, sock in agents:
            if agent.poll() is None:
                alive.append((agent, sock))
            else:
                sock.close()
        agents = alive


def serve(state: Path) -> None:
    """Set up the pod, print "ready" on stdout, and serve until killed."""
    try:
        setup_pod(state)
        dns_udp = _UdpServer((DNS_IP, 53), _DnsUdp)
        dns_tcp = _TcpServer((DNS_IP, 53), _DnsTcp)
        web = ThreadingHTTPServer((POD_IP, 80), _Web)
    except subprocess.CalledProcessError as err:
        # The demo shows the last lines of this log when the pod fails.
        detail = " ".join((err.stderr or "").split()) or f"exit status {err.returncode}"
        sys.exit(f"demo-pod: {' '.join(err.cmd)}: {detail}")
    except OSError as err:
        sys.exit(f"demo-pod: {err}")
    web.daemon_threads = True
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(state / "agent.sock"))
    # The agent acts with the pod's privileges: only this user may reach it.
    os.chmod(state / "agent.sock", 0o600)
    listener.listen(16)
    for server in (dns_udp, dns_tcp, web):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, **POD_ENV}
    print("ready", flush=True)
    sys.stdout.close()
    _serve_agents(listener, sys.stderr.fileno(), env)


def connect(path: str) -> int:
    """Copy stdin to the socket at path and the socket to stdout, until both ends close."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        print(f"demo-pod: cannot reach the demo pod at {path}: {err.strerror}", file=sys.stderr)
        return 1

    def up_done() -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=_pump, args=(sys.stdin.fileno(), sock, up_done), daemon=True).start()
    _pump(sock.fileno(), sys.stdout.fileno(), lambda: None)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "serve":
        serve(Path(args[1]))
        return 0
    if len(args) == 2 and args[0] == "connect":
        return connect(args[1])
    print("usage: python -m supervisor.demo_pod serve STATEDIR | connect SOCKET", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
