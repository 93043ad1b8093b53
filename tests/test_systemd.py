"""systemd.py: reading LISTEN_*, mapping activated sockets to binds, sd_notify datagrams, the
watchdog interval; and daemon.py: umask, pid file, and the privilege drop (with os mocked)."""

from __future__ import annotations

import os
import socket

import pytest

from multicorn import daemon
from multicorn.__main__ import with_activated_sockets
from multicorn.config import Config, ConfigError
from multicorn.systemd import (
    ActivatedSocket,
    ActivationError,
    Notifier,
    activation_binds,
    listen_fds,
    watchdog_interval,
)


def test_listen_fds_for_another_pid_is_empty_and_unsets_the_variables():
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert listen_fds(environ, pid=4242) == []
    assert environ == {"OTHER": "x"}


def test_listen_fds_without_variables_is_empty():
    assert listen_fds({}, pid=os.getpid()) == []


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "7", "LISTEN_FDS": "two"}, "is not a number"),
        ({"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, "names 1 sockets"),
    ],
)
def test_listen_fds_malformed(environ, message):
    with pytest.raises(ActivationError, match=message):
        listen_fds(environ, pid=7)


def test_listen_fds_names_and_kinds(monkeypatch):
    kinds = {3: "stream", 4: "datagram"}
    monkeypatch.setattr("multicorn.systemd._socket_kind", kinds.__getitem__)
    environ = {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:quic"}
    assert listen_fds(environ, pid=7) == [
        ActivatedSocket(fd=3, name="web", kind="stream"),
        ActivatedSocket(fd=4, name="quic", kind="datagram"),
    ]
    assert environ == {}


def test_socket_kind_of_a_descriptor_that_is_no_socket(tmp_path):
    from multicorn.systemd import _socket_kind

    with (
        open(tmp_path / "f", "w") as fh,
        pytest.raises(ActivationError, match="not an open socket"),
    ):
        _socket_kind(fh.fileno())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert _socket_kind(udp.fileno()) == "datagram"
        assert udp.fileno() != -1  # still open: only its type was read


def _sockets(*spec: tuple[str, str]) -> list[ActivatedSocket]:
    return [ActivatedSocket(fd=3 + i, name=n, kind=k) for i, (n, k) in enumerate(spec)]  # type: ignore[arg-type]


def test_activation_binds_with_tls():
    sockets = _sockets(("web", "stream"), ("insecure", "stream"), ("h3", "datagram"))
    assert activation_binds(sockets, tls=True) == {
        "bind": ["fd://3"],
        "insecure_bind": ["fd://4"],
        "quic_bind": ["fd://5"],
    }


def test_activation_binds_without_tls_serve_every_stream_in_cleartext():
    sockets = _sockets(("web", "stream"), ("insecure", "stream"))
    assert activation_binds(sockets, tls=False)["bind"] == ["fd://3", "fd://4"]


def test_activation_binds_only_insecure_sockets_become_the_binds():
    binds = activation_binds(_sockets(("insecure", "stream")), tls=True)
    assert binds == {"bind": ["fd://3"], "insecure_bind": [], "quic_bind": []}


def test_activation_binds_refuses_udp_without_tls_and_no_stream_socket():
    with pytest.raises(ActivationError, match="needs a certificate"):
        activation_binds(_sockets(("web", "stream"), ("h3", "datagram")), tls=False)
    with pytest.raises(ActivationError, match="no stream"):
        activation_binds(_sockets(("h3", "datagram")), tls=True)


def test_with_activated_sockets_replaces_every_bind(monkeypatch):
    monkeypatch.setattr("multicorn.systemd._socket_kind", lambda fd: "stream")
    config = Config(bind=["127.0.0.1:9000"])
    environ = {"LISTEN_PID": "7", "LISTEN_FDS": "1"}
    assert with_activated_sockets(config, environ, 7).bind == ["fd://3"]
    assert with_activated_sockets(config, {}, 7) is config


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ, interval):
    assert watchdog_interval(environ, pid=7) == interval


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_states_as_one_datagram(tmp_path, abstract):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"multicorn-test-{os.getpid()}"
        receiver.bind("\0" + name)
        environ = {"NOTIFY_SOCKET": "@" + name}
    else:
        receiver.bind(str(tmp_path / "notify"))
        environ = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    with receiver:
        receiver.settimeout(5)
        notifier = Notifier.from_environ(environ)
        assert notifier.ready("Serving on\nhttp://x")
        assert receiver.recv(1024) == b"READY=1\nSTATUS=Serving on http://x"
        assert notifier.reloading()
        reloading = receiver.recv(1024).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert notifier.stopping() and receiver.recv(1024) == b"STOPPING=1"
        assert notifier.watchdog() and receiver.recv(1024) == b"WATCHDOG=1"


def test_notifier_never_raises(tmp_path, caplog):
    assert not Notifier.from_environ({}).ready()
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative"}).enabled
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level("DEBUG", logger="multicorn.error"):
        assert not gone.ready()
    assert "sd_notify" in caplog.text


# ---- daemon.py ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("022", 0o22), ("0o027", 0o27), ("7", 7)])
def test_parse_umask(text, value):
    assert daemon.parse_umask(text) == value


@pytest.mark.parametrize("text", ["", "8", "1000", "abc", "-1"])
def test_parse_umask_rejects(text):
    with pytest.raises(ValueError, match="octal umask"):
        daemon.parse_umask(text)


def test_config_checks_the_umask():
    with pytest.raises(ConfigError, match="umask"):
        Config(umask="999")
    assert Config(umask="027").umask == "027"


def test_pid_file_removes_only_its_own(tmp_path):
    path = tmp_path / "pid"
    daemon.PidFile(str(path), 1234).write()
    assert path.read_text() == "1234\n"
    daemon.PidFile(str(path), 99).remove()  # someone else's pid file now: keep it
    assert path.exists()
    daemon.PidFile(str(path), 1234).remove()
    assert not path.exists()


def test_pid_file_in_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(daemon.PrivilegeError, match="could not write pid file"):
        daemon.PidFile(str(tmp_path / "missing" / "pid"), 1).write()


def test_resolve_identity_by_name_and_number():
    import pwd

    root = pwd.getpwuid(0)
    identity = daemon.resolve_identity(root.pw_name, None)
    assert (identity.uid, identity.gid, identity.user_name) == (0, root.pw_gid, root.pw_name)
    assert daemon.resolve_identity(None, "12345") == daemon.Identity(uid=None, gid=12345)
    assert daemon.resolve_identity(None, None) == daemon.Identity(uid=None, gid=None)
    with pytest.raises(daemon.PrivilegeError, match="user 'no-such-user-x' does not exist"):
        daemon.resolve_identity("no-such-user-x", None)
    with pytest.raises(daemon.PrivilegeError, match="group 'no-such-group-x' does not exist"):
        daemon.resolve_identity(None, "no-such-group-x")


class _FakeOs:
    def __init__(self, *, deny: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.gid = 0
        self.deny = deny

    def setgid(self, gid: int) -> None:
        if self.deny:
            raise PermissionError(1, "Operation not permitted")
        self.calls.append(("setgid", gid))
        self.gid = gid

    def getgid(self) -> int:
        return self.gid

    def setgroups(self, groups: list[int]) -> None:
        self.calls.append(("setgroups", groups))

    def initgroups(self, user: str, gid: int) -> None:
        self.calls.append(("initgroups", (user, gid)))

    def setuid(self, uid: int) -> None:
        self.calls.append(("setuid", uid))


def _patch_os(monkeypatch, fake: _FakeOs) -> None:
    for name in ("setgid", "getgid", "setgroups", "initgroups", "setuid"):
        monkeypatch.setattr(daemon.os, name, getattr(fake, name))


def test_drop_privileges_order(monkeypatch):
    fake = _FakeOs()
    _patch_os(monkeypatch, fake)
    daemon.drop_privileges(daemon.Identity(uid=1000, gid=100, user_name="app"))
    # Group before user: once the uid is dropped, setgid is no longer allowed.
    assert fake.calls == [("setgid", 100), ("initgroups", ("app", 100)), ("setuid", 1000)]


def test_drop_privileges_group_only_and_nothing(monkeypatch):
    fake = _FakeOs()
    _patch_os(monkeypatch, fake)
    daemon.drop_privileges(daemon.Identity(uid=None, gid=None))
    assert fake.calls == []
    daemon.drop_privileges(daemon.Identity(uid=None, gid=50))
    assert fake.calls == [("setgid", 50), ("setgroups", [50])]


def test_drop_privileges_without_root_is_a_clear_error(monkeypatch):
    _patch_os(monkeypatch, _FakeOs(deny=True))
    with pytest.raises(daemon.PrivilegeError, match="start as root"):
        daemon.drop_privileges(daemon.Identity(uid=1000, gid=100, user_name="app"))


def test_chown_paths(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(daemon.os, "chown", lambda path, uid, gid: calls.append((path, uid, gid)))
    daemon.chown_paths(["/a"], daemon.Identity(uid=None, gid=None))
    daemon.chown_paths(["/a"], daemon.Identity(uid=5, gid=None))
    assert calls == [("/a", 5, -1)]


def test_process_flags_parse():
    from multicorn.cli import parse_args

    _, _, given = parse_args(["app:app", "-u", "nobody", "-g", "0", "-m", "027", "-p", "x.pid"])
    assert given == {"user": "nobody", "group": "0", "umask": "027", "pid": "x.pid"}
    _, _, given = parse_args(
        ["app:app", "--user", "1", "--group", "g", "--umask", "7", "--pid", "p"]
    )
    assert given == {"user": "1", "group": "g", "umask": "7", "pid": "p"}
