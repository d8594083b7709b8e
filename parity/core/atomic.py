"""One rule for every file parity writes (traces, converted weights, reports): write a temporary file in the
destination's own directory, flush and ``fsync`` it, give it mode ``0o666`` less the process umask (``0644``
under the usual ``022``), then ``os.replace`` it over the destination and ``fsync`` the directory.

A reader therefore sees the old file or the whole new one, never half of one; a crash, a full disk or an
exception leaves the destination untouched and removes the temporary file; a destination that is a symbolic
link is replaced by the new file (the link's target is never written through); a destination that is a
directory is refused before anything is written (:class:`parity.core.errors.UsageError`).

Use :func:`atomic_output` for a file object, :func:`atomic_path` for a library that writes by path
(``safetensors.numpy.save_file``, ``h5py.File``)::

    with atomic_output("report.json", "w") as f:
        f.write(text)
    with atomic_path("port.safetensors") as tmp:
        save_file(tensors, tmp)
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from typing import IO, Iterator

from parity.core.errors import UsageError

#: Permission bits of a new file before the umask (what ``open(path, "w")`` uses).
NEW_FILE_MODE = 0o666
#: Suffix of the temporary file next to the destination (``.port.safetensors.a1b2c3.tmp``).
TMP_SUFFIX = ".tmp"
#: errno values meaning "the disk (or the user's quota) is full": a usage error naming the directory
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def current_umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux ``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str, label: str = "--output") -> str:
    """``path`` as an absolute path to a file that may be (re)placed: its directory exists and it is not a
    directory itself. Raises :class:`UsageError` naming ``label`` otherwise."""
    full = os.path.abspath(os.fspath(path))
    if os.path.isdir(full) and not os.path.islink(full):
        raise UsageError(f"{label} {path}: expected a file name. Received: a directory. Name a file inside it, "
                         f"e.g. {os.path.join(path, 'out' + (os.path.splitext(path)[1] or ''))}.")
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise UsageError(f"{label} {path}: expected a file in an existing directory. Received: no directory "
                         f"{parent}. Create it first.")
    return full


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, label: str = "--output") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on a clean exit it is fsync'ed, given the umask's mode and
    renamed over ``path``; on any exception (also ``KeyboardInterrupt`` / ``SystemExit``) it is removed."""
    full = check_output_path(path, label)
    directory, base = os.path.split(full)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=TMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        yield tmp
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise UsageError(f"{label} {path}: expected the writer to leave a regular file. Received: "
                             "something else at the temporary path.")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, NEW_FILE_MODE & ~current_umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, full)
    except BaseException as exc:
        written = 0
        with contextlib.suppress(OSError):
            written = os.path.getsize(tmp)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            free = ""
            with contextlib.suppress(OSError):
                free = f", {shutil.disk_usage(directory).free / 1e6:.1f} MB free"
            raise UsageError(f"{label} {path}: expected room in {directory} for the file ({written / 1e6:.1f} MB "
                             f"written when it failed{free}). Received: {os.strerror(exc.errno)}. Free disk space or "
                             "write it elsewhere.") from None
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "wb", label: str = "--output", **open_kwargs) -> Iterator[IO]:
    """Like :func:`atomic_path`, yielding the temporary file opened with ``mode`` (``"wb"`` or ``"w"``)."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_output: expected mode 'w' or 'wb'. Received: {mode!r}.")
    with atomic_path(path, label) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
