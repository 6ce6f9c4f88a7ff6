"""Model inputs: their specification, validation with clear errors, and random examples for tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from mahia.model.config import FIRST_WORD_ID, ModelConfig
from mahia.model.mahia_x import INPUT_NAMES


class InputValidationError(ValueError):
    """An input tensor that the model cannot take; the message names the tensor and the expectation."""


def _fail(name: str, given: str, expected: str) -> InputValidationError:
    return InputValidationError(f"input {name!r}: got {given}, expected {expected}")


# numpy kinds that convert to a tensor the checks below can judge: bool, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"


def as_tensors(inputs: Mapping[str, object]) -> dict[str, Tensor]:
    """Each input as a torch.Tensor (numpy arrays and nested lists are converted), or InputValidationError.

    An object, string, bytes or datetime array (what a JSON body easily becomes) is refused here, naming the
    input, before torch would raise its own TypeError.
    """
    tensors = {}
    for name, value in inputs.items():
        if isinstance(value, Tensor):
            tensors[name] = value
            continue
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged nested lists
            raise _fail(name, f"a {type(value).__name__} that does not form an array", "a numeric array") from None
        if array.dtype.kind not in NUMERIC_KINDS:
            raise _fail(name, f"an array of dtype {array.dtype}", "a numeric array (bool, integer or floating)")
        tensors[name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))
    return tensors


def validate_inputs(config: ModelConfig, inputs: Mapping[str, Tensor]) -> None:
    """Raise InputValidationError unless `inputs` is a batch the model built from `config` can take."""
    missing = [n for n in INPUT_NAMES if n not in inputs]
    unexpected = sorted(set(inputs) - set(INPUT_NAMES))
    if missing or unexpected:
        raise InputValidationError(f"inputs must be exactly {', '.join(INPUT_NAMES)}; "
                                   f"missing: {missing or 'none'}, unexpected: {unexpected or 'none'}")
    for name in INPUT_NAMES:
        if not isinstance(inputs[name], Tensor):
            raise _fail(name, type(inputs[name]).__name__, "a torch.Tensor")
    ids, mask, numeric, categorical = (inputs[n] for n in INPUT_NAMES)

    ranks = {"input_ids": 2, "attention_mask": 2, "numeric": 2, "categorical": 2}
    for name, rank in ranks.items():
        if inputs[name].dim() != rank:
            raise _fail(name, f"rank {inputs[name].dim()} shape {tuple(inputs[name].shape)}", f"rank {rank}")
    if ids.dtype != torch.int64:
        raise _fail("input_ids", f"dtype {ids.dtype}", "torch.int64")
    if mask.dtype not in (torch.bool, torch.int64, torch.int32):
        raise _fail("attention_mask", f"dtype {mask.dtype}", "torch.bool, torch.int64 or torch.int32")
    if not numeric.is_floating_point():
        raise _fail("numeric", f"dtype {numeric.dtype}", "a floating dtype")
    if categorical.dtype != torch.int64:
        raise _fail("categorical", f"dtype {categorical.dtype}", "torch.int64")

    batch, length = ids.shape
    if batch == 0:
        raise _fail("input_ids", "an empty batch (batch size 0)", "at least one sample")
    if length == 0:
        raise _fail("input_ids", "sequence length 0", "at least one token")
    if length > config.max_seq_len:
        raise _fail("input_ids", f"sequence length {length}",
                    f"at most max_seq_len={config.max_seq_len} of config {config.name!r}")
    if tuple(mask.shape) != (batch, length):
        raise _fail("attention_mask", f"shape {tuple(mask.shape)}", f"the shape of input_ids {(batch, length)}")
    if tuple(numeric.shape) != (batch, config.num_numeric):
        raise _fail("numeric", f"shape {tuple(numeric.shape)}",
                    f"[{batch}, {config.num_numeric}] (batch, numeric features)")
    if tuple(categorical.shape) != (batch, config.num_categorical):
        raise _fail("categorical", f"shape {tuple(categorical.shape)}",
                    f"[{batch}, {config.num_categorical}] (batch, categorical features)")

    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise _fail("input_ids", f"ids in [{int(ids.min())}, {int(ids.max())}]", f"ids in [0, {config.vocab_size - 1}]")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise _fail("attention_mask", "values other than 0 and 1", "0 (padding) or 1 (token)")
    as_int = mask.to(torch.int64)
    if length > 1 and bool((as_int[:, 1:] > as_int[:, :-1]).any()):
        row = int((as_int[:, 1:] > as_int[:, :-1]).any(dim=1).nonzero()[0])
        raise _fail("attention_mask", f"a 0 before a 1 in sample {row}", "right padding (all 1s, then all 0s)")
    if config.num_tabular_tokens == 0 and bool((as_int[:, 0] == 0).any()):
        row = int((as_int[:, 0] == 0).nonzero()[0])
        raise _fail("attention_mask", f"no real token in sample {row}",
                    "at least one token per sample in a text-only model")
    if numeric.numel() and not bool(torch.isfinite(numeric).all()):
        row, col = (int(v) for v in (~torch.isfinite(numeric)).nonzero()[0])
        raise _fail("numeric", f"a non-finite value ({float(numeric[row, col])}) at sample {row}, feature {col}",
                    "finite values")
    for j, cardinality in enumerate(config.categorical_cardinalities):
        column = categorical[:, j]
        if column.min() < 0 or column.max() >= cardinality:
            raise _fail("categorical", f"codes in [{int(column.min())}, {int(column.max())}] for feature {j}",
                        f"codes in [0, {cardinality - 1}] (0 = unknown)")


def input_spec(config: ModelConfig) -> dict[str, dict]:
    """Names, dtypes and symbolic shapes of the exported graphs' inputs (the manifest's "inputs")."""
    return {"input_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", "seq"]},
            "numeric": {"dtype": "float32", "shape": ["batch", config.num_numeric]},
            "categorical": {"dtype": "int64", "shape": ["batch", config.num_categorical]}}


def random_inputs(config: ModelConfig, batch: int, length: int, generator: torch.Generator | None = None,
                  full: bool = False) -> dict[str, Tensor]:
    """A valid random batch: word ids, right padding of random length (none if `full`), random features."""
    g = generator
    ids = torch.randint(FIRST_WORD_ID, config.vocab_size, (batch, length), generator=g)
    lengths = torch.full((batch,), length) if full else torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length  # the longest sample fills the batch, as a real padded batch does
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
    ids = ids * mask
    numeric = torch.randn(batch, config.num_numeric, generator=g)
    categorical = torch.stack([torch.randint(0, c, (batch,), generator=g)
                               for c in config.categorical_cardinalities], dim=1) \
        if config.num_categorical else torch.zeros(batch, 0, dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": mask, "numeric": numeric, "categorical": categorical}
