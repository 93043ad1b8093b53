"""Finding the user's ASGI application from a "module:attribute" spec.

Owns the spec syntax, the sys.path adjustment that lets the app's own directory be imported,
calling app factories, and the one-line `AppLoadError` messages for each way this can fail.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import cast

from multicorn.typing import ASGIApp

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


def load_app(spec: str, *, app_dir: str = "", factory: bool = False) -> ASGIApp:
    """Import and return the ASGI application named by `spec` ("module:attr.sub", or "module"
    for "module:app").

    `app_dir` (the current directory when "") is put first on sys.path before importing. With
    `factory`, the attribute is called with no arguments and its result is the application.
    Raises a subclass of AppLoadError on every failure.
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
