#!/usr/bin/env bash
# There, on a lent GPU machine, as one device call after `bash benchmarks/gpu/prepare.sh` here:
#
#   run(command="bash benchmarks/gpu/check.sh", carry=[".gpu"], timeout_s=570)
#
# Issue 23's GPU part and the FSDP config's first run on a GPU (the tests run it on CPU processes), in about 8
# minutes: each step has its own time limit, so a stuck one leaves the others' results, and every table and the
# log land in $OUT (.gpu/out when OUT is unset).
# Steps: what the machine is; fsdp.yaml on this one GPU (does the export equal what the run scored?); 2-process
# DDP where there are 2 GPUs; predict and ONNX against pipeline(); training against the Trainer with the step in
# CUDA graphs. Copy the tables into benchmarks/results/ and RESULTS.md with the machine and the date.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-.gpu/out}
SITE=/tmp/site
WORK=/tmp/xfer-gpu-check
mkdir -p "$OUT" "$WORK"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/check.log"; }
step() {  # step SECONDS COMMAND...: run it, its output into the log, its exit status in the log and on screen
  local limit=$1
  shift
  log "$*"
  timeout "$limit" "$@" >>"$OUT/check.log" 2>&1
  log "exit $?"
}

log "setup: the carried wheels and encoder, the data"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl \
  || exit 1
python3 benchmarks/gpu/encoder_pack.py unpack .gpu/encoder.tar.xz "$SITE" || exit 1
mkdir -p .gpu/data/sst2 && cp xfer_nlp/embedded/sst2/*.jsonl .gpu/data/sst2/
export PYTHONPATH="$PWD:$SITE" XFER_NLP_DATA_DIR="$PWD/.gpu/data" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
step 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 python3 -c "import torch, transformers, accelerate, datasets, peft, xfer_nlp; print('torch', torch.__version__,
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__,
'peft', peft.__version__, 'GPUs', torch.cuda.device_count())"
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")

# FSDP on one GPU: the path a multi-GPU launch takes (sharding, the kept weights, the export), at one process.
step 150 accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 1 recipes/sentiment.py \
  --mode finetune --max_train_samples 1000 --max_steps 60 --eval_steps 20 --output_dir "$WORK/fsdp" \
  --overwrite_output_dir
step 60 python3 - <<'PY'
import json
import torch
from transformers import pipeline
run = "/tmp/xfer-gpu-check/fsdp"
scored = json.load(open(f"{run}/results.json"))["metrics"]["validation"]["accuracy"]
texts, labels = zip(*((r["text"], r["label"]) for r in map(json.loads, open(".gpu/data/sst2/validation.jsonl"))))
clf = pipeline("text-classification", model=run, device=0 if torch.cuda.is_available() else -1)
names = json.load(open(f"{run}/config.json"))["id2label"]
got = [p["label"] for p in clf(list(texts), batch_size=64, truncation=True, max_length=128)]
accuracy = sum(g == names[str(y)] for g, y in zip(got, labels)) / len(labels)
# A GPU's kernels may differ by batch shape in the last bits, so one text's near-tie may flip; more is a bug.
print(f"FSDP export: pipeline() accuracy {accuracy:.4f}, the run scored {scored:.4f}:",
      "the same" if abs(accuracy - scored) <= 1.5 / len(labels) else "DIFFERENT: the export is not the kept model")
PY
# More processes than GPUs (the shipped configs say 8): one message from xfer_nlp, not a CUDA error per process.
step 90 accelerate launch --config_file recipes/accelerate_configs/ddp.yaml --num_processes $((GPUS + 1)) \
  recipes/sentiment.py --mode finetune --max_steps 1 --output_dir "$WORK/too-many"
if [ "$GPUS" -ge 2 ]; then
  step 150 accelerate launch --config_file recipes/accelerate_configs/ddp.yaml --num_processes 2 recipes/sentiment.py \
    --mode finetune --max_train_samples 2000 --num_train_epochs 1 --output_dir "$WORK/ddp" --overwrite_output_dir
fi

step 150 python3 benchmarks/predict.py --repeats 3 --out "$OUT/predict-gpu.md"  # fits its probe first
step 240 python3 benchmarks/speed.py --repeats 1 --contestants trainer-grouped,xfer_nlp,xfer_nlp+cudagraphs \
  --out "$OUT/speed-gpu.md"
cp "$WORK"/fsdp/train.log "$OUT/fsdp-train.log" 2>/dev/null
log "done"
