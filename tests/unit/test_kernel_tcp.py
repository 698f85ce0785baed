"""Kernel behaviour the pending-connect path is built on (supervisor/session.py).

Kept as tests because the design depends on them: if a kernel ever changes
one, this file says which assumption broke.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def full_listener() -> Iterator[tuple[socket.socket, tuple[str, int]]]:
    """A loopback listener whose accept queue is full, so further SYNs are dropped."""
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    where = lst.getsockname()
    filler = socket.create_connection(where)
    yield lst, where
    filler.close()
    lst.close()


def _connecting(where: tuple[str, int]) -> socket.socket:
    app = socket.socket()
    app.setblocking(False)
    assert app.connect_ex(where) == errno.EINPROGRESS
    return app


def test_a_full_accept_queue_leaves_the_connect_in_progress(full_listener: tuple) -> None:
    _, where = full_listener
    with _connecting(where) as app:
        assert select.select([], [app], [], 0.3)[1] == []  # not writable: still SYN_SENT
        assert app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        with pytest.raises(OSError) as exc:
            app.getpeername()
        assert exc.value.errno == errno.ENOTCONN


def test_simultaneous_open_completes_it_at_once(full_listener: tuple) -> None:
    _, where = full_listener
    with _connecting(where) as app, socket.socket() as end:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        end.bind(where)
        end.settimeout(2)
        end.connect(app.getsockname())  # SYN from the very address app connects to
        assert select.select([], [app], [], 2)[1] == [app]
        assert app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert app.getpeername() == where
        app.setblocking(True)
        app.sendall(b"ping")
        assert end.recv(4) == b"ping"


def test_user_timeout_ends_it_with_etimedout(full_listener: tuple) -> None:
    _, where = full_listener
    with _connecting(where) as app:
        app.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1)
        assert select.select([], [app], [], 10)[1] == [app]  # at the next retransmission
        assert app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ETIMEDOUT


def test_no_listener_at_the_next_syn_means_econnrefused(full_listener: tuple) -> None:
    lst, where = full_listener
    with _connecting(where) as app:
        lst.close()
        assert select.select([], [app], [], 10)[1] == [app]
        assert app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
