#!/usr/bin/env bash
# The compression stage on a CUDA GPU: the built-in teacher trained, then block-wise distillation and fine-tuning, in
# one process (`pipeline compress --device cuda`) and under torchrun with NCCL (one process per GPU).
#   bash benchmarks/gpu_compress.sh DATA_DIR OUT_DIR      (DATA_DIR: Fashion-MNIST's IDX files)
# Prints the GPU, the versions, each step's wall time and peak RSS (/usr/bin/time -v where it exists), and leaves each
# step's compression.json / compression.md under OUT_DIR.
set -u
data=${1:?DATA_DIR}; out=${2:?OUT_DIR}; mkdir -p "$out"
py=${PYTHON:-python3}
export PIPELINE_CACHE=${PIPELINE_CACHE:-$out/cache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))"
"$py" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true
"$py" -c "import tensorrt as t; print('tensorrt', t.__version__)" 2>&1 | tail -1
timed() { local name=$1; shift; local start=$SECONDS
  if [ -x /usr/bin/time ]; then /usr/bin/time -v "$@" 2>"$out/$name.time"; else "$@"; fi; local rc=$?
  echo "== $name: rc $rc, $((SECONDS - start)) s wall$( [ -f "$out/$name.time" ] && grep -o 'Maximum resident set size (kbytes): [0-9]*' "$out/$name.time" | sed 's/.*: /, peak RSS kB /')"
  return $rc; }
timed compress-cuda "$py" -m pipeline compress --device cuda --data "$data" --target raspberry-pi-4 --out "$out/run"
find "$out/run" -name 'compression.json' -o -name 'compression.md' | while read -r f; do cp "$f" "$out/single-$(basename "$f")"; done
weights=$(find "$PIPELINE_CACHE" -name '*.pt' | head -1)
echo "teacher weights: $weights"
timed torchrun-nccl "$py" -m torch.distributed.run --standalone --nproc_per_node "$("$py" -c 'import torch; print(torch.cuda.device_count())')" \
  -m pipeline.compress.torchrun_main --weights "$weights" --out "$out/ddp" --device cuda --data "$data"
cat "$out/ddp/compression.json" 2>/dev/null | "$py" -c "import json,sys; r=json.load(sys.stdin); print({k: r.get(k) for k in ('world_size', 'compute', 'timings_s')})" || true
