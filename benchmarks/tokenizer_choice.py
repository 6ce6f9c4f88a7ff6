"""Tokenizer choice: byte-level vs hashed-word tokens for the `small` model, trained briefly on a GPU.

    python benchmarks/tokenizer_choice.py --data .gpu/reviews.parquet --device cuda

The byte tokenizer the project used before ([CLS] + UTF-8 bytes shifted by 2) is defined here for the
comparison only. Results: benchmarks/RESULTS.md, "Tokenizer".
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mahia.data.reviews as reviews
import mahia.train.trainer as trainer
from mahia.data.tokenizer import encode_texts as word_encode
from mahia.model.config import CLS_ID, PAD_ID, get_config
from mahia.train.config import TrainConfig

# (name, tokenizer, vocab size, tokens per text, steps, peak lr)
VARIANTS = (("bytes128_s400", "bytes", 258, 128, 400, 2e-3), ("bytes128_s2400", "bytes", 258, 128, 2400, 2e-3),
            ("words8k_64_s400", "words", 8192, 64, 400, 2e-3), ("words8k_96_s400", "words", 8192, 96, 400, 3e-3),
            ("words8k_96_s1200", "words", 8192, 96, 1200, 3e-3), ("words4k_96_s400", "words", 4096, 96, 400, 3e-3))


def byte_encode(texts: list[str], max_len: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] then the UTF-8 bytes shifted past the two special ids (vocab_size is 258)."""
    rows = [[CLS_ID] + [b + 2 for b in t.encode("utf-8")[: max_len - 1]] for t in texts]
    ids = torch.full((len(rows), max(len(r) for r in rows)), PAD_ID, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def main() -> None:
    """Train each variant and print its test metrics."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="/tmp/tokenizer-choice")
    args = parser.parse_args()
    small = get_config("small")
    for name, kind, vocab, tokens, steps, lr in VARIANTS:
        reviews.encode_texts = byte_encode if kind == "bytes" else word_encode
        trainer.get_config = lambda _name, v=vocab: small.replace(vocab_size=v)
        started = time.time()
        config = TrainConfig(model="small", max_steps=steps, epochs=100, batch_size=32, max_text_tokens=tokens, lr=lr,
                             warmup_steps=30, seed=0, device=args.device, data_path=args.data, baseline=False,
                             save_every=10**6)
        result = trainer.train(config, f"{args.out}/{name}")
        test = result.metrics["model"]["test"]
        print("RESULT", name, json.dumps({"acc": test["accuracy"], "auc": test["roc_auc"], "f1": test["f1"],
                                          "sec": round(time.time() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
