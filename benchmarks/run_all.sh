#!/usr/bin/env bash
# Runs every benchmark and appends the results, with the machine and date, to BENCHMARKS.md.
#   bash benchmarks/run_all.sh            (about 15 minutes; starts the dev cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
out=$(mktemp)
{
  echo
  echo "## $(date -u +%Y-%m-%d) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo
  echo "### CLI (\`$PY benchmarks/bench_cli.py\`)"
  echo
  $PY benchmarks/bench_cli.py
  echo
  echo "### Chunk lifecycle on the dev cluster (\`$PY benchmarks/bench_lifecycle.py\`)"
  echo
  $PY benchmarks/bench_lifecycle.py
  echo
  echo "### TensorBoard ingest (\`$PY benchmarks/bench_tbreader.py\`)"
  echo
  $PY benchmarks/bench_tbreader.py
  echo
  echo "### Monitor daemon, 32 replayed GPUs at 1 Hz (\`$PY benchmarks/bench_daemon.py\`)"
  echo
  $PY benchmarks/bench_daemon.py
  echo
  echo "Steady state as deployed: the default 30 s cycle over the GPU rules' full 30-minute window"
  echo "(\`$PY benchmarks/bench_daemon.py --interval 30 --seconds 150 --history-s 1800\`)"
  echo
  $PY benchmarks/bench_daemon.py --interval 30 --seconds 150 --history-s 1800
  echo
  echo "### Node agent and GPU rules (\`$PY benchmarks/bench_agent.py\`)"
  echo
  $PY benchmarks/bench_agent.py
} | tee "$out"
cat "$out" >> BENCHMARKS.md
rm -f "$out"
