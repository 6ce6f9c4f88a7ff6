"""TensorRT plugins of the `mahia::` ops, one plugin per kernel launch of the ops' launch plans.

Importing this package needs torch, onnx and triton, never TensorRT. What lives where:
- `specs` (dataclasses, binding, dtype rules), `sizes` (the size algebra), one module per op with its plugin specs,
  launch formulas, per-launch references and chain (`gate_combine`, `long_conv`, `ssd_scan`, `moe_ffn`);
- `PLUGINS` (name -> PluginSpec) and `CHAINS` (op -> Chain): the single source of truth for the graph side;
- `nodes.chain_nodes`: one op call as ONNX plugin nodes;
- `aot`: the AOT payload of a plugin (the PTX mahia.kernels.aot builds, grid, block, shared bytes, scalars);
- `qdp`: TensorRT >= 10.9 Quickly Deployable Plugins (imports tensorrt);
- `rtx`: TensorRT-RTX Python plugins and the parse + build harness (imports tensorrt_rtx in a child process);
- `ort`: ONNX Runtime execution of plugin nodes by their references (onnxruntime-extensions).
"""

from mahia.plugins_trt import gate_combine, long_conv, moe_ffn, ssd_scan
from mahia.plugins_trt.specs import Chain, PluginSpec

PLUGINS: dict[str, PluginSpec] = {spec.name: spec for module in (gate_combine, long_conv, ssd_scan, moe_ffn)
                                  for spec in module.SPECS}
CHAINS: dict[str, Chain] = {chain.op: chain for chain in (gate_combine.CHAIN, long_conv.CHAIN, ssd_scan.CHAIN,
                                                           moe_ffn.CHAIN, moe_ffn.CHAIN_FP8)}

__all__ = ["CHAINS", "PLUGINS", "Chain", "PluginSpec"]
