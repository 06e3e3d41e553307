#!/usr/bin/env bash
# Does the GPU install still resolve as documented? pip's own resolver, against the package index, for
# `pip install ".[train,gpu]"` in a fresh Python 3.11 venv: nothing is installed (--dry-run --report), and the
# versions it would install are compared with justrl_hpc/core/gpu_stack.py (verl, vLLM, torch, torchvision,
# torchaudio, transformers). Needs the package index (not run by CI: the network is not CI's to depend on);
# ~2.5 min here. Exit 0 when every version matches; the report stays in $OUT (default /tmp/gpu-resolve).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-resolve}"
rm -rf "$OUT" && mkdir -p "$OUT"
python3.11 -m venv "$OUT/venv"
"$OUT/venv/bin/pip" install --quiet --dry-run --ignore-installed --report "$OUT/report.json" ".[train,gpu]"
python3.11 - "$OUT/report.json" <<'PY'
import json, sys
sys.path.insert(0, ".")
from justrl_hpc.core import gpu_stack

got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
want = {"verl": gpu_stack.VERL, "vllm": gpu_stack.VLLM, "torch": gpu_stack.TORCH,
        "transformers": gpu_stack.TRANSFORMERS, "torchvision": gpu_stack.TORCHVISION,
        "torchaudio": gpu_stack.TORCHAUDIO}
bad = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
for k, v in want.items():
    print(f"{k:<13} {got.get(k) or 'absent':<10} {'ok' if k not in bad else 'expected ' + v}")
print(f"{len(got)} packages would be installed; flash-attn is its own step (docs/gpu-install.md)")
sys.exit(1 if bad else 0)
PY
