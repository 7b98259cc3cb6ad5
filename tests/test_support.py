"""The test helpers the fault tests stand on: a cut that races live traffic must not fail them."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support import TcpProxy


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP server that sends back whatever it reads, on a free port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def _talk(client: socket.socket, flowing: threading.Event, done: threading.Event) -> None:
    """Send and read back bytes until `done`, or until the proxy cuts the connection."""
    with contextlib.suppress(OSError):
        while not done.is_set():
            client.sendall(b"x" * 4096)
            client.recv(65536)
            flowing.set()


def test_cutting_the_proxy_while_bytes_flow_raises_nothing_in_its_threads(echo_server: int) -> None:
    """`cut()` used to close the sockets a piping thread was about to select on: that thread
    died with a ValueError, which pytest reports against whichever fault test was running."""
    failures: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        for _ in range(60):
            proxy = TcpProxy("127.0.0.1", echo_server)
            proxy.start()
            clients = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(4)]
            flowing = threading.Event()
            done = threading.Event()

            talkers = [
                threading.Thread(target=_talk, args=(c, flowing, done), daemon=True)
                for c in clients
            ]
            for talker in talkers:
                talker.start()
            assert flowing.wait(5), "no bytes came back through the proxy"
            proxy.cut()
            done.set()
            for client in clients:
                client.close()
            for talker in talkers:
                talker.join(5)
        # the piping threads end on their own after the cut: give them the time to
        for thread in threading.enumerate():
            if thread.name.endswith("(_pipe)"):
                thread.join(5)
    finally:
        threading.excepthook = previous
    assert failures == []
