"""Process-level deployment chores: the pid file, the umask, and dropping root privileges.

Each is a plain function a process model calls at the right moment: `apply_umask` before any
socket is bound (it decides a unix socket file's mode), `chown_paths` and `drop_privileges` after
every socket is bound and before the first connection is served (binding port 443 needs root;
serving must not have it), `PidFile` for as long as the server runs. Unix only (pwd, grp).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "Identity",
    "PidFile",
    "PrivilegeError",
    "apply_umask",
    "chown_paths",
    "drop_privileges",
    "parse_umask",
    "resolve_identity",
]


class PrivilegeError(OSError):
    """The server cannot become the configured user or group, or write its pid file."""


def parse_umask(text: str) -> int:
    """An octal umask ("022", "0o027", "7") as an int; ValueError when it is not one."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise ValueError(f"expected an octal umask from 000 to 777 such as 027, got {text!r}")
    return int(digits, 8)


def apply_umask(umask: str | None) -> int | None:
    """Set the process umask from its octal text; returns the previous one (None: unchanged)."""
    if umask is None:
        return None
    return os.umask(parse_umask(umask))


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom to become: uid/gid are None to keep the current one."""

    uid: int | None
    gid: int | None
    user_name: str | None = None  # for initgroups (supplementary groups)


def resolve_identity(user: str | None, group: str | None) -> Identity:
    """Look up `user` and `group` (names or numbers). Without `group`, the user's primary group.

    Raises PrivilegeError naming what is unknown.
    """
    import grp
    import pwd

    uid = gid = None
    user_name = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            if not user.isdigit():
                raise PrivilegeError(
                    f"user {user!r} does not exist; give an existing user name or a uid"
                ) from None
            uid = int(user)
        else:
            uid, gid, user_name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise PrivilegeError(
                    f"group {group!r} does not exist; give an existing group name or a gid"
                ) from None
    return Identity(uid=uid, gid=gid, user_name=user_name)


def chown_paths(paths: Iterable[str], identity: Identity) -> None:
    """Give the unix socket files at `paths` to the identity the server will run as, so the
    server can still remove them at exit (and their owner decides who may connect)."""
    if identity.uid is None and identity.gid is None:
        return
    for path in paths:
        try:
            os.chown(
                path,
                -1 if identity.uid is None else identity.uid,
                -1 if identity.gid is None else identity.gid,
            )
        except OSError as exc:
            raise PrivilegeError(
                f"could not give unix socket {path!r} to uid {identity.uid} gid {identity.gid}: "
                f"{exc.strerror or exc}"
            ) from exc


def drop_privileges(identity: Identity) -> None:
    """Become `identity` for good: group first (setgid needs root), supplementary groups, then
    the user. Raises PrivilegeError (run as root, or leave user and group unset)."""
    if identity.uid is None and identity.gid is None:
        return
    try:
        if identity.gid is not None:
            os.setgid(identity.gid)
            if identity.uid is None:
                os.setgroups([identity.gid])
        if identity.uid is not None:
            if identity.user_name is not None:
                os.initgroups(identity.user_name, os.getgid())
            else:
                os.setgroups([os.getgid()])
            os.setuid(identity.uid)
    except PermissionError as exc:
        raise PrivilegeError(
            f"could not switch to uid {identity.uid} gid {identity.gid}: {exc.strerror}; "
            "user and group need the server to start as root"
        ) from exc


class PidFile:
    """The pid file: written on `write()`, removed on `remove()` if it still names this pid."""

    __slots__ = ("_path", "_pid")

    def __init__(self, path: str, pid: int) -> None:
        self._path = path
        self._pid = pid

    def write(self) -> None:
        try:
            with open(self._path, "w", encoding="ascii") as fh:
                fh.write(f"{self._pid}\n")
        except OSError as exc:
            raise PrivilegeError(
                f"could not write pid file {self._path!r}: {exc.strerror or exc}; check the "
                "directory exists and is writable"
            ) from exc

    def remove(self) -> None:
        # Another server may have taken over the path since; its file is not ours to delete.
        with contextlib.suppress(OSError, ValueError):
            with open(self._path, encoding="ascii") as fh:
                if int(fh.read().strip()) != self._pid:
                    return
            os.unlink(self._path)
