"""Writing result files: proven writable before any work, then written atomically.

:func:`check_folder` and :func:`check_file` prove, before any work, that an output can be
written where the user asked; :func:`atomic_write_bytes` and its kin then write it so that
a reader never sees half a file.  A write that fails anyway (a full disk, a folder turned
read-only) is a :class:`WriteError` naming the file asked for and the cause, to which the
commands add how to go on.  Reading the user's files is :mod:`scot.io`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ScotError


def check_folder(folder: Path, option: str = "output", *, create: bool = True) -> Path:
    """Prove that ``folder`` can hold outputs, or fail naming it and ``option`` (before any work).

    Args:
        folder: the folder.
        option: the parameter that named it, for the error.
        create: create it (with its parents) if missing; with False nothing is created
            and, for a missing folder, its nearest existing ancestor must be writable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ScotError(f"{folder} exists and is not a folder", option=option)
    probe_in = folder
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            while not probe_in.exists() and probe_in.parent != probe_in:
                probe_in = probe_in.parent
            if not probe_in.is_dir():
                raise NotADirectoryError(20, "not a folder")
        fd, probe = tempfile.mkstemp(prefix=".scot-write-test-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ScotError(f"cannot write to {folder} ({exc.strerror or exc})", option=option) from None
    return folder


def check_file(path: Path, *, option: str, overwrite: bool) -> Path:
    """Prove before any work that ``path`` can be written: its folder writable (or creatable:
    nothing is created here), its name not too long, and no existing file there unless
    ``overwrite``.

    Raises:
        ScotError: naming ``option`` and the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ScotError(f"{path} is a folder; give a file name", option=option)
    if path.exists() and not overwrite:
        raise ScotError(f"{path} already exists; pass --overwrite to replace it", option=option)
    check_folder(path.parent, option, create=False)
    if len(path.name.encode()) > name_max(path.parent):
        raise ScotError(f"{path.name[:40]}... is longer than the filesystem allows", option=option)
    return path


def name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


_WHY = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted", errno.EFBIG: "the file is larger than the file system allows"}
_FIX = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EFBIG: "choose another folder",
        errno.EROFS: "make the folder writable or choose another one", errno.EACCES: "make the folder writable or "
        "choose another one", errno.EPERM: "make the folder writable or choose another one"}


class WriteError(ScotError):
    """A file could not be written: the disk is full, the folder read-only, no permission.

    The message names the file the user asked for (never a hidden temporary file) and the
    cause; :meth:`then` adds what fixes it and how to continue, which only the caller knows
    (``cannot write out/a.json: no space left on the device; free space, then run the same
    command again``).

    Args:
        path: the file that was being written.
        cause: the operating system's error.
        done: what is kept despite the failure, e.g. ``"3 of 10 pairs are written"``.
        option: the parameter that named the file or its folder.
    """

    def __init__(self, path: str | Path, cause: OSError, *, done: str = "", then: str = "",
                 option: str | None = None) -> None:
        self.path, self.cause, self.done, self.next_step = Path(path), cause, done, then
        why = _WHY.get(cause.errno or 0) or cause.strerror or str(cause)
        message = f"cannot write {path}: {why}"
        if done:
            message += f"; {done}"
        if then:
            fix = _FIX.get(cause.errno or 0)
            message += f"; {fix}, then {then}" if fix else f"; then {then}"
        super().__init__(message, option=option)

    def then(self, then: str, done: str = "") -> WriteError:
        """The same error saying what is kept (``done``) and how to continue (``then``)."""
        return WriteError(self.path, self.cause, done=done or self.done, then=then, option=self.option)

    def naming(self, path: str | Path) -> WriteError:
        """The same error naming ``path`` (the file a temporary one stood for)."""
        return WriteError(path, self.cause, done=self.done, then=self.next_step, option=self.option)


def write_error(path: str | Path, exc: BaseException) -> BaseException:
    """``exc`` raised while writing ``path``: an :class:`OSError` becomes a :class:`WriteError`
    naming ``path``; a :class:`WriteError` is renamed to ``path``; anything else is kept."""
    if isinstance(exc, WriteError):
        return exc.naming(path)
    if isinstance(exc, OSError):
        return WriteError(path, exc)
    return exc


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content.

    Raises:
        WriteError: naming ``path`` (not the temporary file), when the disk is full, the
            folder read-only or not permitted; the temporary file is removed.
    """
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise WriteError(p, exc) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON atomically: NaN or Infinity anywhere in ``obj`` is a ValueError."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
