"""The format registry: each kind of graph file an artifact can hold, how it is named and saved, and which
mahia.runtime backend runs it.

Adding a format is a save function (here or in its own module) plus one `register(Format(...))` entry;
`--formats`, the pipeline's save and verify steps, the manifest's "graphs" and the report follow the
registry. ONNX formats name the flavour their graph is lowered in (flavours.py).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import onnx
import torch

from mahia.artifact import ArtifactDir, ArtifactError, describe_os_error
from mahia.export.errors import ExportError
from mahia.export.flavours import get_flavour

if TYPE_CHECKING:
    from mahia.export.precisions import Built

# Above this many bytes of weights the ONNX weights go to an external data file (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


SaveFunction = Callable[["Built", ArtifactDir, str], list[str]]  # (products, directory, file name) -> files written


@dataclass(frozen=True)
class Format:
    """One kind of graph file."""

    name: str  # what --formats takes, and the manifest's "formats" / "graphs" key
    file_name: Callable[[str], str]  # precision name -> file name
    save: SaveFunction | None  # None: an engine, built from the graph of format `engine_of` (mahia.export.engines)
    backend: str | None  # the mahia.runtime backend that deploys it (and runs the task check); None: none here
    flavour: str | None  # ONNX formats: the flavour of their graph (its lowering); None for other formats
    description: str
    default: bool = True  # written when --formats is not given (if the precision produces it)
    task_checked: bool = False  # the task check also runs on it when it is not the first format
    engine_of: str | None = None  # engines: the format whose saved graph they are built from
    # Python modules the format needs (module, what to install), checked before anything is written
    packages: tuple[tuple[str, str], ...] = ()

    def verify_backends(self) -> tuple[str, ...]:
        """The runtime backends that parity runs this format's graph on."""
        if self.flavour:
            return get_flavour(self.flavour).verify_backends
        return (self.backend,) if self.backend else ()

    def missing_packages(self) -> list[str]:
        """What to install for this format, for each of its modules that is not importable."""
        return [install for module, install in self.packages if importlib.util.find_spec(module) is None]


def onnx_file_name(precision: str) -> str:
    """model.onnx for fp32, model.<precision>.onnx for every other precision."""
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def trt_file_name(precision: str) -> str:
    """model.trt.onnx for fp32, model.<precision>.trt.onnx for every other precision."""
    return "model.trt.onnx" if precision == "fp32" else f"model.{precision}.trt.onnx"


def check_onnx(path: Path) -> None:
    """Full ONNX checker (with shape inference) on a saved model; raises ExportError naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {str(exc).splitlines()[0]}") from None


def save_onnx(model: onnx.ModelProto, directory: ArtifactDir, file_name: str,
              external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[str]:
    """Save the graph (weights in `<file>.data` above the threshold), run the full checker; returns file names."""
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > external_data_threshold:
        data_name = f"{file_name}.data"
        try:
            onnx.save_model(model, str(directory.path / file_name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        except OSError as exc:
            raise ArtifactError(describe_os_error(exc, directory.target / file_name)) from None
        files = [file_name, data_name]
    else:
        directory.write_bytes(file_name, model.SerializeToString(deterministic=True))
        files = [file_name]
    check_onnx(directory.path / file_name)
    return files


def _save_onnx_graph(built: Built, directory: ArtifactDir, file_name: str) -> list[str]:
    if built.onnx is None:
        raise ExportError(f"the precision's build produced no ONNX graph for {file_name}")
    return save_onnx(built.onnx, directory, file_name)


def _save_flavoured_graph(flavour: str) -> SaveFunction:
    def save(built: Built, directory: ArtifactDir, file_name: str) -> list[str]:
        if flavour not in built.flavours:
            raise ExportError(f"the precision's build produced no {flavour} graph for {file_name}")
        return save_onnx(built.flavours[flavour], directory, file_name)
    return save


def _save_program(built: Built, directory: ArtifactDir, file_name: str) -> list[str]:
    if built.program is None:
        raise ExportError(f"the precision's build produced no ExportedProgram for {file_name}")
    with directory.open_for_write(file_name) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No complete tensor found in the group": CPU-only weights, harmless
        torch.export.save(built.program, f)
    return [file_name]


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format (names are unique)."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"format {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def formats() -> Mapping[str, Format]:
    """Every registered format, by name, in registration order (the order artifacts prefer them in)."""
    return MappingProxyType(_REGISTRY)


def get_format(name: str) -> Format:
    """The named format, or a ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(_REGISTRY)}") from None


def in_registry_order(names: Sequence[str]) -> list[Format]:
    """The named formats in registry order: the first one is what an artifact deploys by default."""
    return [fmt for fmt in _REGISTRY.values() if fmt.name in names]


register(Format("onnx", onnx_file_name, _save_onnx_graph, backend="onnx", flavour="portable",
                description="portable ONNX (standard ops only)"))
register(Format("pt2", lambda precision: "model.pt2", _save_program, backend="pt2", flavour=None,
                description="torch.export program"))
# The TensorRT path (README "TensorRT"): written only when asked for.
TRT_RTX_PACKAGES = (("tensorrt_rtx_bindings", "tensorrt-rtx-cu13-bindings==1.7.1.116 (extra trt-rtx)"),
                    ("tensorrt_rtx_libs", "tensorrt-rtx-cu13-libs==1.7.1.116 (extra trt-rtx)"))
register(Format("trt", trt_file_name, _save_flavoured_graph("tensorrt"), backend="onnx-plugins", flavour="tensorrt",
                description="TensorRT-flavour ONNX (custom ops as TensorRT plugin nodes)", default=False,
                task_checked=True,
                packages=(("onnxruntime_extensions", "onnxruntime-extensions==0.15.2 (extra ort-ext)"),
                          *TRT_RTX_PACKAGES)))
register(Format("rtx-engine", lambda precision: f"model.{precision}.rtx.engine", None, backend=None, flavour=None,
                description="TensorRT-RTX engine for sm_80/86/89/120 (built, not run here)", default=False,
                engine_of="trt", packages=TRT_RTX_PACKAGES))
register(Format("engine", lambda precision: f"model.{precision}.engine", None, backend="tensorrt", flavour=None,
                description="TensorRT engine (strongly typed, AOT plugins)", default=False, engine_of="trt",
                packages=(("tensorrt", "tensorrt>=10.9 (NVIDIA; with its libnvinfer)"),)))
