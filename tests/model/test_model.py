"""MAHIA-X reference model: shapes, padding invariance, routing variants, losses and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from mahia.default import load_default_model
from mahia.model import build_model, get_config, moe_aux_losses, random_inputs
from mahia.model.embedding import InputEmbedding
from mahia.model.mahia_x import MahiaX
from tests.conftest import relative_error

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tiny_model() -> MahiaX:
    return build_model(TINY, seed=0).eval()


@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("length", [1, 7, 129])
def test_logits_shape_and_finite(tiny_model: MahiaX, batch: int, length: int, generator: torch.Generator) -> None:
    inputs = random_inputs(TINY, batch, length, generator)
    with torch.no_grad():
        logits = tiny_model(**inputs)
    assert logits.shape == (batch, TINY.num_classes)
    assert torch.isfinite(logits).all()


def test_padding_invariance(tiny_model: MahiaX, generator: torch.Generator) -> None:
    """A sequence's logits alone equal its logits right-padded in a batch with longer sequences."""
    inputs = random_inputs(TINY, 5, 61, generator)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) > 1, "the batch must mix lengths"
    with torch.no_grad():
        batched = tiny_model(**inputs)
        for i, n in enumerate(lengths):
            alone = tiny_model(**{k: (v[i:i + 1, :n] if k in ("input_ids", "attention_mask") else v[i:i + 1])
                                  for k, v in inputs.items()})
            assert relative_error(batched[i], alone[0]) < 1e-5, f"sample {i} (length {n})"


def test_padding_content_is_ignored(tiny_model: MahiaX, generator: torch.Generator) -> None:
    inputs = random_inputs(TINY, 3, 40, generator)
    noisy = dict(inputs)
    padding = inputs["attention_mask"] == 0
    assert padding.any()
    noisy["input_ids"] = torch.where(padding, torch.randint(2, 258, padding.shape, generator=generator),
                                     inputs["input_ids"])
    with torch.no_grad():
        assert relative_error(tiny_model(**noisy), tiny_model(**inputs)) < 1e-5


@pytest.mark.parametrize("top_k", [1, 4, 7])
def test_top_k_one_and_all_experts(top_k: int, generator: torch.Generator) -> None:
    config = TINY.replace(top_k=top_k)
    assert config.effective_top_k == min(top_k, config.num_experts)
    model = build_model(config, seed=1).eval()
    with torch.no_grad():
        logits = model(**random_inputs(config, 3, 19, generator))
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()


def test_text_only_model(generator: torch.Generator) -> None:
    config = TINY.replace(num_numeric=0, categorical_cardinalities=())
    model = build_model(config).eval()
    inputs = random_inputs(config, 2, 9, generator)
    assert inputs["numeric"].shape == (2, 0) and inputs["categorical"].shape == (2, 0)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs)).all()


def test_build_model_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build_model(TINY, seed=3), build_model(TINY, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(TINY, seed=4)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_model_is_a_pure_function_of_its_input(tiny_model: MahiaX, generator: torch.Generator) -> None:
    """No state survives a call: the memory and fabric are rebuilt per sample."""
    first = random_inputs(TINY, 2, 11, generator)
    other = random_inputs(TINY, 4, 30, generator)
    with torch.no_grad():
        before = tiny_model(**first)
        tiny_model(**other)
        assert torch.equal(tiny_model(**first), before)


def test_gradients_reach_every_parameter(generator: torch.Generator) -> None:
    model = build_model(TINY, seed=0).train()
    out = model.forward_with_router_logits(**random_inputs(TINY, 4, 23, generator))
    aux = sum(sum(moe_aux_losses(r, out.token_mask, TINY.top_k)) for r in out.router_logits)
    (out.logits.square().mean() + aux).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"


def test_aux_losses_hand_checked() -> None:
    # Uniform router: every probability 1/E, so P_e = 1/E and the f_e sum to 1 -> load balance 1;
    # logsumexp(0, ..., 0) = log E -> z-loss (log E)^2.
    experts = 4
    logits = torch.zeros(6, experts)
    mask = torch.ones(6)
    balance, z = moe_aux_losses(logits, mask, 2)
    assert balance.item() == pytest.approx(1.0)
    assert z.item() == pytest.approx(math.log(experts) ** 2)
    # A router that sends every real token to expert 0 with probability p: f = (1, 0), P = (p, 1-p),
    # so load balance = 2 * p. The masked row (which would favour expert 1) must not count.
    p = 0.9
    logits = torch.tensor([[math.log(p), math.log(1 - p)]] * 3 + [[-5.0, 5.0]])
    mask = torch.tensor([1, 1, 1, 0])
    balance, z = moe_aux_losses(logits, mask, 1)
    assert balance.item() == pytest.approx(2 * p)
    assert z.item() == pytest.approx(0.0, abs=1e-12)


def test_training_mode_drops_overflow_and_eval_is_dropless(generator: torch.Generator) -> None:
    config = TINY.replace(capacity_factor=0.25)
    model = build_model(config, seed=0)
    inputs = random_inputs(config, 2, 30, generator)
    with torch.no_grad():
        train_logits = model.train()(**inputs)
        eval_logits = model.eval()(**inputs)
        eval_again = build_model(config.replace(capacity_factor=4.0), seed=0).eval()(**inputs)
    assert not torch.allclose(train_logits, eval_logits)
    assert torch.equal(eval_logits, eval_again)


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 3e-2), (torch.float16, 1e-2)])
def test_half_precision_close_to_float32(tiny_model: MahiaX, dtype: torch.dtype, tolerance: float,
                                         generator: torch.Generator) -> None:
    inputs = random_inputs(TINY, 3, 37, generator)
    half = build_model(TINY, seed=0).eval().to(dtype)
    with torch.no_grad():
        ref = tiny_model.forward_with_router_logits(**inputs)
        out = half.forward_with_router_logits(**{k: (v.to(dtype) if v.is_floating_point() else v)
                                                 for k, v in inputs.items()})
    assert out.logits.dtype == dtype
    # A random model's router has near ties; where half precision flips one (a discrete change, not an
    # accumulated error), that sample is exempt, and the flip must be a near tie in float32.
    k = TINY.effective_top_k
    flipped = torch.zeros(3, dtype=torch.bool)
    for ref_logits, half_logits in zip(ref.router_logits, out.router_logits):
        chosen = ref_logits.topk(k, -1).indices.sort(-1).values
        differs = (chosen != half_logits.float().topk(k, -1).indices.sort(-1).values).any(-1)
        differs = differs.reshape(3, -1) & ref.token_mask.reshape(3, -1).bool()
        top = ref_logits.topk(k + 1, -1).values.reshape(3, -1, k + 1)
        assert ((top[..., k - 1] - top[..., k])[differs] < 5e-2).all(), "a routing flip that is not a near tie"
        flipped |= differs.any(-1)
    assert not flipped.all(), "every sample flipped an expert: nothing left to compare"
    keep = ~flipped
    assert relative_error(out.logits[keep], ref.logits[keep]) < tolerance


# Logits of the shipped default checkpoint (trained `small`, 2026-12-01) on random_inputs(config, 3, 37, seed 18),
# computed once with this code (torch 2.13 CPU). Any change to the forward pass (a swapped gate, a misplaced embedding
# row) moves them by far more than float32 rounding: swapping the fabric's two gates moves them by 0.22 (rel. L2).
SHIPPED_LOGITS = [[0.94601625, -0.72283322], [0.21728745, 0.08933579], [0.78568918, -0.550488]]


def test_shipped_checkpoint_gives_its_recorded_logits_on_fixed_inputs() -> None:
    model = load_default_model().model
    inputs = random_inputs(model.config, 3, 37, torch.Generator().manual_seed(18))
    assert inputs["categorical"].tolist() == [[0, 6, 6], [2, 2, 11], [1, 5, 20]]  # the same fixed inputs
    with torch.inference_mode():
        logits = model(**inputs)
    assert relative_error(logits, torch.tensor(SHIPPED_LOGITS)) < 1e-5


def test_each_categorical_feature_and_code_has_its_own_embedding_row() -> None:
    embedding = InputEmbedding(TINY)
    rows = embedding.categorical.weight.shape[0]
    assert rows == sum(TINY.categorical_cardinalities)
    with torch.no_grad():  # row r holds r: the looked-up token says which row it came from
        embedding.categorical.weight.copy_(torch.arange(rows, dtype=torch.float32)[:, None].expand(-1, TINY.d_model))
    biggest = max(TINY.categorical_cardinalities)
    codes = torch.stack([torch.arange(biggest) % c for c in TINY.categorical_cardinalities], dim=1)
    tokens, _ = embedding(torch.ones(biggest, 1, dtype=torch.long), torch.ones(biggest, 1, dtype=torch.long),
                          torch.zeros(biggest, TINY.num_numeric), codes)
    used = {(j, int(codes[i, j])): int(tokens[i, TINY.num_numeric + j, 0])
            for j in range(TINY.num_categorical) for i in range(biggest)}
    assert len(used) == rows and sorted(used.values()) == list(range(rows))  # one row per (feature, code), all used
