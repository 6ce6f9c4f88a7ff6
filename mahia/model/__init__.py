"""MAHIA-X in plain PyTorch: the eager reference model."""

from mahia.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_sha256
from mahia.model.config import CONFIGS, ModelConfig, get_config
from mahia.model.inputs import InputValidationError, as_tensors, random_inputs, validate_inputs
from mahia.model.mahia_x import INPUT_NAMES, OUTPUT_NAMES, MahiaX, build_model
from mahia.model.moe import moe_aux_losses
from mahia.model.source import ModelSource

__all__ = ["CONFIGS", "CheckpointError", "INPUT_NAMES", "InputValidationError", "MahiaX", "ModelConfig",
           "ModelSource", "OUTPUT_NAMES", "as_tensors", "build_model", "get_config", "load_checkpoint",
           "moe_aux_losses", "random_inputs", "save_checkpoint", "validate_inputs", "weights_sha256"]
