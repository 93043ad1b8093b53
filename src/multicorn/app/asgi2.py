"""ASGI 2 applications ("double callable": `app(scope)` returns `instance(receive, send)`),
wrapped once at startup into the ASGI 3 shape the bridges call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from multicorn.typing import Receive, Scope, Send

    ASGI2App = Callable[[Scope], Callable[[Receive, Send], Awaitable[None]]]


class ASGI2Adapter:
    """An ASGI 3 application that serves `app`, an ASGI 2 one."""

    def __init__(self, app: ASGI2App) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The scope says which ASGI version the app is called with.
        versions: dict[str, Any] = dict(scope.get("asgi", {}))
        versions["version"] = "2.0"
        scope["asgi"] = versions
        instance = self._app(scope)
        await instance(receive, send)
