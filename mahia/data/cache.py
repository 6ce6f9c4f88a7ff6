"""Where the reviews data file lives (the data cache) and the check that it is the pinned file.

The cache is `$MAHIA_DATA_DIR` when set, else `$XDG_CACHE_HOME/mahia`, else `~/.cache/mahia`;
`python -m mahia.data.fetch` fills it (`mahia/data/fetch.py`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DATA_FILE_NAME = "WomensClothingE-CommerceReviews.parquet.brotli"
DATA_SHA256 = "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd"
FETCH_COMMAND = "python -m mahia.data.fetch"


class DataFetchError(RuntimeError):
    """The data file could not be fetched or is not the pinned one; the message names the file and the fix."""


def data_dir() -> Path:
    """The data cache: $MAHIA_DATA_DIR, else $XDG_CACHE_HOME/mahia, else ~/.cache/mahia."""
    if os.environ.get("MAHIA_DATA_DIR"):
        return Path(os.environ["MAHIA_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "mahia"


def cached_data_path() -> Path:
    """Where the reviews file lives in the data cache (it may not be there yet)."""
    return data_dir() / DATA_FILE_NAME


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_data_file(path: Path) -> Path:
    """`path` if it holds the pinned reviews file, else DataFetchError saying what is wrong and how to fetch it."""
    if not path.is_file():
        raise DataFetchError(f"reviews data file not found: {path}; fetch it with `{FETCH_COMMAND}` "
                             "(`make install` runs it) or pass the file's path")
    actual = sha256_file(path)
    if actual != DATA_SHA256:
        raise DataFetchError(f"reviews data file {path} is corrupt (sha256 {actual[:16]}..., expected "
                             f"{DATA_SHA256[:16]}...); fetch it again with `{FETCH_COMMAND}`")
    return path
