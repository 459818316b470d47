"""Claims on outputs: at most one scot process writes a result, and reports it as its own.

Before a process writes a result it claims the result's name: a hidden claim file beside
it (``.<name>.claim``), created if missing and held under an exclusive ``flock`` until the
result is written or abandoned.  The claim file records who holds it (pid, host, start
time) and for which inputs, so that a second process can tell whether the name is taken
by the same images (it must not write them too) or by other ones (it picks another name),
and name the holder in its message.

Taking a claim is atomic: of any number of processes (or threads) racing for one name,
exactly one gets the lock.  The kernel drops the lock when its process ends, however it
ends (``SIGKILL`` included), so the claim file a killed run leaves behind is taken over by
the next one, which removes it when done.  On a file system without ``flock`` the claim
file's record decides: a claim of a live process of this host, or of another host, holds;
one whose process has ended on this host is taken over.  There, two processes that claim
one name within the same instant may both get it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..writing import WriteError

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # flock's "held by another open file"
_ATTEMPTS = 200  # a claim file changing hands under us is retried; each retry waits 5 ms


def claim_path(path: Path) -> Path:
    """The claim file of an output ``path``: ``.<name>.claim`` in the same folder."""
    return path.parent / f".{path.name}.claim"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: process id, host, start time (ISO 8601) and the inputs it writes."""

    pid: int | None
    host: str | None
    since: str | None
    inputs: dict[str, Any]

    def describe(self) -> str:
        """``another scot process (pid 812 on host node1, since 2026-12-03T12:03:04)``."""
        if self.pid is None:
            return "another scot process"
        return f"another scot process (pid {self.pid} on host {self.host}, since {self.since})"


class Claim:
    """A claim this process holds on an output; :meth:`release` gives it up (idempotent).

    Args:
        path: the claim file (:func:`claim_path`).
        fd: its open descriptor holding the lock (None where the file system has no locks).
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd, self.held = path, fd, True

    def release(self) -> None:
        """Remove the claim file, then drop the lock.  Removing it first means that a process
        waiting for the lock finds it no longer at its path, and claims a new file."""
        if not self.held:
            return
        self.held = False
        try:
            os.unlink(self.path)
        except OSError:
            pass
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in claim file ``path``, or None (missing, empty or being written)."""
    try:
        doc = json.loads(path.read_bytes())
        return Holder(int(doc["pid"]), str(doc["host"]), str(doc["since"]), dict(doc.get("inputs") or {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(holder: Holder) -> bool:
    """Whether the process that wrote a claim may still run: another host's, or a live
    process of this host (this process's own included: another thread holds the claim)."""
    if holder.host != socket.gethostname() or holder.pid is None:
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def try_claim(path: Path, inputs: dict[str, Any]) -> Claim | Holder:
    """Claim the output ``path`` for ``inputs`` (a JSON-able description, e.g. the two image
    paths), or say who holds it.

    Returns:
        A :class:`Claim` held by this process (also when the claim file was left by a
        process that has ended: it is taken over), or the :class:`Holder` of a live claim.

    Raises:
        WriteError: the claim file cannot be created (read-only folder, full disk).
    """
    import fcntl

    target = claim_path(path)
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "inputs": inputs}).encode()
    holder: Holder | None = None
    for _ in range(_ATTEMPTS):
        try:
            # the lock is held on a read-only descriptor: an open claim keeps no file open for writing
            fd = os.open(target, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise WriteError(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as exc:
            if exc.errno not in _BUSY:  # no locks on this file system: the claim file's record decides
                locked = False
                holder = read_holder(target)
                if holder is not None and _alive(holder):
                    os.close(fd)
                    return holder
            else:
                os.close(fd)
                holder = read_holder(target)
                if holder is not None:
                    return holder
                time.sleep(0.005)  # the holder is writing its record, or has just released the claim
                continue
        try:
            if locked and os.fstat(fd).st_ino != os.stat(target).st_ino:
                raise FileNotFoundError  # released (removed) between our open and our lock: claim anew
            with open(target, "r+b") as fh:
                fh.truncate(0)
                fh.write(record)
        except FileNotFoundError:
            os.close(fd)
            continue
        except OSError as exc:  # a full disk: no claim, and no claim file left behind
            Claim(target, fd).release()
            raise WriteError(path, exc) from None
        if not locked:
            os.close(fd)
            return Claim(target, None)
        return Claim(target, fd)
    return holder or Holder(None, None, None, {})
