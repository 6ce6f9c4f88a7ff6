"""The model's forward FLOPs, counted analytically from its config (a multiply-add is 2 FLOPs).

What is counted, for a batch of B samples of L text tokens (T = L + tabular tokens positions per sample, every
position real, as the benchmark feeds it):
- dense: every nn.Linear (2 * in * out per row it sees: T rows per sample for the token layers, 1 per sample for
  the fabric, the memory's condition and the head, M memory nodes for the memory's key and value, the filter
  positions for the implicit filters' MLPs), the short depthwise convolution (2 * 3D * width per output
  position, L + width - 1 of them as nn.Conv1d pads) and the memory's diffusion and attention matmuls;
  `dense` equals what torch.utils.flop_counter.FlopCounterMode counts outside the custom ops (tested);
- moe: the active experts only: top_k SwiGLU experts per token, 2 * (D * 2H + H * D) each, the router in dense;
- ssd: the chunked scan's matmuls with chunk Q = min(chunk_size, T): C B^T (2 Q N per token), its product with
  X (2 Q P per token and head), the chunk states and their read-out (2 N P each per token and head);
- long_conv: the FFT algorithm's arithmetic for both convolutions of a block (3 real FFTs of size n = 2T at
  2.5 n log2 n each, plus the complex product, per channel); the Toeplitz kernel does more work than this on
  short sequences, which MFU does not credit.
Elementwise work (norms, activations, softmaxes, gates) is not counted, as is usual for MFU.
"""

from __future__ import annotations

import math

from mahia.model import ModelConfig


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _dense_per_layer(config: ModelConfig, samples: int, positions: int) -> int:
    d, rows = config.d_model, samples * positions
    inner = config.ssm_heads * config.ssm_head_dim
    ssd_proj = 2 * inner + 2 * config.d_state + config.ssm_heads
    token_layers = (_linear(rows, d, 3 * d)  # in_proj
                    + _linear(rows, d, 3 * d)  # hyena.proj
                    + _linear(rows, d, ssd_proj) + _linear(rows, inner, d)  # ssd.proj, ssd.out_proj
                    + _linear(rows, d, d)  # fourier.proj
                    + _linear(rows, d, 3) + _linear(rows, d, d)  # gate, out_proj
                    + _linear(rows, d, config.num_experts))  # router
    width = config.short_conv_width
    short_conv = 2 * samples * 3 * d * width * (positions + width - 1)
    f, h = config.filter_features, config.filter_hidden
    filters = sum(_linear(taps, f, h) + _linear(taps, h, h) + _linear(taps, h, d)
                  for taps in (positions, 2 * positions - 1))  # causal (Hyena) and two-sided (Fourier)
    return token_layers + short_conv + filters


def _memory(config: ModelConfig, samples: int, positions: int) -> int:
    d, m = config.d_model, config.memory_nodes
    rows = samples * positions
    per_sample = _linear(1, d, d) + config.diffusion_steps * 2 * m * m * d + 2 * _linear(m, d, d)  # key, value
    per_token = _linear(1, d, d) * 2 + 2 * 2 * m * d  # query and out_proj; scores and the weighted read
    return samples * per_sample + rows * per_token


def forward_flops(config: ModelConfig, batch: int, seq: int) -> dict[str, int]:
    """FLOPs of one forward of `batch` samples of `seq` text tokens, by part (see the module docstring)."""
    positions = seq + config.num_tabular_tokens
    rows, layers, d = batch * positions, config.n_layers, config.d_model
    chunk = min(config.chunk_size, positions)
    n, p, heads = config.d_state, config.ssm_head_dim, config.ssm_heads
    fft = 2 * positions
    long_conv_per_channel = 3 * 2.5 * fft * math.log2(fft) + 6 * (fft // 2 + 1)
    dense = (layers * _dense_per_layer(config, batch, positions) + _memory(config, batch, positions)
             + _linear(batch, d, 2 * layers) + _linear(batch, d, config.num_classes))  # fabric, head
    return {
        "dense": dense,
        "moe": layers * rows * config.effective_top_k * 2 * (d * 2 * config.expert_hidden + config.expert_hidden * d),
        "ssd": layers * rows * (2 * chunk * n + heads * (2 * chunk * p + 4 * n * p)),
        "long_conv": int(layers * 2 * batch * d * long_conv_per_channel),
    }
