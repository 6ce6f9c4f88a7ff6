"""How far a bf16 training step's gradient is from the exact one, on the CPU: the scale for comparing GPU gradients.

    python benchmarks/bf16_gradient_noise.py [--config small --batch 16 --seq 96]

One batch as benchmarks/fsdp_grad_match.py makes it (seed 1, random right padding), the seeded model with MoE
capacity that drops nothing, the training loss's gradient under the two precision policies of mahia-train on
GPUs, emulated with CPU bf16 (CPU autocast's op list is not CUDA's, and the Triton kernels are not run):

- "trainer": float32 parameters under bf16 autocast (`mahia-train --device cuda`, one process);
- "fsdp2": bfloat16 parameters (FSDP2's MixedPrecisionPolicy) under the same autocast (torchrun);

each against float64 (relative L2 error of the whole gradient), plus the tokens whose top-k experts differ from
float64's routing: a flipped token's gradient goes to other experts entirely, which is why bf16 gradients of
this model lie far further apart than bf16's 2^-8 rounding.
"""

from __future__ import annotations

import argparse
import copy

import torch

from mahia.model import CONFIGS, build_model, random_inputs
from mahia.train import TrainConfig, training_loss

from common import relative_error


def main() -> None:
    """Print each policy's loss, gradient error and routing flips against float64."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=96)
    args = parser.parse_args()
    named = CONFIGS[args.config]
    config = named.replace(capacity_factor=named.num_experts / named.top_k)
    train = TrainConfig()
    generator = torch.Generator().manual_seed(1)
    inputs = random_inputs(config, args.batch, args.seq, generator)
    labels = torch.randint(0, config.num_classes, (args.batch,), generator=generator)
    model = build_model(config, seed=0).train()

    def step(net: torch.nn.Module, dtype: torch.dtype, autocast: bool) -> tuple[float, torch.Tensor, list]:
        net.zero_grad()
        feed = dict(inputs, numeric=inputs["numeric"].to(dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = net.forward_with_router_logits(**feed)
        loss = training_loss(output, labels, config.effective_top_k, train.aux_loss_weight, train.z_loss_weight).total
        loss.backward()
        mask = output.token_mask.reshape(-1).bool()
        experts = [layer[mask].float().topk(config.effective_top_k, dim=-1).indices.sort(dim=-1).values
                   for layer in output.router_logits]
        return loss.item(), torch.cat([p.grad.double().flatten() for p in net.parameters()]), experts

    exact_loss, exact, exact_experts = step(copy.deepcopy(model).double(), torch.float64, autocast=False)
    tokens = exact_experts[0].shape[0]
    print(f"{args.config}, batch {args.batch} x {args.seq} (padded), {tokens} real tokens; "
          f"float64 loss {exact_loss:.6f}")
    print("policy    loss       gradient error vs float64   tokens routed differently per MoE layer")
    policies = {"float32": (model, torch.float32, False), "trainer": (model, torch.float32, True),
                "fsdp2": (copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16, True)}
    grads = {}
    for name, (net, dtype, autocast) in policies.items():
        loss, grads[name], experts = step(net, dtype, autocast)
        flips = [int((a != b).any(dim=-1).sum()) for a, b in zip(experts, exact_experts)]
        print(f"{name:8s}  {loss:.6f}  {relative_error(grads[name], exact):26.2e}   {flips}")
    print(f"fsdp2 against trainer: gradient relative L2 {relative_error(grads['fsdp2'], grads['trainer']):.2e}")


if __name__ == "__main__":
    main()
