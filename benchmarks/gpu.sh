#!/usr/bin/env bash
# Run the device-capable benchmarks on a CUDA machine, side by side with nothing else running.
# Usage (repository root, on a machine with a CUDA torch): OUT=/some/dir bash benchmarks/gpu.sh
# Missing pure-Python dependencies may be supplied as wheels in .gpuwheels/ (offline machines).
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [ -d .gpuwheels ]; then python3 -m pip install -q --no-index --find-links .gpuwheels pydantic platformdirs; fi
export PYTHONPATH=$PWD/src
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } > "$OUT/device.txt" 2>&1
timeout "${SIGNALS_TIMEOUT:-150}" python3 benchmarks/signals.py --device cuda --n 500 --k 10 --repeat 3 --threads 8 \
  > "$OUT/signals_cuda.md" 2>&1
echo "signals rc=$?" >> "$OUT/device.txt"
timeout "${INVERSION_TIMEOUT:-240}" python3 benchmarks/inversion.py --device cuda --loop-features 256 \
  --json "$OUT/inversion_cuda.json" > "$OUT/inversion_cuda.md" 2>&1
echo "inversion rc=$?" >> "$OUT/device.txt"
timeout "${TRAINING_TIMEOUT:-150}" python3 benchmarks/training.py --device cuda --settings digits-quick,mnist-mlp \
  --threads 8 --repeat 2 > "$OUT/training_cuda.md" 2>&1
echo "training rc=$?" >> "$OUT/device.txt"
{ python3 -m fedleak.cli train digits-quick --device cuda --set fl.rounds=5 --out "$OUT/run-cuda" -q; \
  python3 -m fedleak.cli train digits-quick --device cpu --set fl.rounds=5 --out "$OUT/run-cpu" -q; \
  python3 -c "import sys, numpy as np; from fedleak.signals.loading import load_signals as L; \
a, b = L(sys.argv[1]), L(sys.argv[2]); \
print('max rel diff cos', float(np.nanmax(np.abs(a.cos - b.cos)) / np.nanmax(np.abs(b.cos))))" "$OUT/run-cuda" "$OUT/run-cpu"; \
} > "$OUT/train_cuda.txt" 2>&1
echo "train rc=$?" >> "$OUT/device.txt"
cat "$OUT"/*.txt "$OUT"/*.md
