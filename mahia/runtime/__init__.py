"""Deployment runtime: `load(artifact_dir, backend=...)` verifies an artifact directory and returns a
`Deployment` whose `run(inputs)` validates its inputs and runs the graph on the chosen backend
(`mahia.runtime.backends`: one module per backend behind one Runner contract)."""

from mahia.artifact import ArtifactIntegrityError
from mahia.runtime.backends import Backend, BackendUnavailableError, Runner, backends, get_backend
from mahia.runtime.deployment import Deployment, load

__all__ = ["ArtifactIntegrityError", "Backend", "BackendUnavailableError", "Deployment", "Runner", "backends",
           "get_backend", "load"]
