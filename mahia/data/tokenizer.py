"""Byte-level tokenizer: [CLS] then the UTF-8 bytes shifted past the special ids; nothing to download."""

from __future__ import annotations

import torch
from torch import Tensor

from mahia.model.config import BYTE_OFFSET, CLS_ID, PAD_ID


def encode_texts(texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) right-padded to the longest text, truncated to max_len."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    rows = [[CLS_ID] + [b + BYTE_OFFSET for b in text.encode("utf-8")[: max_len - 1]] for text in texts]
    length = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return ids, mask
