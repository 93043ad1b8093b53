"""Sans-IO tests of an HTTP/1.1 connection drained for a restart (`CloseConnection(idle_grace=
True)`): an idle keep-alive connection answers the request its client may already be sending,
with `connection: close`, instead of closing under it."""

from __future__ import annotations

from multicorn.protocol.events import CloseConnection, ConnectionClosed, RequestReceived

from .helpers import make_server, parse_one, respond

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def test_an_idle_connection_answers_one_more_request_then_closes() -> None:
    server = make_server(now=0.0, keep_alive_timeout=5.0)
    server.receive_data(GET, 0.0)
    respond(server, 1, b"first", now=1.0)
    assert parse_one(server.data_to_send()).body == b"first"
    assert server.send(CloseConnection(idle_grace=True), 1.5) == []
    assert not server.closed
    [request] = [e for e in server.receive_data(GET, 2.0) if isinstance(e, RequestReceived)]
    assert request.stream_id == 2
    assert respond(server, 2, b"second", now=2.5) == [ConnectionClosed(error=None)]
    response = parse_one(server.data_to_send())
    assert response.body == b"second"
    assert response.header_tokens(b"connection") == {b"close"}
    assert server.closed


def test_an_idle_connection_in_grace_still_closes_at_its_keep_alive_timeout() -> None:
    server = make_server(now=0.0, keep_alive_timeout=5.0)
    assert server.send(CloseConnection(idle_grace=True), 1.0) == []
    assert server.next_deadline() == 5.0
    assert server.handle_deadline(5.0) == [ConnectionClosed(error=None)]
    assert server.closed


def test_without_grace_an_idle_connection_closes_at_once() -> None:
    server = make_server()
    assert server.send(CloseConnection(), 0.0) == [ConnectionClosed(error=None)]


def test_a_request_in_flight_ends_the_connection_after_its_response_either_way() -> None:
    server = make_server()
    server.receive_data(GET + GET, 0.0)
    assert server.send(CloseConnection(idle_grace=True), 0.0) == []
    assert respond(server, 1, b"last") == [ConnectionClosed(error=None)]
    assert parse_one(server.data_to_send()).header_tokens(b"connection") == {b"close"}
