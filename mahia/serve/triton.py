"""A Triton Inference Server model repository from a verified artifact (`mahia-serve --triton-repo OUT ARTIFACT_DIR`).

Writes `<name>/config.pbtxt` and `<name>/1/model.onnx` for Triton's onnxruntime backend, and, when the artifact
lists a TensorRT engine (a `.plan` or `.engine` file in its manifest), `<name>-tensorrt/config.pbtxt` and
`<name>-tensorrt/1/model.plan` for the tensorrt backend. Inputs and outputs (names, data types, dims) come from
the manifest: the batch dimension becomes `max_batch_size` (the exported batch maximum) and is left out of
`dims`, the sequence dimension is -1. Before anything is written the declared inputs are checked against the
ONNX graph's own. Triton batches only requests of equal shape, so clients pad sequences to the buckets written
in the config's comment, as `mahia-serve` does.

The text is written here and checked against Triton's own protobuf schema (tritonclient's model_config_pb2)
in tests/test_serve_triton.py; the server itself was not started in this environment.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

import mahia.runtime
from mahia.artifact import Manifest
from mahia.serve.classifier import seq_buckets, text_budget

# numpy dtype name (as in manifest.json) -> Triton's DataType
TRITON_TYPES = {"bool": "TYPE_BOOL", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "float16": "TYPE_FP16", "float32": "TYPE_FP32",
                "float64": "TYPE_FP64"}
ENGINE_SUFFIXES = (".plan", ".engine")


class TritonRepositoryError(ValueError):
    """The artifact cannot become a Triton model: the message names the tensor or file and the mismatch."""


def _dims(name: str, shape: list) -> list[int]:
    if not shape or shape[0] != "batch":
        raise TritonRepositoryError(f"tensor {name!r}: shape {shape} does not start with the batch dimension")
    return [-1 if isinstance(d, str) else int(d) for d in shape[1:]]


def _tensors(kind: str, spec: dict) -> str:
    blocks = []
    for name, tensor in spec.items():
        if tensor["dtype"] not in TRITON_TYPES:
            raise TritonRepositoryError(f"tensor {name!r}: dtype {tensor['dtype']} has no Triton data type")
        dims = ", ".join(str(d) for d in _dims(name, tensor["shape"]))
        blocks.append(f'  {{\n    name: "{name}"\n    data_type: {TRITON_TYPES[tensor["dtype"]]}\n'
                      f"    dims: [ {dims} ]\n  }}")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from a quarter of the largest batch up to it, and the largest batch itself."""
    sizes = {1 << k for k in range(max_batch.bit_length()) if max_batch // 4 <= 1 << k <= max_batch}
    return sorted(sizes | {max_batch})


def model_config(name: str, manifest: Manifest, backend: str, queue_delay_us: int, instances: int,
                 source: str) -> str:
    """config.pbtxt text for the onnxruntime or tensorrt backend."""
    seq, budget = manifest.seq, text_budget(manifest)
    buckets = seq_buckets(seq.min, seq.max, budget)
    max_batch = manifest.batch.max
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    return (f"# Written by mahia-serve --triton-repo from {source}.\n"
            f"# Sequences: {seq.min}..{seq.max} tokens exported, texts cut to {budget} tokens (the\n"
            f"# training budget). Pad each request to one of {list(buckets)} tokens so that requests of\n"
            f"# one bucket batch together (Triton batches equal shapes only).\n"
            f'name: "{name}"\n'
            f'backend: "{backend}"\n'
            f"max_batch_size: {max_batch}\n"
            + _tensors("input", manifest.inputs)
            + _tensors("output", manifest.outputs)
            + "dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred_batch_sizes(max_batch))} ]\n"
            f"  max_queue_delay_microseconds: {queue_delay_us}\n"
            "}\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n")


def check_against_onnx(manifest: Manifest, onnx_path: Path) -> None:
    """Raise TritonRepositoryError unless the manifest's inputs are the ONNX graph's (names, dtypes, ranks)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name: i.type.tensor_type for i in graph.input if i.name not in initializers}
    if set(graph_inputs) != set(manifest.inputs):
        raise TritonRepositoryError(f"{onnx_path.name} has inputs {sorted(graph_inputs)}, the manifest declares "
                                    f"{sorted(manifest.inputs)}")
    for name, spec in manifest.inputs.items():
        tensor = graph_inputs[name]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        rank = len(tensor.shape.dim)
        if dtype != spec["dtype"] or rank != len(spec["shape"]):
            raise TritonRepositoryError(f"input {name!r}: {onnx_path.name} has {dtype} of rank {rank}, the manifest "
                                        f"declares {spec['dtype']} of rank {len(spec['shape'])}")


def write_triton_repository(artifact_dir: str | Path, out_dir: str | Path, name: str | None = None,
                            queue_delay_us: int = 5000, instances: int = 1) -> list[Path]:
    """Write the model(s) of a verified artifact into the repository `out_dir`; returns the model directories.

    `name` defaults to the artifact directory's name; an existing model directory of that name is refused.
    """
    artifact_dir = Path(artifact_dir).resolve()
    deployment = mahia.runtime.load(artifact_dir, backend="onnx")  # sha256 of every file; ONNX graph required
    manifest = deployment.manifest
    name = name or artifact_dir.name
    onnx_file = artifact_dir / manifest.graph_file("onnx")
    check_against_onnx(manifest, onnx_file)
    manifest_sha256 = hashlib.sha256((artifact_dir / "manifest.json").read_bytes()).hexdigest()
    source = f"{artifact_dir.name} (manifest sha256 {manifest_sha256[:16]})"
    models = [(name, "onnxruntime", onnx_file, "model.onnx")]
    engines = sorted(f for f in manifest.files if f.endswith(ENGINE_SUFFIXES))
    if engines:
        models.append((f"{name}-tensorrt", "tensorrt", artifact_dir / engines[0], "model.plan"))
    out_dir = Path(out_dir)
    written = []
    for model_name, backend, source_file, target in models:
        model_dir = out_dir / model_name
        if model_dir.exists():
            raise TritonRepositoryError(f"{model_dir} exists already: choose another --triton-name or directory")
        staging = out_dir / f".{model_name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "1").mkdir(parents=True)
        shutil.copyfile(source_file, staging / "1" / target)
        (staging / "config.pbtxt").write_text(model_config(model_name, manifest, backend, queue_delay_us, instances,
                                                           source))
        staging.rename(model_dir)  # a model directory appears complete or not at all
        written.append(model_dir)
    return written
