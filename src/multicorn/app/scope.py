"""Builds the ASGI `http` and `websocket` connection scopes from a request head (ASGI www
spec 2.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from multicorn.app.context import ConnectionInfo
    from multicorn.protocol.events import RequestReceived
    from multicorn.typing import HTTPScope, WebSocketScope


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(raw path, query string) from an origin-form or absolute-form request target."""
    if not target.startswith(b"/") and b"://" in target:
        # absolute-form: drop scheme and authority (RFC 9112 3.2.2).
        after = target.split(b"://", 1)[1]
        slash = after.find(b"/")
        query_mark = after.find(b"?")
        if slash == -1 or (query_mark != -1 and query_mark < slash):
            target = b"/" + (after[query_mark:] if query_mark != -1 else b"")
        else:
            target = after[slash:]
    raw_path, _, query = target.partition(b"?")
    return raw_path, query


def build_http_scope(
    event: RequestReceived, info: ConnectionInfo, *, root_path: str, state: dict[str, object]
) -> HTTPScope:
    target = event.target
    if target[:1] == b"/":  # origin-form, nearly every request: no scheme or authority to drop
        raw_path, _, query = target.partition(b"?")
    else:
        raw_path, query = split_target(target)
    # ASGI: percent-escapes and UTF-8 sequences decoded into characters.
    if b"%" in raw_path:
        path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
    else:
        path = raw_path.decode("utf-8", "replace")
    if root_path and not path.startswith(root_path):
        # The proxy in front stripped the mount point; ASGI's path is the full path.
        path = root_path + path
        raw_path = root_path.encode() + raw_path
    headers = event.headers
    # Extensions, inline: this runs for every request.
    extensions: dict[str, dict[str, object]] = {"http.response.early_hint": {}}
    for name, value in headers:
        if name == b"te" and b"trailers" in value.lower():
            extensions["http.response.trailers"] = {}
            break
    if event.http_version == "2":
        extensions["http.response.push"] = {}
    if info.tls is not None:
        # ASGI TLS extension: present on TLS connections only, never on cleartext ones.
        extensions["tls"] = info.tls
    client, scheme, server = info.client, info.scheme, info.server
    if info.forwarder is not None:
        # A trusted proxy's peer: the client, scheme and host it forwards (app/proxy.py).
        client, scheme, server = info.forwarder.resolve(headers, client, scheme, server)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.5"},
        "http_version": event.http_version,
        "method": event.method.decode("ascii"),
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
        "state": state.copy(),
        "extensions": extensions,
    }


def build_websocket_scope(
    event: RequestReceived,
    info: ConnectionInfo,
    *,
    root_path: str,
    state: dict[str, object],
    subprotocols: list[str],
) -> WebSocketScope:
    """The ASGI `websocket` scope: the request's own fields as for `http` (no method), the
    client's subprotocol offers, and `websocket.http.response` so the app may deny with a
    response of its own."""
    http = build_http_scope(event, info, root_path=root_path, state=state)
    extensions: dict[str, dict[str, object]] = {"websocket.http.response": {}}
    if info.tls is not None:
        extensions["tls"] = info.tls
    return {
        "type": "websocket",
        "asgi": http["asgi"],
        "http_version": http["http_version"],
        "scheme": "wss" if http["scheme"] == "https" else "ws",
        "path": http["path"],
        "raw_path": http["raw_path"],
        "query_string": http["query_string"],
        "root_path": root_path,
        "headers": http["headers"],
        "client": http["client"],
        "server": http["server"],
        "subprotocols": subprotocols,
        "state": http["state"],
        "extensions": extensions,
    }
