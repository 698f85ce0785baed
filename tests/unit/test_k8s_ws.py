"""The exec websocket: framing against RFC 6455, and a session against a small server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import k8s_ws as ws


def _naive_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4))
def test_masking_is_the_rfc_xor(data: bytes, key: bytes) -> None:
    assert ws.mask(data, key) == _naive_mask(data, key)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("masked", [True, False])
def test_frames_decode_to_what_was_encoded_at_every_length_boundary(size: int,
                                                                    masked: bool) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    frame = ws.encode_frame(ws.OP_BINARY, payload, masked=masked)
    reader = ws.FrameReader()
    out = []
    for i in range(0, len(frame), 7):  # dribbled in: partial headers and bodies
        out += reader.feed(frame[i : i + 7])
    assert out == [(ws.OP_BINARY, payload)]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_fragments_are_joined_and_control_frames_pass_between(parts: list[bytes]) -> None:
    data = b""
    for i, part in enumerate(parts):
        opcode = ws.OP_BINARY if i == 0 else ws.OP_CONT
        fin = 0x80 if i == len(parts) - 1 else 0
        frame = bytearray(ws.encode_frame(opcode, part, masked=False))
        frame[0] = fin | opcode
        data += bytes(frame)
        if i == 0:
            data += ws.encode_frame(ws.OP_PING, b"p", masked=False)
    out = ws.FrameReader().feed(data)
    joined = (ws.OP_BINARY, b"".join(parts))
    ping = (ws.OP_PING, b"p")
    assert out == ([ping, joined] if len(parts) > 1 else [joined, ping])


def test_reserved_bits_are_refused() -> None:
    with pytest.raises(ws.WebsocketError):
        ws.FrameReader().feed(bytes([0xC2, 0x00]))


class Server:
    """A remotecommand-ish websocket server: echoes stdin to stdout, then answers a
    Status on the error channel when stdin is closed."""

    def __init__(self, protocols: str = "v5.channel.k8s.io", refuse: int | None = None,
                 bad_accept: bool = False) -> None:
        self.protocols = protocols
        self.refuse = refuse
        self.bad_accept = bad_accept
        self.stdin = bytearray()
        self.request = b""
        self.closed_stdin = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.request = await reader.readuntil(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in
                       self.request.decode().split("\r\n")[1:] if ": " in line)
        if self.refuse:
            body = json.dumps({"kind": "Status", "status": "Failure",
                               "message": 'pods "x" not found', "code": self.refuse}).encode()
            writer.write(f"HTTP/1.1 {self.refuse} Nope\r\nContent-Length: {len(body)}\r\n"
                         f"Content-Type: application/json\r\n\r\n".encode() + body)
            await writer.drain()
            writer.close()
            return
        key = headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + ws._GUID).digest()).decode()
        if self.bad_accept:
            accept = "bogus"
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                      f"Sec-WebSocket-Protocol: {self.protocols}\r\n\r\n").encode())
        writer.write(ws.encode_frame(ws.OP_BINARY, b"\x02agent: started\n", masked=False))
        frames = ws.FrameReader()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            for opcode, payload in frames.feed(data):
                if opcode == ws.OP_CLOSE:
                    writer.close()
                    return
                if payload[:1] == b"\x00":
                    self.stdin += payload[1:]
                    writer.write(ws.encode_frame(ws.OP_BINARY, b"\x01" + payload[1:],
                                                 masked=False))
                elif payload == b"\xff\x00":
                    self.closed_stdin.set()
                    status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                              "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
                    writer.write(ws.encode_frame(ws.OP_BINARY,
                                                 b"\x03" + json.dumps(status).encode(),
                                                 masked=False))
                    writer.write(ws.encode_frame(ws.OP_CLOSE, struct.pack("!H", 1000),
                                                 masked=False))
                    await writer.drain()
                    writer.close()
                    return


_SERVERS: list[asyncio.base_events.Server] = []


async def _session(server: Server, **headers: str) -> tuple[Any, list[bytes], list[bytes],
                                                           asyncio.Future[str | None]]:
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    _SERVERS.append(srv)
    port = srv.sockets[0].getsockname()[1]
    out: list[bytes] = []
    err: list[bytes] = []
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    endpoint = ws.Endpoint(f"http://127.0.0.1:{port}/api/v1/namespaces/dev/pods/p/attach?"
                           "stdin=true&stdout=true", None, dict(headers))
    stream = await ws.KubeStream.connect(endpoint, out.append, err.append,
                                         lambda r: done.done() or done.set_result(r))
    return stream, out, err, done


def run(coro: Any) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(coro, 20)
        finally:
            while _SERVERS:
                srv = _SERVERS.pop()
                srv.close()
                await srv.wait_closed()
            await asyncio.sleep(0.05)

    asyncio.run(main())


def test_a_session_carries_binary_stdin_and_stdout_and_ends_with_the_status() -> None:
    async def main() -> None:
        server = Server()
        stream, out, err, done = await _session(server, Authorization="Bearer t0ken")
        assert stream.protocol == ws.V5
        assert b"Authorization: Bearer t0ken" in server.request
        assert b"Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io" in server.request
        blob = bytes(range(256)) * 1024
        stream.write(blob)
        while sum(map(len, out)) < len(blob):
            await asyncio.sleep(0.01)
        assert b"".join(out) == blob and bytes(server.stdin) == blob
        assert b"".join(err) == b"agent: started\n"
        stream.close_stdin()
        reason = await asyncio.wait_for(done, 5)
        assert reason == "the process exited with status 3"

    run(main())


def test_a_refused_upgrade_says_what_the_api_server_said() -> None:
    async def main() -> None:
        with pytest.raises(ws.WebsocketError) as refused:
            await _session(Server(refuse=404))
        assert refused.value.status == 404
        assert str(refused.value) == 'pods "x" not found (HTTP 404)'
        with pytest.raises(ws.WebsocketError, match="Sec-WebSocket-Accept"):
            await _session(Server(bad_accept=True))
        with pytest.raises(ws.WebsocketError, match="subprotocol"):
            await _session(Server(protocols="channel.k8s.io"))

    run(main())


def test_v4_has_no_close_signal_so_closing_stdin_ends_the_session() -> None:
    async def main() -> None:
        server = Server(protocols=ws.V4)
        stream, _, _, done = await _session(server)
        assert stream.protocol == ws.V4
        stream.close_stdin()
        assert await asyncio.wait_for(done, 5) is None
        assert not server.closed_stdin.is_set()

    run(main())


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and a client
    context that trusts exactly it."""
    import ssl
    import subprocess

    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return server, client


def test_a_session_over_tls_carries_megabytes_both_ways(tls_pair: tuple[Any, Any]) -> None:
    """Our own non-blocking TLS transport (supervisor/k8s_tls.py) under the websocket."""
    server_ctx, client_ctx = tls_pair

    async def main() -> None:
        server = Server()
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_ctx)
        _SERVERS.append(srv)
        port = srv.sockets[0].getsockname()[1]
        out: list[bytes] = []
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        endpoint = ws.Endpoint(f"https://127.0.0.1:{port}/api/v1/namespaces/dev/pods/p/attach",
                               client_ctx, {})
        stream = await ws.KubeStream.connect(endpoint, out.append, lambda _: None,
                                             lambda r: done.done() or done.set_result(r))
        blob = bytes(range(256)) * 16384  # 4 MiB: many TLS records, partial writes
        for i in range(0, len(blob), 300_000):
            stream.write(blob[i : i + 300_000])
        while sum(map(len, out)) < len(blob):
            await asyncio.sleep(0.01)
        assert b"".join(out) == blob
        stream.close_stdin()
        assert await asyncio.wait_for(done, 5) == "the process exited with status 3"

    run(main())


def test_a_certificate_the_client_does_not_trust_is_refused(tls_pair: tuple[Any, Any]) -> None:
    import ssl

    server_ctx, _ = tls_pair

    async def main() -> None:
        srv = await asyncio.start_server(Server().handle, "127.0.0.1", 0, ssl=server_ctx)
        _SERVERS.append(srv)
        port = srv.sockets[0].getsockname()[1]
        endpoint = ws.Endpoint(f"https://127.0.0.1:{port}/x", ssl.create_default_context(), {})
        with pytest.raises(ws.WebsocketError, match="CERTIFICATE_VERIFY_FAILED"):
            await ws.KubeStream.connect(endpoint, lambda _: None, lambda _: None, lambda _: None)

    run(main())
