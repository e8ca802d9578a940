"""Atomic file writes: a reader never sees a half-written file, an interrupted run leaves none."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w", fsync: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file in the target's folder, fsync it, then rename it over ``path``.

    ``fsync=False`` skips the fsync (still atomic for readers, not durable across a power cut): for many small
    files that can be regenerated, such as synthetic images.

    The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the umask; the temporary
    file is created ``0o600``), so reports and predictions can be shared as usual.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    """The process umask: from ``/proc/self/status`` where there is one (Linux: no side effect), else by setting it
    and setting it back (POSIX has no read-only call)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON atomically."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=indent))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or malformed file raises a one-line :class:`UnsoloError`."""
    from unsolo.errors import UnsoloError

    path = Path(path)
    if not path.is_file():
        raise UnsoloError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UnsoloError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise UnsoloError(f"{what} {path} is not a text JSON file") from None
