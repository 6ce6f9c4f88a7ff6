"""File helpers of the artifact contract: content hashes, one-line OS errors, atomic JSON files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """One line for an OSError while writing `path` (disk full and permissions named as such)."""
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"output directory not writable: {path} ({exc.strerror})"
    return f"cannot write {path}: {exc.strerror or exc}"


def json_bytes(data: object) -> bytes:
    """The project's JSON file form: sorted keys, 2-space indent, a final newline."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomically(data: object, path: Path) -> None:
    """JSON to a temporary file in the same folder, then renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json_bytes(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
