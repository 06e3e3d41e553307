#!/usr/bin/env bash
# The fault-injection suite on the dev cluster (48 minutes on 2 cores, 2026-12-08): trainer kill -9 mid-run
# and inside verl's saves, a hang's stacks, a node lost mid-chunk, an outside requeue then a SIGTERM-only
# preemption, a preemption during Ray bring-up then the limit's SIGTERM/SIGKILL, the checkpoint disk filling
# up, a trainer that crashes at start, orphans of a killed incarnation on the nodes; and the long runs (tests
# marked long: rehearse with its daemon, a limit signal during its last teardown). Installs what is missing.
# JUSTRL_FAULT_SEEDS=1,2,3 repeats the random ones with more seeds; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/test.sh -m "(fault or long) and not manual" "$@"
