"""A unix-socket bridge to the agent, for supervisors that run unprivileged.

An unprivileged supervisor cannot run ``ip netns exec``. So the ``cluster`` fixture runs, as
root, ``agent_bridge.py --serve SOCKET CMD...``, which listens on a unix socket (mode 666)
and starts ``CMD`` (the normal agent command) for each connection; the user's supervisor
gets ``agent_bridge.py SOCKET`` as its --agent-exec. The pair behaves like the agent's own
stdin/stdout, as ``kubectl exec -i`` does: the agent sees EOF on stdin when the supervisor
closes its end, everything the agent writes is delivered, and the client exits as soon as
the agent has (``socat`` would linger for its -t timeout after the agent exits, which looks
like a hung agent to the supervisor). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading


def _copy_to_socket(fd: int, sock: socket.socket) -> None:
    """Copy a file descriptor to the socket until EOF, then half-close the socket."""
    try:
        while data := os.read(fd, 65536):
            sock.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def _copy_to_fd(sock: socket.socket, fd: int) -> None:
    """Copy the socket to a file descriptor until EOF."""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]


def client(path: str) -> int:
    """Relay stdin/stdout to the bridge socket; exit when the agent's side ends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(f"agent_bridge: cannot reach the agent bridge {path}: {exc}", file=sys.stderr)
        return 1
    threading.Thread(target=_copy_to_socket, args=(0, sock), daemon=True).start()
    _copy_to_fd(sock, 1)
    return 0


def _serve_one(conn: socket.socket, cmd: list[str]) -> None:
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as exc:
        print(f"agent_bridge: cannot start {cmd[0]}: {exc}", file=sys.stderr, flush=True)
        conn.close()
        return
    assert proc.stdin is not None and proc.stdout is not None

    def to_agent() -> None:
        _copy_to_fd(conn, proc.stdin.fileno())  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]

    upstream = threading.Thread(target=to_agent, daemon=True)
    upstream.start()
    _copy_to_socket(proc.stdout.fileno(), conn)
    proc.stdout.close()
    proc.wait()
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)  # wakes to_agent if the client never closed
    upstream.join(timeout=5)
    conn.close()


def serve(path: str, cmd: list[str]) -> int:
    """Accept connections forever, one agent process each; say ``ready`` once listening."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve_one, args=(conn, cmd), daemon=True).start()


def main(argv: list[str]) -> int:
    """``agent_bridge.py SOCKET`` (client) or ``agent_bridge.py --serve SOCKET CMD...``."""
    if len(argv) >= 4 and argv[1] == "--serve":
        return serve(argv[2], argv[3:])
    if len(argv) == 2:
        return client(argv[1])
    print("usage: agent_bridge.py SOCKET | agent_bridge.py --serve SOCKET CMD...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
