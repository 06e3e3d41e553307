#!/usr/bin/env bash
# The chaos soak (justrl_hpc/dev/soak): a rehearsal on the dev cluster cut into ≥ C chunks (default 16) under a
# seeded schedule of faults, with the monitor daemon and a local webhook; judged from the run folder. The last
# stdout line is one JSON verdict; exit 0 only when it passed. About 2–3 minutes per chunk on 2 cores.
#   bash scripts/soak.sh [--seed S] [--chunks C] [--time-limit MINUTES] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
exec .venv/bin/python -m justrl_hpc.dev.soak "$@"
