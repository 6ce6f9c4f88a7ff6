"""Input embedding: word tokens plus FT-Transformer-style tabular tokens placed before the text."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mahia.model.config import ModelConfig


class InputEmbedding(nn.Module):
    """(input_ids, attention_mask, numeric, categorical) -> tokens [B, Fn+Fc+L, D] and mask [B, Fn+Fc+L].

    Numeric feature i becomes value * W_i + b_i; categorical feature j looks up its own table (index 0
    is the unknown category). Tabular tokens are always valid; text keeps its right padding.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.text = nn.Embedding(config.vocab_size, d)
        self.numeric_weight = nn.Parameter(torch.randn(config.num_numeric, d) * 0.02)
        self.numeric_bias = nn.Parameter(torch.zeros(config.num_numeric, d))
        cardinalities = torch.tensor((0,) + config.categorical_cardinalities, dtype=torch.long)
        self.register_buffer("categorical_offsets", cardinalities.cumsum(0)[:-1], persistent=False)
        self.categorical = nn.Embedding(int(cardinalities.sum()) or 1, d)
        nn.init.normal_(self.text.weight, std=0.02)
        nn.init.normal_(self.categorical.weight, std=0.02)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, numeric: Tensor,
                categorical: Tensor) -> tuple[Tensor, Tensor]:
        """Token embeddings and the float mask (1 = real token) of the full sequence."""
        text = self.text(input_ids)
        parts = []
        if self.numeric_weight.shape[0]:
            parts.append(numeric.to(text.dtype)[..., None] * self.numeric_weight + self.numeric_bias)
        if self.categorical_offsets.shape[0]:
            parts.append(self.categorical(categorical + self.categorical_offsets))
        text_mask = attention_mask.to(text.dtype)
        if not parts:
            return text, text_mask
        tabular = torch.cat(parts, dim=1)
        tabular_mask = torch.ones(tabular.shape[:2], dtype=text.dtype, device=text.device)
        return torch.cat([tabular, text], dim=1), torch.cat([tabular_mask, text_mask], dim=1)
