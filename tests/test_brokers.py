"""The test servers themselves: each answers on its own port, and comes back on the same port
after a kill (the outage tests rely on both)."""

from __future__ import annotations

import socket

from ._brokers import Broker


def _ask(port: int, line: bytes, expect: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(line)
        seen = b""
        while expect not in seen:
            chunk = sock.recv(4096)
            assert chunk, f"closed before {expect!r}; got {seen!r}"
            seen += chunk
        return seen


def test_redis_answers_and_comes_back_on_its_port(redis_server: Broker) -> None:
    assert b"+PONG" in _ask(redis_server.port, b"PING\r\n", b"PONG")
    port = redis_server.port
    redis_server.kill()
    assert not redis_server.running
    redis_server.start()
    assert redis_server.port == port
    assert b"+PONG" in _ask(port, b"PING\r\n", b"PONG")


def test_nats_answers_and_comes_back_on_its_port(nats_server: Broker) -> None:
    assert b"INFO" in _ask(nats_server.port, b"", b"INFO")
    nats_server.kill()
    nats_server.start()
    assert b"PONG" in _ask(nats_server.port, b"CONNECT {}\r\nPING\r\n", b"PONG")
