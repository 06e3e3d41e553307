#!/usr/bin/env bash
# Installs everything the tests need (apt packages, the venv) and runs them. The tests start the dev
# cluster (a real Slurm on this machine) themselves. Extra arguments go to pytest, after ours: a `-m` given
# there replaces the default, which leaves out the fault suite and the long runs (scripts/faults.sh runs those)
# and what is run by hand (`-m manual`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check justrl_hpc tests benchmarks
# The slowest tests are listed at the end so that a CI log shows where the time goes.
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -m "not fault and not long and not manual" "$@"
