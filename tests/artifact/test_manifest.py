"""The artifact contract: manifest.json reads back as the typed Manifest it was written from, a manifest of
another schema or with a malformed field is refused naming it, and no listed file may lie outside the directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mahia.artifact import (
    ArtifactIntegrityError,
    DimRange,
    FileRecord,
    Manifest,
    open_artifact,
    read_manifest,
    sha256_file,
    verify_files,
)


def test_manifest_reads_back_what_was_written(tiny_export: dict) -> None:
    written = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    manifest = read_manifest(tiny_export["dir"])
    assert manifest.to_dict() == written
    assert manifest.model.source.kind == "config" and manifest.model.source.seed == 0
    assert manifest.graphs == {"onnx": "model.onnx", "pt2": "model.pt2"}
    assert manifest.tensorrt is None and "tensorrt" not in written  # no TensorRT graph: no section
    with_trt = {**written, "tensorrt": {"parse": {"ok": True}, "engine": {"file": "model.engine", "bytes": 1024}}}
    assert Manifest.from_dict(with_trt).to_dict() == with_trt  # the optional section reads back as written
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


def test_dim_range_parses_checks_clamps_and_prints() -> None:
    dim = DimRange.parse("seq", "1:16:40")
    assert dim == DimRange("seq", 1, 16, 40) and str(dim) == "1:16:40"
    assert dim.to_dict() == {"min": 1, "opt": 16, "max": 40}
    assert [dim.clamp(v) for v in (0, 1, 17, 40, 41)] == [1, 1, 17, 40, 40]
    assert [dim.contains(v) for v in (0, 1, 40, 41)] == [False, True, True, False]
    assert DimRange("batch", 3, 3, 3).contains(3) and not DimRange("batch", 3, 3, 3).contains(2)
    refused = [(("seq", "1:8"), "seq range '1:8': expected MIN:OPT:MAX, e.g. 1:8:16"),
               (("seq", "1:8:16:32"), "seq range '1:8:16:32': expected MIN:OPT:MAX, e.g. 1:8:16"),
               (("batch", "1:x:8"), "batch range '1:x:8': 'x' is not an integer"),
               (("batch", "8:4:2"), "batch range 8:4:2: expected min <= opt <= max"),
               (("batch", "1:9:8"), "batch range 1:9:8: expected min <= opt <= max"),
               (("seq", "0:1:2"), "seq range 0:1:2: every value must be >= 1"),
               (("seq", "2:0:5"), "seq range 2:0:5: every value must be >= 1"),  # a zero anywhere is named as such
               (("seq", "1:1:0"), "seq range 1:1:0: every value must be >= 1")]
    for (name, text), message in refused:
        with pytest.raises(ValueError) as err:
            DimRange.parse(name, text)
        assert str(err.value) == message
    assert DimRange.parse("batch", "2:2:2") == DimRange("batch", 2, 2, 2)  # min = opt = max is a range


def test_each_malformed_field_is_named(tiny_export: dict) -> None:
    written = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    broken = [("model", {**written, "model": {**written["model"], "trained": None, "label": None, "weights_sha256": 1,
                                              "config": {"colour": 1}}}),
              ("precision", {**written, "precision": {"name": "fp32"}}),
              ("dims", {**written, "dims": {"batch": written["dims"]["batch"]}}),
              ("files", {**written, "files": {"model.onnx": {"sha256": "0"}}}),
              ("status", {**written, "status": "maybe"}),
              ("formats", {**written, "formats": ["onnx"]}),
              ("command", {k: v for k, v in written.items() if k != "created_utc"})]
    for key, data in broken:
        with pytest.raises(ArtifactIntegrityError, match=f"^where.json: field {key!r} is missing or malformed \\("):
            Manifest.from_dict(data, "where.json")
    with pytest.raises(ArtifactIntegrityError,
                       match="^where.json: field 'status' .*expected 'passed' or 'failed', got 'maybe'"):
        Manifest.from_dict(broken[4][1], "where.json")
    with pytest.raises(ArtifactIntegrityError, match=r"formats \['onnx'\] and graphs \['onnx', 'pt2'\] differ"):
        Manifest.from_dict(broken[5][1], "where.json")
    with pytest.raises(ArtifactIntegrityError, match="^manifest.json is not a JSON object$"):
        Manifest.from_dict([written])  # type: ignore[arg-type]
    with pytest.raises(ArtifactIntegrityError, match="^manifest.json has schema_version None; this mahia reads 3: "):
        Manifest.from_dict({k: v for k, v in written.items() if k != "schema_version"})
    manifest = Manifest.from_dict(written)
    assert manifest.passed and manifest.graph_file("pt2") == "model.pt2"
    assert manifest.precision.notes == written["precision"]["notes"] and manifest.files["model.onnx"].bytes > 0
    with pytest.raises(ValueError, match=r"^the artifact has no tensorrt graph \(formats: onnx, pt2\)$"):
        manifest.graph_file("tensorrt")
    no_notes = {**written, "precision": {k: v for k, v in written["precision"].items() if k != "notes"}}
    assert Manifest.from_dict(no_notes).precision.notes == {}
    assert Manifest.from_dict({**written, "onnx": None}).to_dict()["onnx"] is None  # an artifact without ONNX
    trained = Manifest.from_dict({**written, "model": {**written["model"], "trained": True},
                                  "precision": {**written["precision"], "notes": {"fp32_ops": ["TopK"]}}})
    assert trained.model.trained and trained.precision.notes == {"fp32_ops": ["TopK"]}
    assert (trained.batch.name, trained.seq.name) == ("batch", "seq")


def test_reading_and_verifying_a_directory_names_each_problem(tiny_export: dict, tmp_path: Path) -> None:
    with pytest.raises(ArtifactIntegrityError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == f"not an artifact directory (no manifest.json): {tmp_path / 'manifest.json'} is missing"
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactIntegrityError, match=f"^{tmp_path / 'manifest.json'} is not valid JSON: Expecting"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"schema_version": 2}')
    with pytest.raises(ArtifactIntegrityError, match=f"^{tmp_path / 'manifest.json'} has schema_version 2; "):
        read_manifest(tmp_path)  # a parse error names the manifest's path
    with pytest.raises(ArtifactIntegrityError, match=f"^{tmp_path / 'manifest.json'} lists no files$"):
        verify_files(tmp_path, {})
    (tmp_path / "a.bin").write_bytes(b"12345678")
    good = FileRecord(sha256_file(tmp_path / "a.bin"), 8)
    verify_files(tmp_path, {"a.bin": good})
    for name in ("", ".", ".."):
        with pytest.raises(ArtifactIntegrityError, match=f"lists a file outside the directory: {name!r}$"):
            verify_files(tmp_path, {name: good})
    with pytest.raises(ArtifactIntegrityError, match=f"^artifact file missing: {tmp_path / 'b.bin'}$"):
        verify_files(tmp_path, {"a.bin": good, "b.bin": good})
    # the size alone differs (same hash recorded), then the hash alone (same size)
    for record in (FileRecord(good.sha256, 9), FileRecord("0" * 64, 8)):
        with pytest.raises(ArtifactIntegrityError) as err:
            verify_files(tmp_path, {"a.bin": record})
        assert str(err.value) == (f"artifact file {tmp_path / 'a.bin'} does not match its sha256 in manifest.json: "
                                  "it was modified after export; refusing to load it")
    manifest = open_artifact(tiny_export["dir"])
    assert manifest == read_manifest(tiny_export["dir"])
    written = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    failed = {**written, "status": "failed", "files": {"a.bin": {"sha256": good.sha256, "bytes": 8}}}
    (tmp_path / "manifest.json").write_text(json.dumps(failed))
    with pytest.raises(ArtifactIntegrityError) as err:
        open_artifact(tmp_path)
    assert str(err.value) == (f"{tmp_path} failed its parity check (status 'failed'); "
                              "pass allow_failed=True to load it for debugging")
    assert open_artifact(tmp_path, allow_failed=True).status == "failed"
