"""The artifact contract: manifest.json reads back as the typed Manifest it was written from, a manifest of
another schema or with a malformed field is refused naming it, and no listed file may lie outside the directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mahia.artifact import ArtifactIntegrityError, FileRecord, Manifest, read_manifest, sha256_file, verify_files


def test_manifest_reads_back_what_was_written(tiny_export: dict) -> None:
    written = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    manifest = read_manifest(tiny_export["dir"])
    assert manifest.to_dict() == written
    assert manifest.model.source.kind == "config" and manifest.model.source.seed == 0
    assert manifest.graphs == {"onnx": "model.onnx", "pt2": "model.pt2"}
    with pytest.raises(ArtifactIntegrityError, match="schema_version 2; this mahia reads 3: re-export"):
        Manifest.from_dict({**written, "schema_version": 2})
    broken = {**written, "model": {**written["model"], "source": "config tiny"}}
    with pytest.raises(ArtifactIntegrityError, match="field 'model' is missing or malformed"):
        Manifest.from_dict(broken)


@pytest.mark.parametrize("listed", ["../outside.bin", "sub/../../outside.bin"])
def test_a_manifest_listing_a_file_outside_the_directory_is_refused(tmp_path: Path, listed: str) -> None:
    directory = tmp_path / "artifact"
    directory.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the artifact")
    record = FileRecord(sha256_file(outside), outside.stat().st_size)  # size and hash do match
    with pytest.raises(ArtifactIntegrityError, match="lists a file outside the directory: '"
                                                    + listed.replace(".", r"\.") + "'"):
        verify_files(directory, {listed: record})
