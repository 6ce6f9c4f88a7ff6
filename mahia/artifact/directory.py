"""The artifact directory: written into a temporary directory beside the target and renamed into
place only when complete, with every file's sha256 and size in manifest.json.

A run that fails parity is still renamed into place, as `<name>.failed`, with its manifest marked
failed (for debugging); any other failure or an interruption (Ctrl-C, SIGTERM) removes the temporary
directory. A SIGKILL cannot be caught: its hidden `.<name>.tmp-<pid>` directory is swept by the next run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mahia.artifact.files import describe_os_error, json_bytes, sha256_file
from mahia.artifact.manifest import FAILED_SUFFIX, MANIFEST, FileRecord, Manifest


class ArtifactError(OSError):
    """The artifact directory cannot be written; the message names the path and the reason."""


def check_writable(out_dir: Path) -> None:
    """Create out_dir if needed and prove it writable with a probe file, or raise ArtifactError."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise ArtifactError(f"output path {out_dir} exists and is not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except ArtifactError:
        raise
    except OSError as exc:
        raise ArtifactError(describe_os_error(exc, out_dir)) from None


def sweep_stale(out_dir: Path) -> list[Path]:
    """Remove temporary directories left by killed runs (their pid no longer exists)."""
    removed = []
    for tmp in out_dir.glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def sigterm_as_interrupt() -> Iterator[Callable[[], None]]:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt for the duration, so cleanup runs as for Ctrl-C. Yields a
    check that raises KeyboardInterrupt again once a signal has come: a library that catches the first one and
    carries on (an interrupted export once finished and exited 0) is stopped at the next check."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    def check() -> None:
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}")

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield check
        return
    try:
        yield check
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ArtifactDir:
    """A directory being written: files go to `.path`, `finish` renames it to the target."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))

    @contextmanager
    def open_for_write(self, name: str) -> Iterator[BinaryIO]:
        """A binary file in the directory, flushed to disk on close; disk full or permissions -> ArtifactError."""
        path = self.path / name
        try:
            with open(path, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ArtifactError(describe_os_error(exc, self.target / name)) from None

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write one file into the directory."""
        with self.open_for_write(name) as f:
            f.write(data)
        return self.path / name

    def write_json(self, name: str, data: object) -> Path:
        """Write a JSON file (sorted keys, 2-space indent)."""
        return self.write_bytes(name, json_bytes(data))

    def file_records(self) -> dict[str, FileRecord]:
        """{file name: its sha256 and size} for every file but the manifest."""
        return {p.name: FileRecord(sha256_file(p), p.stat().st_size)
                for p in sorted(self.path.iterdir()) if p.is_file() and p.name != MANIFEST}

    def finish(self, manifest: Manifest) -> Path:
        """Write manifest.json with the file records, then rename into place (as `<name>.failed` unless the
        manifest passed); returns the final path."""
        final = self.target if manifest.passed else self.target.with_name(self.target.name + FAILED_SUFFIX)
        manifest = dataclasses.replace(manifest, files=self.file_records())
        self.write_json(MANIFEST, manifest.to_dict())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp made it private; the artifact is an ordinary directory
        _replace_dir(self.path, final)
        return final

    def discard(self) -> None:
        """Remove the temporary directory (on errors and interrupts)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _replace_dir(source: Path, target: Path) -> None:
    """Rename source to target; an existing target is moved aside first and removed after."""
    if not target.exists():
        os.rename(source, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.rename(target, aside / "old")
    os.rename(source, target)
    shutil.rmtree(aside, ignore_errors=True)
