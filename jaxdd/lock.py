"""One process at a time on a folder (a run folder, an expert-cache entry): `hold(folder, what)`.

The lock is ``<folder>/.jaxdd.lock``, an advisory `fcntl.flock` on it, with the holder's pid and host
written inside. The kernel drops a flock when its process dies, however it dies (SIGKILL included),
so a lock file left by a killed process is not held: the next process takes it over with one warning
line naming the dead pid. A second live process is refused with one line naming the holder's pid.
A process holds a lock until it releases it or exits; taking the same folder again in the same process
is a no-op (a library user may run several distillations one after the other on one folder).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import socket

from jaxdd.errors import JaxddError, warn

LOCK = ".jaxdd.lock"
_held: dict[str, tuple[int, bool]] = {}  # folder (real path) -> (descriptor of its lock, whether hold made it)


def hold(folder, what: str, *, hint: str = "wait for it to finish or stop it") -> None:
    """Lock `folder` (created if missing) for this process, or raise a one-line JaxddError naming the
    holder. `what` names the folder in messages (e.g. "--out runs/x"). A folder made here and still empty
    (but for the lock) when the lock is released is removed again."""
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        return
    file = os.path.join(key, LOCK)
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise JaxddError(f"{what}: cannot create the lock file {file} ({err.strerror}): choose another "
                         f"folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _read(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise JaxddError(f"{what}: cannot lock {file} ({err.strerror}): choose a folder on a local disk") from None
        raise JaxddError(f"{what} is in use by another jaxdd process ({holder or 'pid unknown'}): {hint}, "
                         f"or choose another folder") from None
    stale = _read(fd)
    if stale and stale != _me():
        warn(f"{what}: taking over the lock of {stale}, which no longer runs (it was killed or crashed)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, _me().encode(), 0)
    _held[key] = (fd, made)


def check(folder, what: str, *, hint: str = "wait for it to finish or stop it") -> None:
    """Refuse (one line naming the holder) when another process holds `folder`'s lock; creates nothing, so
    a command can say so before any work and take the lock (`hold`) once every check has passed."""
    file = os.path.join(folder, LOCK)
    if os.path.realpath(folder) in _held or not os.path.isfile(file):
        return
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return  # unreadable: `hold` says why
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise JaxddError(f"{what} is in use by another jaxdd process ({_read(fd) or 'pid unknown'}): {hint}, or "
                         f"choose another folder") from None
    finally:
        os.close(fd)


def release(folder) -> None:
    """Give up this process's lock on `folder` (if it holds one). The lock file stays, emptied (removing
    it could let two later processes lock two different files); a folder `hold` made that holds nothing
    else is removed."""
    key = os.path.realpath(folder)
    fd, made = _held.pop(key, (None, False))
    if fd is None:
        return
    os.ftruncate(fd, 0)
    try:
        if made and os.listdir(key) == [LOCK]:
            os.unlink(os.path.join(key, LOCK))
            os.rmdir(key)
    except OSError:  # gone already, or written meanwhile: nothing to tidy
        pass
    os.close(fd)


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


@atexit.register
def _release_all() -> None:
    for folder in list(_held):
        release(folder)
