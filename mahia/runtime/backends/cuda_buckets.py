"""Shape buckets of the CUDA backend: a batch is padded up to the next (batch, seq) bucket, so one captured CUDA
graph serves every shape inside its bucket.

The buckets are derived from the manifest's dynamic ranges alone (nothing extra is recorded): batch sizes are the
powers of two from the range's minimum, sequence lengths the powers of two and their 1.5x steps from 16 (so the
grid pads by at most a third of the tokens above 16); each list ends at the range's maximum. Each sequence bucket
is then raised, where the model's max_seq_len allows, until its length plus the model's tabular tokens (which join
the words in the long convolutions) is a multiple of 16: the long-conv kernel pads other lengths to 16 itself, with
copies around every call (at batch 1 the kernel took 0.015 ms at L = 133 against 0.004 at 128, H200, CUDA-graph
replay, benchmarks/RESULTS.md), while raising a bucket adds at most 15 tokens per row (so the largest bucket can
lie up to 15 above the range's maximum: 2048 words with 5 tabular tokens run as 2059). Padding is exact:
padded positions are masked (the model's padding invariance, a tested property) and padded rows are dropped
from the output (each row of the model depends on its own inputs only; the MoE is dropless at inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mahia.artifact import DimRange
from mahia.model.config import CLS_ID

SEQ_FLOOR = 16  # shorter sequences share the 16-token bucket: the graphs are launch-bound there anyway
SEQ_ALIGNMENT = 16  # = mahia.kernels.triton.long_conv.LENGTH_ALIGNMENT (a test checks it; importing it needs triton)


def _grid(minimum: int, maximum: int, steps: tuple[float, ...], floor: int) -> tuple[int, ...]:
    """Sizes `base * step` for base = floor, 2 floor, 4 floor, ... within [minimum, maximum), then maximum."""
    sizes, base = set(), floor
    while base < maximum:
        sizes.update(int(base * step) for step in steps if minimum <= int(base * step) < maximum)
        base *= 2
    return tuple(sorted(sizes)) + (maximum,)


def _align(size: int, extra_tokens: int, limit: int) -> int:
    """The smallest length >= size with length + extra_tokens a multiple of SEQ_ALIGNMENT, or size above `limit`."""
    aligned = -(-(size + extra_tokens) // SEQ_ALIGNMENT) * SEQ_ALIGNMENT - extra_tokens
    return aligned if aligned <= limit else size


@dataclass(frozen=True)
class Buckets:
    """Sorted batch and sequence bucket sizes; the last of each holds the range's maximum."""

    batch: tuple[int, ...]
    seq: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, sizes in (("batch", self.batch), ("seq", self.seq)):
            if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError(f"{name} buckets must be distinct positive sizes in increasing order, got {sizes}")

    @classmethod
    def from_ranges(cls, batch: DimRange, seq: DimRange, extra_tokens: int = 0, seq_limit: int | None = None
                    ) -> Buckets:
        """The buckets of an artifact's dynamic ranges (the manifest's `dims`); sequence buckets aligned so that
        bucket + extra_tokens (the model's tabular tokens) is a multiple of SEQ_ALIGNMENT, never past seq_limit (the
        model's max_seq_len; None: the range's maximum)."""
        limit = seq.max if seq_limit is None else seq_limit
        aligned = {_align(size, extra_tokens, limit) for size in _grid(seq.min, seq.max, (1.0, 1.5), SEQ_FLOOR)}
        return cls(_grid(batch.min, batch.max, (1.0,), 1), tuple(sorted(aligned)))

    def bucket(self, batch: int, seq: int) -> tuple[int, int]:
        """The smallest (batch, seq) bucket holding a batch of this shape; ValueError above the largest."""
        if batch > self.batch[-1] or seq > self.seq[-1]:
            raise ValueError(f"batch {batch} x seq {seq} is above the largest bucket {self.batch[-1]} x {self.seq[-1]}")
        return next(b for b in self.batch if b >= batch), next(s for s in self.seq if s >= seq)


def fill_padded(target: Mapping[str, Tensor], inputs: Mapping[str, Tensor]) -> None:
    """Write `inputs` [B, L] into the bucket-shaped tensors `target` [Bb >= B, Lb >= L] in place: positions past L
    masked out, rows past B a lone [CLS] token (a valid sample whose output is dropped)."""
    batch, length = inputs["input_ids"].shape
    for name, tensor in target.items():
        tensor.zero_()
        source = inputs[name]
        if name in ("input_ids", "attention_mask"):
            tensor[:batch, :length].copy_(source)
        else:
            tensor[:batch].copy_(source)
    target["input_ids"][batch:, 0] = CLS_ID
    target["attention_mask"][batch:, 0] = 1


def pad_inputs(inputs: Mapping[str, Tensor], batch: int, seq: int) -> dict[str, Tensor]:
    """New tensors of the bucket shape (batch, seq) holding `inputs`, padded as `fill_padded` does."""
    shapes = {"input_ids": (batch, seq), "attention_mask": (batch, seq)}
    target = {name: torch.empty(shapes.get(name, (batch, *t.shape[1:])), dtype=t.dtype, device=t.device)
              for name, t in inputs.items()}
    fill_padded(target, inputs)
    return target
