"""The TensorRT 11 side that can be checked without TensorRT: the QDP function signatures generated from the specs
follow tensorrt.plugin's validation rules (read in the 11.4.0.106 wheel's _validate.py), the package imports
without TensorRT while mahia.plugins_trt.qdp names the missing package, and the AOT payload of a plugin (the path
qdp.aot_impl takes) is the plugin-ready PTX with the formula's launch."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import typing

import pytest

from mahia.plugins_trt import PLUGINS
from mahia.plugins_trt.qdp_schema import (
    aot_impl_signature,
    autotune_signature,
    autotune_types,
    register_signature,
    with_signature,
)


class TensorDesc:  # placeholders for tensorrt.plugin's classes: the signatures only hold them
    pass


class KernelLaunchParams:
    pass


class SymIntExprs:
    pass


class AutoTuneCombination:
    pass


@pytest.mark.parametrize("name", list(PLUGINS))
def test_qdp_signatures_follow_tensorrts_validation_rules(name):
    spec = PLUGINS[name]
    tensors, attrs = [t.name for t in spec.inputs], list(spec.attrs)
    register = register_signature(spec, TensorDesc)
    params = list(register.parameters.values())
    assert [p.name for p in params] == tensors + attrs
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty
               for p in params)
    assert [p.annotation for p in params] == [TensorDesc] * len(tensors) + [int] * len(attrs)
    assert not {p.name for p in params} & {"outputs", "stream", "tactic"}
    assert typing.get_origin(register.return_annotation) is tuple
    assert typing.get_args(register.return_annotation) == (TensorDesc,) * len(spec.outputs)
    # _validate_aot_impl: "(" + tensors + attrs + ", outputs, tactic)", every attribute (passed positionally)
    aot = aot_impl_signature(spec, TensorDesc, KernelLaunchParams, SymIntExprs)
    assert f"({', '.join(aot.parameters)})" == f"({', '.join(tensors + attrs + ['outputs', 'tactic'])})"
    ret = typing.get_args(aot.return_annotation)
    assert typing.get_origin(aot.return_annotation) is tuple and ret[2:] == (KernelLaunchParams, SymIntExprs)
    assert all(set(typing.get_args(r)) == {str, bytes} for r in ret[:2])
    tune = autotune_signature(spec, TensorDesc, AutoTuneCombination)
    assert list(tune.parameters) == tensors + attrs + ["outputs"]
    assert typing.get_args(tune.return_annotation) == (AutoTuneCombination,)


def test_generated_functions_bind_positional_and_keyword_calls_alike():
    spec = PLUGINS["MoePlan"]
    fn = with_signature(aot_impl_signature(spec, TensorDesc, KernelLaunchParams, SymIntExprs), "f", lambda **a: a)
    as_trt_calls = fn("counts", "valid", 2, 64, 8, ("offsets", "plan", "block_expert"), 0)  # get_launch_params
    assert as_trt_calls == fn(counts="counts", valid="valid", top_k=2, block_m=64, num_experts=8,
                              outputs=("offsets", "plan", "block_expert"), tactic=0)
    assert list(as_trt_calls) == ["counts", "valid", "top_k", "block_m", "num_experts", "outputs", "tactic"]
    assert inspect.signature(fn) == aot_impl_signature(spec, TensorDesc, KernelLaunchParams, SymIntExprs)
    with pytest.raises(TypeError):
        fn("counts", "valid", 2, 64, ("offsets",), 0)  # an attribute missing


def test_autotune_types_and_which_plugins_autotune():
    assert [name for name, spec in PLUGINS.items() if spec.tactics] == ["LongConv"]
    assert autotune_types(PLUGINS["LongConv"]) == "FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16"
    assert autotune_types(PLUGINS["MoePlan"]) == "INT32, INT32, INT32, INT32, INT32"
    with pytest.raises(ValueError, match="SsdChunkStates"):
        autotune_types(PLUGINS["SsdChunkStates"])  # a: the float type or float32


AOT_SCRIPT = r"""
import json, sys
import mahia.plugins_trt, mahia.plugins_trt.rtx
from mahia.plugins_trt import PLUGINS
from mahia.plugins_trt.aot import aot_payload
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"))
out = []
for name, shapes, dtypes, attrs, tactic in json.loads(sys.argv[1]):
    p = aot_payload(PLUGINS[name], shapes, dtypes, attrs, tactic, arch=90)
    out.append({"kernel": p.kernel_name, "ptx": p.ptx, "grid": p.grid, "block": p.block, "shared": p.shared_bytes,
                "args": [*p.inputs, *[n for n, _ in p.scalars], *p.outputs], "scalars": p.scalars})
print(json.dumps({"imported": imported, "payloads": out}), flush=True)
import mahia.plugins_trt.qdp
"""


def test_aot_payload_is_the_plugin_ready_ptx_and_no_tensorrt_is_needed_but_by_qdp():
    """One child process without TRITON_INTERPRET: importing the package (and rtx, aot) imports no TensorRT;
    the AOT payload, built as qdp.aot_impl builds it (Triton compiles for sm_90 without a GPU), is the plugin-ready
    PTX (.version 8.7, the entry declares exactly the plugin's arguments) with the formula's launch; importing
    mahia.plugins_trt.qdp without TensorRT fails naming the package."""
    pytest.importorskip("triton")
    cases = [["GateCombine", [[3, 37, 96, 3], [3, 37, 3]], ["float16", "float16"], {}, 0],
             ["LongConv", [[3, 32, 37], [32, 73]], ["bfloat16", "bfloat16"], {"causal": 0}, 2]]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", AOT_SCRIPT, json.dumps(cases)], env=env, capture_output=True,
                            text=True, timeout=300)
    report = json.loads(result.stdout.splitlines()[0]) if result.stdout else None
    assert report is not None, result.stderr[-3000:]
    assert report["imported"] == []
    if importlib.util.find_spec("tensorrt") is None:
        assert result.returncode == 1
        assert ("ImportError: mahia.plugins_trt.qdp needs TensorRT >= 10.9 (pip package `tensorrt`, module "
                "tensorrt.plugin)") in result.stderr, result.stderr[-2000:]
    else:  # a machine with TensorRT: the import registers every plugin
        assert result.returncode == 0, result.stderr[-2000:]
    gate, conv = report["payloads"]
    for payload in (gate, conv):
        assert re.search(r"^\.version 8\.7$", payload["ptx"], re.M) and ".target sm_90a" in payload["ptx"]
        declared = re.search(rf"\.entry {payload['kernel']}\((.*?)\)", payload["ptx"], re.S).group(1)
        assert declared.count(".param") == len(payload["args"])
        assert payload["block"] == [128, 1, 1] and payload["shared"] >= 0
    assert gate["kernel"] == "gate_combine_kernel_entry" and gate["grid"] == [28, 1, 1]
    assert gate["args"] == ["branches", "logits", "num_tokens", "dim", "out"]
    assert gate["scalars"] == [["num_tokens", 111], ["dim", 96]]
    assert conv["kernel"] == "long_conv_kernel_entry" and conv["grid"] == [32, 1, 1]  # tactic 2: K16-NT4-N32
    assert conv["scalars"][:4] == [["batch", 3], ["length", 37], ["filt_len", 73], ["filt_shift", 36]]
