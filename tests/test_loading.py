"""load_app: spec parsing, sys.path handling, factories, and every failure message."""

from __future__ import annotations

import itertools
import os
import sys
import textwrap

import pytest

from multicorn.loading import (
    AppAttributeNotFound,
    AppFactoryError,
    AppImportFailed,
    AppLoadError,
    AppModuleNotFound,
    AppNotCallable,
    AppSpecError,
    detect_interface,
    load_app,
    looks_like_factory,
)

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _isolate_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture
def make_module(tmp_path):
    """Write a uniquely named module into tmp_path and return its name."""

    def make(source: str, *, package: bool = False) -> str:
        name = f"mc_test_app_{os.getpid()}_{next(_counter)}"
        if package:
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text("")
            (tmp_path / name / "asgi.py").write_text(textwrap.dedent(source))
        else:
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return make


APP_SOURCE = """
    async def app(scope, receive, send):
        pass

    class Holder:
        class Inner:
            @staticmethod
            async def handler(scope, receive, send):
                pass

    not_callable = 42

    def create_app():
        return app

    def broken_factory():
        raise RuntimeError("database is down")

    def bad_factory():
        return "not an app"
"""


def test_loads_attribute(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    app = load_app(f"{name}:app", app_dir=str(tmp_path))
    assert app is sys.modules[name].app
    assert sys.path[0] == str(tmp_path)


def test_default_attribute_is_app(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    assert load_app(name, app_dir=str(tmp_path)) is sys.modules[name].app


def test_dotted_attribute_path(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    app = load_app(f"{name}:Holder.Inner.handler", app_dir=str(tmp_path))
    assert app is sys.modules[name].Holder.Inner.handler


def test_package_submodule(tmp_path, make_module):
    name = make_module(APP_SOURCE, package=True)
    app = load_app(f"{name}.asgi:app", app_dir=str(tmp_path))
    assert app is sys.modules[f"{name}.asgi"].app


def test_empty_app_dir_means_cwd(tmp_path, make_module, monkeypatch):
    name = make_module(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    assert callable(load_app(f"{name}:app"))
    assert sys.path[0] == str(tmp_path)


def test_factory(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    app = load_app(f"{name}:create_app", app_dir=str(tmp_path), factory=True)
    assert app is sys.modules[name].app


@pytest.mark.parametrize("spec", [":app", "mod:", "mod:a..b", "", "mod:.x"])
def test_bad_spec(spec):
    with pytest.raises(AppSpecError, match="expected 'module:attribute'"):
        load_app(spec)


def test_module_not_found(tmp_path):
    with pytest.raises(AppModuleNotFound) as info:
        load_app("mc_definitely_missing:app", app_dir=str(tmp_path))
    message = str(info.value)
    assert "could not import module 'mc_definitely_missing'" in message
    assert str(tmp_path) in message
    assert "\n" not in message


def test_parent_package_not_found(tmp_path):
    with pytest.raises(AppModuleNotFound, match="no module named 'mc_missing_pkg'"):
        load_app("mc_missing_pkg.asgi:app", app_dir=str(tmp_path))


def test_missing_import_inside_module_is_not_reported_as_missing_module(tmp_path, make_module):
    name = make_module("import mc_missing_dependency_xyz\napp = None\n")
    with pytest.raises(AppImportFailed) as info:
        load_app(f"{name}:app", app_dir=str(tmp_path))
    assert not isinstance(info.value, AppModuleNotFound)
    assert f"module '{name}' failed to import" in str(info.value)
    assert "mc_missing_dependency_xyz" in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_error_while_importing(tmp_path, make_module):
    name = make_module("raise RuntimeError('boom at import')\n")
    with pytest.raises(AppImportFailed, match="RuntimeError: boom at import") as info:
        load_app(f"{name}:app", app_dir=str(tmp_path))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_syntax_error_while_importing(tmp_path, make_module):
    name = make_module("def app(:\n")
    with pytest.raises(AppImportFailed, match="SyntaxError"):
        load_app(f"{name}:app", app_dir=str(tmp_path))


def test_attribute_not_found(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppAttributeNotFound) as info:
        load_app(f"{name}:missing", app_dir=str(tmp_path))
    assert str(info.value) == f"module '{name}' has no attribute 'missing'"


def test_nested_attribute_not_found(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppAttributeNotFound) as info:
        load_app(f"{name}:Holder.Nope.x", app_dir=str(tmp_path))
    assert str(info.value) == f"{name}:Holder has no attribute 'Nope'"


def test_not_callable(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(
        AppNotCallable, match="is not an ASGI application: 'int' object is not callable"
    ):
        load_app(f"{name}:not_callable", app_dir=str(tmp_path))


def test_factory_not_callable(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(
        AppNotCallable, match=r"app factory .* cannot be called: 'int' object is not callable"
    ):
        load_app(f"{name}:not_callable", app_dir=str(tmp_path), factory=True)


def test_factory_raises(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppFactoryError, match="raised RuntimeError: database is down") as info:
        load_app(f"{name}:broken_factory", app_dir=str(tmp_path), factory=True)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_factory_needing_arguments(tmp_path, make_module):
    name = make_module("def make(settings):\n    return None\n")
    with pytest.raises(AppFactoryError, match="raised TypeError"):
        load_app(f"{name}:make", app_dir=str(tmp_path), factory=True)


def test_factory_returns_non_callable(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    with pytest.raises(AppNotCallable, match="returned a non-callable 'str' object"):
        load_app(f"{name}:bad_factory", app_dir=str(tmp_path), factory=True)


def test_missing_app_dir(tmp_path):
    with pytest.raises(AppModuleNotFound, match=r"app directory .* does not exist"):
        load_app("x:app", app_dir=str(tmp_path / "nope"))


def test_all_errors_share_a_base():
    for cls in (
        AppSpecError,
        AppModuleNotFound,
        AppImportFailed,
        AppAttributeNotFound,
        AppNotCallable,
        AppFactoryError,
    ):
        assert issubclass(cls, AppLoadError)


# ---- factories passed without --factory -----------------------------------------------------


def test_factory_without_the_flag_is_called_with_a_warning(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    warnings: list[str] = []
    app = load_app(f"{name}:create_app", app_dir=str(tmp_path), warn=warnings.append)
    assert app is sys.modules[name].app
    assert len(warnings) == 1
    assert "factory" in warnings[0] and "--factory" in warnings[0]
    assert f"{name}:create_app" in warnings[0]


def test_an_app_is_not_taken_for_a_factory(tmp_path, make_module):
    name = make_module(APP_SOURCE)
    warnings: list[str] = []
    app = load_app(f"{name}:app", app_dir=str(tmp_path), warn=warnings.append)
    assert app is sys.modules[name].app
    assert warnings == []


def test_a_class_named_instead_of_its_instance_is_a_factory(tmp_path, make_module):
    name = make_module(
        """
        class App:
            async def __call__(self, scope, receive, send):
                pass
        """
    )
    warnings: list[str] = []
    app = load_app(f"{name}:App", app_dir=str(tmp_path), warn=warnings.append)
    assert isinstance(app, sys.modules[name].App)
    assert len(warnings) == 1


# ---- which interface an app speaks ----------------------------------------------------------


async def _asgi3_function(scope, receive, send):
    pass


class _ASGI3Instance:
    async def __call__(self, scope, receive, send):
        pass


class _ASGI2Class:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass


def _asgi2_function(scope):
    async def instance(receive, send):
        pass

    return instance


def _wsgi_function(environ, start_response):
    return []


class _WSGIInstance:
    def __call__(self, environ, start_response):
        return []


class _AwaitableASGI3Class:
    def __init__(self, scope, receive, send):
        pass

    def __await__(self):
        yield


def _flask_app():
    flask = pytest.importorskip("flask")
    return flask.Flask("detect")


def _django_wsgi_handler():
    pytest.importorskip("django")
    from tests.e2e.wsgi_apps import django_app  # configures Django as the e2e tests do

    return django_app()


def _starlette_app():
    starlette = pytest.importorskip("starlette.applications")
    return starlette.Starlette()


@pytest.mark.parametrize(
    ("make", "interface"),
    [
        (lambda: _asgi3_function, "asgi3"),
        (_ASGI3Instance, "asgi3"),
        (lambda: _AwaitableASGI3Class, "asgi3"),
        (lambda: _ASGI2Class, "asgi2"),
        (lambda: _asgi2_function, "asgi2"),
        (lambda: _wsgi_function, "wsgi"),
        (_WSGIInstance, "wsgi"),
        (_flask_app, "wsgi"),
        (_django_wsgi_handler, "wsgi"),
        (_starlette_app, "asgi3"),
        (lambda: print, "asgi3"),  # a builtin: no signature to read, so the native interface
    ],
    ids=[
        "async-function",
        "async-call-method",
        "awaitable-class",
        "asgi2-class",
        "asgi2-function",
        "wsgi-function",
        "wsgi-call-method",
        "flask",
        "django-wsgi",
        "starlette",
        "builtin",
    ],
)
def test_detect_interface(make, interface):
    assert detect_interface(make()) == interface


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (lambda: None, True),
        (lambda config=None: None, True),
        (_asgi3_function, False),
        (_ASGI2Class, False),
        (_wsgi_function, False),
        (_ASGI3Instance, True),  # the class itself, where an instance was meant
        (_ASGI3Instance(), False),  # an instance is not a function or class
    ],
)
def test_looks_like_factory(target, expected):
    assert looks_like_factory(target) is expected
