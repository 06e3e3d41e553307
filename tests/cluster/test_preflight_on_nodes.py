"""The preflight on the dev cluster's real Slurm: every node reports, a planted failure ends the chunk before
Ray with the node and the check named, and the resubmission hint's --exclude reaches Slurm."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import REPO, events, launch_args

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID")}
    return dict(env, PYTHONPATH=str(REPO))


@pytest.mark.timeout(600)
def test_a_module_that_does_not_import_on_the_nodes_ends_the_chunk_before_ray(devcluster, rehearsal_data, tmp_path):
    run_dir = tmp_path / "broken-stack"
    made = subprocess.run(launch_args(rehearsal_data, run_dir, "--create-only", steps=4), capture_output=True,
                          text=True, timeout=120, env=_env())
    assert made.returncode == 0, made.stderr
    # The chunks import the run's code snapshot first: a broken module there is a broken install on the nodes.
    planted = run_dir / "code" / "transformers"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise ImportError('planted: a broken install')\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"],
                         capture_output=True, text=True, timeout=400, env=_env())
    took = time.monotonic() - t0
    assert out.returncode == 1, out.stdout + out.stderr
    checks = events(run_dir, "preflight")
    assert len({e["node"] for e in checks}) == 2 and not any(e["ok"] for e in checks)
    assert all(e["failed"][0].startswith("imports: cannot import transformers (ImportError: planted") for e in checks)
    (failed,) = events(run_dir, "failed")
    nodes = ",".join(sorted(e["node"] for e in checks))
    # Every node failed it: the install, not a node; the hint is to fix it, not to leave every node out.
    assert failed["reason"].startswith(f"preflight failed on every node ({nodes}): imports: cannot import "
                                       "transformers")
    assert failed["reason"].endswith(f"fix it, then resubmit: python -m justrl_hpc.launch --resume {run_dir}")
    assert not events(run_dir, "ray-ready") and not events(run_dir, "trainer-started")
    assert took < 180, f"the chunk took {took:.0f} s to end after a failed preflight"  # not Ray's 90 s wait + more
    assert "preflight failed on every node" in out.stdout
