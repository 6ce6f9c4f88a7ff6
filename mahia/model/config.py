"""Model configuration: one frozen dataclass, and the named sizes tiny / small / base / large."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

# Hashed word vocabulary (mahia.data.tokenizer): id 0 is padding, id 1 is the [CLS] token, ids from 2
# on are hashed words. 4096 ids keep the trained default checkpoint under 10 MB.
PAD_ID = 0
CLS_ID = 1
FIRST_WORD_ID = 2
DEFAULT_VOCAB_SIZE = 4096

# The reviews data set's tabular schema (see mahia.data.reviews): age and log positive-feedback
# count; division, department and class names, each table with index 0 reserved for unknown.
REVIEWS_NUM_NUMERIC = 2
REVIEWS_CATEGORICAL_CARDINALITIES = (4, 7, 21)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one MAHIA-X model; every field is a plain value so it serialises to JSON."""

    name: str
    d_model: int
    n_layers: int
    max_seq_len: int
    # Mamba-2 SSD branch: ssm_heads * ssm_head_dim is its inner width, d_state its state size.
    ssm_heads: int
    ssm_head_dim: int
    d_state: int
    chunk_size: int
    # Implicit filters (Hyena and Fourier branches): sinusoidal features -> MLP of this width.
    filter_features: int
    filter_hidden: int
    # Sparse mixture of SwiGLU experts.
    num_experts: int
    top_k: int
    expert_hidden: int
    capacity_factor: float
    # Graph-diffusion memory.
    memory_nodes: int
    diffusion_steps: int
    # Inputs and output.
    vocab_size: int = DEFAULT_VOCAB_SIZE
    num_numeric: int = REVIEWS_NUM_NUMERIC
    categorical_cardinalities: tuple[int, ...] = REVIEWS_CATEGORICAL_CARDINALITIES
    num_classes: int = 2
    short_conv_width: int = 3
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        positive = ("d_model", "n_layers", "max_seq_len", "ssm_heads", "ssm_head_dim", "d_state",
                    "chunk_size", "filter_features", "filter_hidden", "num_experts", "top_k",
                    "expert_hidden", "memory_nodes", "vocab_size", "num_classes", "short_conv_width")
        for field in positive:
            if getattr(self, field) < 1:
                raise ValueError(f"ModelConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.vocab_size <= FIRST_WORD_ID:
            raise ValueError(f"ModelConfig.vocab_size must be > {FIRST_WORD_ID} (pad and [CLS] are reserved), "
                             f"got {self.vocab_size}")
        if self.filter_features % 2:
            raise ValueError(f"ModelConfig.filter_features must be even (sin/cos pairs), got {self.filter_features}")
        if self.diffusion_steps < 0 or self.num_numeric < 0:
            raise ValueError("ModelConfig.diffusion_steps and num_numeric must be >= 0")
        if any(c < 2 for c in self.categorical_cardinalities):
            raise ValueError("each categorical cardinality must be >= 2 (index 0 is reserved for unknown), "
                             f"got {self.categorical_cardinalities}")
        object.__setattr__(self, "categorical_cardinalities", tuple(int(c) for c in self.categorical_cardinalities))

    @property
    def effective_top_k(self) -> int:
        """top_k clamped to the number of experts."""
        return min(self.top_k, self.num_experts)

    @property
    def num_categorical(self) -> int:
        """Number of categorical features."""
        return len(self.categorical_cardinalities)

    @property
    def num_tabular_tokens(self) -> int:
        """Tokens placed before the text: one per numeric and per categorical feature."""
        return self.num_numeric + self.num_categorical

    def to_json(self) -> str:
        """Serialise to a JSON string (stored in checkpoints and manifests)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Parse a config written by `to_json`, naming unknown or missing fields."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"model config JSON must be an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"model config has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"model config is incomplete: {exc}") from None

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", d_model=32, n_layers=2, max_seq_len=160, ssm_heads=2, ssm_head_dim=16, d_state=8,
        chunk_size=16, filter_features=8, filter_hidden=16, num_experts=4, top_k=2, expert_hidden=64,
        capacity_factor=1.25, memory_nodes=8, diffusion_steps=2, vocab_size=512),
    "small": ModelConfig(
        name="small", d_model=96, n_layers=3, max_seq_len=384, ssm_heads=4, ssm_head_dim=24, d_state=16,
        chunk_size=64, filter_features=16, filter_hidden=32, num_experts=8, top_k=2, expert_hidden=192,
        capacity_factor=1.25, memory_nodes=16, diffusion_steps=3),
    "base": ModelConfig(
        name="base", d_model=768, n_layers=8, max_seq_len=4096, ssm_heads=12, ssm_head_dim=64, d_state=128,
        chunk_size=256, filter_features=32, filter_hidden=64, num_experts=8, top_k=2, expert_hidden=2048,
        capacity_factor=1.25, memory_nodes=64, diffusion_steps=3),
    "large": ModelConfig(
        name="large", d_model=1024, n_layers=12, max_seq_len=8192, ssm_heads=16, ssm_head_dim=64, d_state=128,
        chunk_size=256, filter_features=32, filter_hidden=64, num_experts=8, top_k=2, expert_hidden=2816,
        capacity_factor=1.25, memory_nodes=64, diffusion_steps=3),
}


def get_config(name: str) -> ModelConfig:
    """The named config, or a ValueError listing the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; expected one of {', '.join(CONFIGS)}") from None
