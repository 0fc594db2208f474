"""The test infrastructure's own invariants (tests/hub_server.py)."""

import socket
import threading

from tests.hub_server import guard_sockets


def _loopback_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        for _ in range(8):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_a_second_guard_replaces_the_first(monkeypatch):
    srv = _loopback_server()
    try:
        blocked = guard_sockets(monkeypatch, allow_loopback=False)
        try:
            socket.create_connection(srv.getsockname(), timeout=5)
            raise AssertionError("the first guard let a loopback connection through")
        except ConnectionRefusedError:
            pass
        assert blocked == [srv.getsockname()]
        # re-guard with loopback allowed: a *new* connection must now go through
        blocked = guard_sockets(monkeypatch, allow_loopback=True)
        socket.create_connection(srv.getsockname(), timeout=5).close()
        s = socket.socket()
        s.settimeout(5)
        s.connect(srv.getsockname())
        s.close()
        assert blocked == []
        # and non-loopback addresses stay blocked (nothing is sent: the guard refuses first)
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=1)
            raise AssertionError("a non-loopback address was not blocked")
        except ConnectionRefusedError:
            pass
        assert blocked == [("192.0.2.1", 80)]
    finally:
        srv.close()
