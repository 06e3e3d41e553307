#!/usr/bin/env bash
# The fault-injection suite on the dev cluster (about 40 minutes on 2 cores): trainer kill -9 at random points
# and mid-save, a node lost mid-chunk, SIGTERM-only preemption, preemption during Ray bring-up, an outside
# requeue, the checkpoint disk filling up, a limit signal during teardown, a trainer that crashes at start,
# orphans of a killed incarnation on the nodes; and the long runs (tests marked long: rehearse with its daemon,
# the daemon as a Slurm job chain across its time limits). Installs what is missing first.
# JUSTRL_FAULT_SEEDS=1,2,3 repeats the random ones with more seeds; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/test.sh -m "(fault or long) and not manual" "$@"
