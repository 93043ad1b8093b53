"""Finding the user's application from a "module:attribute" spec, and telling what it is.

Owns the spec syntax, the sys.path adjustment that lets the app's own directory be imported,
calling app factories (and spotting one passed without `--factory`), which interface an app
speaks (ASGI 3, ASGI 2 or WSGI, read from its signature), and the one-line `AppLoadError`
messages for each way loading can fail.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from typing import TYPE_CHECKING, cast

from multicorn.typing import ASGIApp

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_ATTRIBUTE = "app"


class AppLoadError(Exception):
    """The application could not be loaded; str() is a one-line message for the user."""


class AppSpecError(AppLoadError):
    """The spec is not of the form "module:attribute"."""


class AppModuleNotFound(AppLoadError):
    """The module named in the spec (or one of its parent packages) does not exist."""


class AppImportFailed(AppLoadError):
    """The module exists but raised while importing; __cause__ holds the original error."""


class AppAttributeNotFound(AppLoadError):
    """The module has no attribute at the given path."""


class AppNotCallable(AppLoadError):
    """The attribute (or what a factory returned) is not an ASGI callable."""


class AppFactoryError(AppLoadError):
    """The factory raised; __cause__ holds the original error."""


def _split_spec(spec: str) -> tuple[str, list[str]]:
    module, sep, attr = spec.partition(":")
    if not sep:
        attr = DEFAULT_ATTRIBUTE
    parts = attr.split(".")
    if not module or any(not part for part in parts):
        raise AppSpecError(
            f"invalid application {spec!r}: expected 'module:attribute', e.g. 'myproject.asgi:app'"
        )
    return module, parts


def _import(module: str, search_dir: str) -> object:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        # Only report "not found" when the missing module is the one asked for (or a parent
        # package of it); a missing dependency inside the app is the app's own import error.
        if missing == module or module.startswith(missing + "."):
            raise AppModuleNotFound(
                f"could not import module {module!r}: no module named {missing!r} "
                f"(searched {search_dir!r} and sys.path; use --app-dir to search elsewhere)"
            ) from None
        raise AppImportFailed(
            f"module {module!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise AppImportFailed(
            f"module {module!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def _positional_arity(target: object) -> tuple[int, float] | None:
    """(required, accepted) positional arguments of calling `target`; accepted is infinite
    with *args. None when Python cannot tell (some builtins and C extensions)."""
    try:
        signature = inspect.signature(cast("Callable[..., object]", target))
    except (TypeError, ValueError):
        return None
    required = 0
    accepted: float = 0
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            accepted += 1
            if parameter.default is parameter.empty:
                required += 1
        elif parameter.kind is parameter.VAR_POSITIONAL:
            accepted = math.inf
    return required, accepted


def _is_coroutine_function(target: object) -> bool:
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - the method itself is inspected
    )


def looks_like_factory(target: object) -> bool:
    """Whether `target` is a function or class that requires no arguments (and takes no
    *args), so cannot be an application itself but may well build one: `create_app()` or
    `create_app(config=None)`, or a class named where its instance was meant."""
    if inspect.isclass(target):
        if hasattr(target, "__await__"):
            return False  # an ASGI 3 class: constructed with (scope, receive, send), awaited
    elif not inspect.isfunction(target) or inspect.iscoroutinefunction(target):
        return False
    arity = _positional_arity(target)
    return arity is not None and arity[0] == 0 and arity[1] != math.inf


def detect_interface(app: object) -> str:
    """ "asgi3", "asgi2" or "wsgi": what `app` speaks, read from its signature.

    A coroutine function (or an object whose `__call__` is one) is ASGI 3; so is a class whose
    instances are awaitable (constructed with scope, receive, send). Otherwise the number of
    required positional parameters decides: three is ASGI 3, two (`environ, start_response`)
    WSGI, one (`scope`, as an ASGI 2 class or function takes) ASGI 2. What cannot be read stays
    ASGI 3, the interface the server speaks natively.
    """
    if inspect.isclass(app) and hasattr(app, "__await__"):
        return "asgi3"
    if not inspect.isclass(app) and _is_coroutine_function(app):
        return "asgi3"
    arity = _positional_arity(app)
    if arity is None:
        return "asgi3"
    required, accepted = arity
    by_count = {3: "asgi3", 2: "wsgi", 1: "asgi2"}
    if required in by_count:
        return by_count[required]
    # Optional parameters: the largest shape it accepts.
    for count in (3, 2, 1):
        if required <= count <= accepted:
            return by_count[count]
    return "asgi3"


def load_app(
    spec: str,
    *,
    app_dir: str = "",
    factory: bool = False,
    warn: Callable[[str], object] | None = None,
) -> ASGIApp:
    """Import and return the application named by `spec` ("module:attr.sub", or "module"
    for "module:app"). It may speak ASGI 3, ASGI 2 or WSGI (see `detect_interface`); the type
    says ASGI 3, what the server serves once it has wrapped the others.

    `app_dir` (the current directory when "") is put first on sys.path before importing. With
    `factory`, the attribute is called with no arguments and its result is the application.
    Without it, an attribute that `looks_like_factory` is called all the same, and `warn` is
    given a message suggesting `--factory` (as Uvicorn does): served as an app, it would
    answer 500 to every request. Raises a subclass of AppLoadError on every failure.
    """
    module_name, parts = _split_spec(spec)
    search_dir = os.path.abspath(app_dir or os.getcwd())
    if not os.path.isdir(search_dir):
        raise AppModuleNotFound(
            f"app directory {search_dir!r} does not exist or is not a directory; fix --app-dir"
        )
    if not sys.path or sys.path[0] != search_dir:
        sys.path.insert(0, search_dir)

    target: object = _import(module_name, search_dir)
    for index, part in enumerate(parts):
        try:
            target = getattr(target, part)
        except AttributeError:
            where = ".".join(parts[:index])
            owner = f"module {module_name!r}" if not where else f"{module_name}:{where}"
            raise AppAttributeNotFound(f"{owner} has no attribute {part!r}") from None

    qualified = f"{module_name}:{'.'.join(parts)}"
    if not factory and looks_like_factory(target):
        factory = True
        if warn is not None:
            warn(
                f"{qualified!r} takes no arguments, so it looks like an app factory: calling it "
                "to get the application. Pass --factory to say so and silence this warning."
            )
    if factory:
        if not callable(target):
            raise AppNotCallable(
                f"app factory {qualified!r} cannot be called: "
                f"{type(target).__name__!r} object is not callable"
            )
        try:
            target = target()
        except Exception as exc:
            raise AppFactoryError(
                f"app factory {qualified!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(target):
            raise AppNotCallable(
                f"app factory {qualified!r} returned a non-callable "
                f"{type(target).__name__!r} object, not an ASGI application"
            )
        return cast(ASGIApp, target)
    if not callable(target):
        raise AppNotCallable(
            f"{qualified!r} is not an ASGI application: {type(target).__name__!r} object "
            "is not callable"
        )
    return cast(ASGIApp, target)
