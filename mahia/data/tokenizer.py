"""Hashed word tokenizer: [CLS], then each lower-cased word or punctuation mark hashed into the vocabulary.

Nothing to download or fit: a token's id is a fixed hash of its text, so any vocabulary size works and a
deployment reproduces it from this file alone. Words that collide share an embedding row (measured on
the reviews data: at 4096 ids this costs little next to a byte-level vocabulary; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import hashlib
import re

import torch
from torch import Tensor

from mahia.model.config import CLS_ID, FIRST_WORD_ID, PAD_ID

# A word (letters, digits, inner apostrophes) or a single punctuation mark; whitespace separates.
TOKEN_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def split_words(text: str) -> list[str]:
    """The lower-cased tokens of a text, in order."""
    return TOKEN_PATTERN.findall(text.lower())


@functools.lru_cache(maxsize=1 << 17)
def token_id(word: str, vocab_size: int) -> int:
    """The id of one token: blake2b of its UTF-8 text, modulo the ids left after the special ones."""
    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"vocab_size must be > {FIRST_WORD_ID} (pad and [CLS] are reserved), got {vocab_size}")
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return FIRST_WORD_ID + int.from_bytes(digest, "little") % (vocab_size - FIRST_WORD_ID)


def truncate_words(text: str, max_words: int) -> str:
    """The text's first max_words tokens joined by spaces: exactly what the model sees of it."""
    return " ".join(split_words(text)[:max_words])


def encode_texts(texts: list[str], max_len: int, vocab_size: int) -> tuple[Tensor, Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) right-padded to the longest text, truncated to max_len."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    rows = [[CLS_ID] + [token_id(w, vocab_size) for w in split_words(text)[: max_len - 1]] for text in texts]
    length = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return ids, mask
