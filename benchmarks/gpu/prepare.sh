#!/usr/bin/env bash
# Here (no GPU), before a session's device call: what benchmarks/gpu/check.sh needs on the lent GPU machine, in
# .gpu/ (kept out of git by .git/info/exclude), within the 64 MiB a call may carry.
#
#   bash benchmarks/gpu/prepare.sh
#   then, with the device tool: run(command="bash benchmarks/gpu/check.sh", carry=[".gpu"], timeout_s=570)
#
# The machine's image has torch, peft, onnxruntime, pandas, matplotlib, psutil (/work/.library/device/KINDS.md) but
# older transformers and accelerate and no datasets or evaluate: those travel as wheels for its Python 3.12,
# at this checkout's versions. The embedded encoder's weights (91 MB in fp32) travel as fp16 and are widened back
# there, so GPU accuracies compare within one such call, not with CPU figures. The data travels too: the
# shared sets (../shared/data) stay behind a call.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
DATA=${XFER_NLP_DATA_DIR:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
for name in transformers huggingface_hub httpx2 httpcore2 truststore datasets dill multiprocess evaluate accelerate; do
  version=$($PY -c "import importlib.metadata as m; print(m.version('$name'))")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "$name==$version"
done
$PY benchmarks/gpu/encoder_pack.py pack .gpu/encoder.tar.xz
# sst2 ships inside the package (check.sh copies it there); predict.py's long reviews are polarity2k's test split.
mkdir -p .gpu/data/polarity2k && cp "$DATA/polarity2k/test.jsonl" .gpu/data/polarity2k/
# What a call sends: the tracked files, untracked ones git does not ignore, and the carried .gpu/.
total=$( (git ls-files -z --cached --others --exclude-standard; find .gpu -type f -print0) | du -cb --files0-from=- \
        | tail -1 | cut -f1)
echo "a call would carry $((total / 1024 / 1024)) MiB of at most 64"
[ "$total" -lt $((64 * 1024 * 1024)) ] || { echo "too much for one device call" >&2; exit 1; }
