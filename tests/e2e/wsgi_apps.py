"""WSGI and ASGI 2 applications for the end-to-end tests: a Flask app, a Django WSGI handler, a
plain WSGI function and an ASGI 2 class. The in-process tests import them; the subprocess tests
start them by import string (tests.e2e.wsgi_apps:NAME)."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

CHUNK = 64 * 1024


class Probe:
    """What the in-process tests observe of a running app, shared with its worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first_read = threading.Event()  # the app read the first piece of a body
        self.produced = 0  # chunks a streaming response has produced so far
        self.largest_buffer = 0  # most body bytes wsgi.input held beyond what was read

    def reset(self) -> None:
        self.first_read.clear()
        self.produced = 0
        self.largest_buffer = 0

    def buffered(self, stream: Any) -> None:
        # The adapter's own buffer: what it fetched from the loop and the app has not read.
        held = len(getattr(stream, "_buffer", b""))
        with self.lock:
            self.largest_buffer = max(self.largest_buffer, held)


probe = Probe()


def _announce(text: str) -> None:
    print(f"[test-app] {text}", flush=True)


def create_flask_app() -> Any:
    from flask import Flask, Response, request

    app = Flask("multicorn-tests")

    @app.get("/")
    def index() -> str:
        return f"hello from flask over {request.environ['SERVER_PROTOCOL']}"

    @app.post("/digest")
    def digest() -> str:
        # Reads wsgi.input (through request.stream) a chunk at a time, as a file upload would.
        stream = request.stream
        raw = request.environ["wsgi.input"]
        hasher = hashlib.sha256()
        size = 0
        while True:
            data = stream.read(CHUNK)
            probe.buffered(raw)
            if not data:
                return f"{size} {hasher.hexdigest()}"
            probe.first_read.set()
            size += len(data)
            hasher.update(data)

    @app.get("/stream/<int:count>")
    def stream(count: int) -> Response:
        def chunks() -> Any:
            block = b"s" * CHUNK
            for _ in range(count):
                with probe.lock:
                    probe.produced += 1
                yield block

        return Response(chunks(), mimetype="application/octet-stream")

    @app.get("/stuck")
    def stuck() -> str:
        _announce("stuck in /stuck")
        time.sleep(60)
        return "never"

    return app


flask_app = create_flask_app()


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    """/file: the given file through wsgi.file_wrapper; /boom raises before answering."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("the WSGI app failed")
    if path == "/file":
        name = environ["QUERY_STRING"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(name, "rb"))
    start_response("404 Not Found", [])
    return [b"no such path"]


class ASGI2Echo:
    """An ASGI 2 (double callable) app: the class is constructed with the scope."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        if self.scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        text = f"asgi {self.scope['asgi']['version']} {self.scope['path']} {len(body)}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": text.encode()})


# ---- Django -------------------------------------------------------------------------------


def _django_hello(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(f"hello from django {request.path} {request.GET.get('q', '')}")


def _django_digest(request: Any) -> Any:
    from django.http import HttpResponse

    hasher = hashlib.sha256()
    size = 0
    while data := request.read(CHUNK):
        size += len(data)
        hasher.update(data)
    return HttpResponse(f"{size} {hasher.hexdigest()}")


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("hello/", _django_hello), path("digest/", _django_digest)]


def django_app() -> Any:
    """Django's WSGI handler over a two-view URLconf (this module's `urlpatterns`)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="multicorn-tests", INSTALLED_APPS=[], ALLOWED_HOSTS=["*"], USE_TZ=True
        )
    django.setup()  # once populated, a no-op
    # Another test may have configured Django first (the Channels one): the URLconf is ours.
    settings.ROOT_URLCONF = __name__
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


def __getattr__(name: str) -> Any:
    # Django reads `urlpatterns` from the URLconf module; built on first use, after setup.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)
