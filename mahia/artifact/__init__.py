"""The artifact contract between building and deploying: the typed manifest (`manifest.py`), reading and
verifying a directory against it, and the atomic writer of artifact directories (`directory.py`)."""

from mahia.artifact.directory import ArtifactDir, ArtifactError, check_writable, sigterm_as_interrupt, sweep_stale
from mahia.artifact.files import describe_os_error, sha256_file, write_json_atomically
from mahia.artifact.manifest import (
                                     EAGER_FILE,
                                     FAILED,
                                     FAILED_SUFFIX,
                                     INPUTS_FILE,
                                     MANIFEST,
                                     PARITY_FILE,
                                     PASSED,
                                     REPORT_FILE,
                                     SCHEMA_VERSION,
                                     ArtifactIntegrityError,
                                     DimRange,
                                     FileRecord,
                                     Manifest,
                                     ModelRecord,
                                     PrecisionRecord,
                                     open_artifact,
                                     read_manifest,
                                     verify_files,
)

__all__ = ["EAGER_FILE", "FAILED", "FAILED_SUFFIX", "INPUTS_FILE", "MANIFEST", "PARITY_FILE", "PASSED", "REPORT_FILE",
           "SCHEMA_VERSION",
           "ArtifactDir", "ArtifactError", "ArtifactIntegrityError", "DimRange", "FileRecord", "Manifest",
           "ModelRecord", "PrecisionRecord", "check_writable", "describe_os_error", "open_artifact", "read_manifest",
           "sha256_file", "sigterm_as_interrupt", "sweep_stale", "verify_files", "write_json_atomically"]
