#!/usr/bin/env bash
# Installs justrl-hpc on a fresh Debian 12 machine: Slurm + munge + tmux (+ faketime, for the clock-skew
# fault test) from Debian, a venv with the CPU build of torch, verl and the suite. Safe to run again (it
# only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v tmux >/dev/null \
  || ! command -v faketime >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge tmux faketime >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first and pinned: 2.13.0 is the local CPU build; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[train,dev]" 2>&1 | grep -v "^WARNING: Location" || true
# The first thing proved: verl's legacy trainer imports, and verl loads the CPU backend by its plugin point when
# asked as a rehearsal's chunks ask (JUSTRL_VERL_CPU=1, justrl_hpc/jobs/train/submission.py chunk_env).
JUSTRL_VERL_CPU=1 .venv/bin/python -W ignore -c "
import verl.trainer.main_ppo, verl.trainer.main_ppo_v0, justrl_hpc, torch, submitit
from verl.plugin.platform import PlatformRegistry
from verl.workers.rollout.replica import RolloutReplicaRegistry
assert PlatformRegistry.get('cpu') and RolloutReplicaRegistry.get('hf-cpu'), 'the verl CPU backend did not load'
print('installed: justrl-hpc', justrl_hpc.__version__, '| verl', verl.__version__, '| torch', torch.__version__,
      '| backend cpu (verl plugin, with JUSTRL_VERL_CPU=1)')"
