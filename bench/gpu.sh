#!/usr/bin/env bash
# The GPU measurements the issues ask for, as one prepared run for a lent device (15 minutes a
# session, one command of at most 10): reward (issue 3), transformers engine (issue 5), distillation
# MFU (issue 6) and the memory plan's estimate against measured peaks (issue 16) on Qwen2.5-0.5B-shaped
# random models in bf16, built from configs (the device has no network). Each bench gets its own time
# limit so one failure cannot eat the budget; every output goes to stdout and, when the device tool sets
# $OUT, to $OUT/gpu-bench.log.
# Not yet run: no device has been lent to this project's sessions so far.
#
#     bash bench/gpu.sh            # on the device, from the repository root, torch with CUDA installed
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-/tmp}/gpu-bench.log"
run() {  # run SECONDS CMD...: one bench under its own limit; its exit status is logged, not fatal
  local limit=$1; shift
  echo "=== $* (limit ${limit}s)"
  timeout "$limit" "$@"
  echo "=== exit $?"
}
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  python -c "import torch, transformers, trl; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'trl', trl.__version__)"
  # issue 3: batched reward vs one at a time; the paper's shapes (27x measured there by a plain version)
  run 150 python bench/reward.py --device cuda --dtype bfloat16 --models qwen0.5b-random \
    --prompt 256 --explanation 512 --solution 64 --batches 1,8,32 --items 32
  # issue 5: HFEngine with the static cache and compiled decoding vs plain generate, batch 32
  run 240 python bench/generate.py --device cuda --dtype bfloat16 --models qwen0.5b-random \
    --batch 32 --questions 32 --new-tokens 128 --cache static --compile
  # issue 6: packed vs padded distillation throughput and MFU
  run 150 python bench/distill.py --device cuda --dtype bfloat16 --model qwen0.5b-random \
    --rows 256 --max-length 4096 --batch 8 --repeats 1
  # issue 16: the memory plan (factory.memory) against torch.cuda.max_memory_allocated of one teacher SFT
  # step and one distill step (fused head, fused AdamW, fp32 weights, bf16 autocast; with and without
  # gradient checkpointing); prints estimate, measured and their ratio per case
  run 150 python bench/memory.py --device cuda --model qwen0.5b --batch 1 --length 4096 --bf16
} 2>&1 | tee "$log"
