"""Datagrams that name their destination: sendmsg(2) and sendmmsg(2) with msg_name."""

from __future__ import annotations

import pytest
from cluster import DNS_IP, DNS_IP6, WEB_IP, Cluster

pytestmark = pytest.mark.integration

QUERY = '''
import struct
def query(qid):
    name = b"".join(bytes([len(p)]) + p for p in b"web.default.svc.cluster.local".split(b"."))
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return head + name + b"\\0" + struct.pack("!HH", 1, 1)
def answer_ip(data):
    return ".".join(map(str, data[-4:]))
'''


def test_sendmsg_with_a_name_reaches_the_pods_nameserver(cluster: Cluster) -> None:
    script = QUERY + f'''
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
print(s.sendmsg([query(7)], [], 0, ("{DNS_IP}", 53)))
data, _, _, src = s.recvmsg(512)
print(struct.unpack("!H", data[:2])[0], answer_ip(data), src)
'''
    out = cluster.run(["python3", "-c", script])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert int(lines[0]) > 12
    assert lines[1] == f"7 {WEB_IP} ('{DNS_IP}', 53)"


def test_sendmmsg_with_names_sends_every_message(cluster: Cluster) -> None:
    """mirrortrace sends named sendmmsg messages one per call; a correct program loops on
    the count, and every message must arrive and be answered from the nameserver."""
    script = QUERY + f'''
import ctypes, socket
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53)
addr += socket.inet_aton("{DNS_IP}") + bytes(8)
abuf = ctypes.create_string_buffer(addr, len(addr))
bufs = [ctypes.create_string_buffer(query(i), len(query(i))) for i in (1, 2, 3)]
iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in bufs]
msgs = (mmsghdr * 3)()
for i, iov in enumerate(iovs):
    name = ctypes.cast(abuf, ctypes.c_void_p)
    msgs[i].hdr = msghdr(name, len(addr), ctypes.pointer(iov), 1, None, 0, 0)
done = 0
while done < 3:
    n = libc.sendmmsg(s.fileno(), ctypes.byref(msgs, done * ctypes.sizeof(mmsghdr)), 3 - done, 0)
    assert n > 0, ctypes.get_errno()
    done += n
print([msgs[i].len for i in range(3)])
got = sorted(struct.unpack("!H", s.recvfrom(512)[0][:2])[0] for _ in range(3))
print(got)
'''
    out = cluster.run(["python3", "-c", script])
    assert out.returncode == 0, out.stderr
    lens, ids = out.stdout.splitlines()
    assert all(n > 12 for n in eval(lens))  # every msg_len written back, as the kernel does
    assert ids == "[1, 2, 3]"


def test_one_v6_socket_reaches_v4_and_v6_nameservers(cluster: Cluster) -> None:
    """musl sends to every nameserver from one AF_INET6 socket (v4-mapped for IPv4 ones),
    as a dual-stack cluster's pods have both: each query must be answered, each answer
    seen coming from the server it went to."""
    script = QUERY + f'''
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(query(4), ("::ffff:{DNS_IP}", 53))
s.sendto(query(6), ("{DNS_IP6}", 53))
got = sorted((struct.unpack("!H", d[:2])[0], a[0]) for d, a in (s.recvfrom(512) for _ in "xx"))
print(got)
'''
    out = cluster.run(["python3", "-c", script])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[(4, '::ffff:{DNS_IP}'), (6, '{DNS_IP6}')]"
