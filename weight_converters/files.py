"""What every reader of an outside weights file shares: the one-line error (``"--weights PATH: expected ...
Received: ... <what to do>"``, the style of Keras 3's own errors) and the first check, that the path is a regular
file. A directory, a named pipe (opening one for reading waits for a writer forever), a device or a socket is
refused before it is opened; the size returned is what each reader then bounds its allocations by."""
from __future__ import annotations

import os
import stat
from typing import Callable


def input_where(path, label: str) -> str:
    """Message prefix: ``--weights path`` (``label`` empty: the path alone)."""
    return f"{label} {path}" if label else str(path)


def input_error(where: str, received: str, todo: str, *, expected: str) -> ValueError:
    """A one-line ``ValueError``: ``"{where}: {expected}. Received: {received}. {todo}"``."""
    return ValueError(f"{where}: {expected}. Received: {received}. {todo}")


def regular_file_size(path, error: Callable[[str, str], Exception]) -> int:
    """The size in bytes of ``path`` if it is a regular file (after symlinks). ``error(received, todo)`` builds
    the exception raised for anything else: a missing path, a directory, a named pipe, a device, a socket."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error("no such file", "Check the path.") from None
    except OSError as e:
        raise error(f"a path that cannot be read ({e.strerror})", "Check the path.") from None
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    kind = ("a directory (a TF SavedModel?)" if stat.S_ISDIR(st.st_mode) else
            "a named pipe (FIFO), not a regular file" if stat.S_ISFIFO(st.st_mode) else
            "a device or socket, not a regular file")
    raise error(kind, "Pass the weights file itself.")
