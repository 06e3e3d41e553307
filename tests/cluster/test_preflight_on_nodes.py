"""The preflight on the dev cluster's real Slurm: every node reports, a planted failure ends the chunk before
Ray with the node and the check named, and the resubmission hint's --exclude reaches Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, events, launch_args, wait_for_event

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


def _recordings(folder: Path, bad: str) -> str:
    """One recorded A800 node per dev node (the NVML replay backend's `{node}`), `bad`'s GPU 2 with a failed row
    remap: hard evidence against that node alone."""
    lines = (REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl").read_text().splitlines()
    folder.mkdir()
    for node in ("n1", "n2", "n3", "n4"):
        first = json.loads(lines[1])
        if node == bad:
            first["gpus"][2]["DCGM_FI_DEV_ROW_REMAP_FAILURE"] = 1
        (folder / f"nvml-{node}.jsonl").write_text("\n".join([lines[0], json.dumps(first), *lines[2:]]) + "\n")
    return f"replay:{folder}/nvml-{{node}}.jsonl"


def _job_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return next((t.split("=", 1)[1] for t in out.split() if t.startswith(f"{name}=")), "")


@pytest.mark.timeout(600)
def test_a_node_with_a_failed_row_remap_is_left_out_and_the_run_finishes_on_the_others(devcluster, rehearsal_data,
                                                                                       tmp_path):
    """n1's GPU reports a failed row remap; a blocker holding n3 and n4's memory makes the first chunk take n1
    and n2. The chunk hands the run to a chained job that Slurm must not give n1 (the person's own --exclude
    kept), the blocker goes, and the run finishes on nodes without n1."""
    backend = _recordings(tmp_path / "nvml", bad="n1")
    blocker = subprocess.run(["sbatch", "--parsable", "-N2", "-w", "n3,n4", "--mem=16000", "--time=10",
                              "-o", "/dev/null", "--wrap", "sleep 600"], capture_output=True, text=True,
                             timeout=30, env=_env())
    assert blocker.returncode == 0, blocker.stderr
    run_dir = tmp_path / "badnode"
    proc = subprocess.Popen(launch_args(rehearsal_data, run_dir, "--wait", "--exclude", "n4", "--set",
                                        f"cluster.nvml_backend={backend}", steps=4),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        excluded = wait_for_event(run_dir, "excluded", timeout=240)
    finally:
        subprocess.run(["scancel", blocker.stdout.strip()], capture_output=True, timeout=30)
    out, _ = proc.communicate(timeout=480)
    assert proc.returncode == 0, out[-3000:]
    assert excluded["nodes"] == "n1" and excluded["exclude"] == "n1,n4", excluded
    assert excluded["evidence"].startswith("n1: gpu-remap: GPU 2: a row remap failed"), excluded
    (handed,) = [e for e in events(run_dir, "requeued") if e.get("reason") == "excluded"]
    (chained,) = events(run_dir, "chained")
    assert handed["chained_to"] == chained["job_id"] != excluded["job_id"] and chained["exclude"] == "n1,n4"
    assert _job_field(str(chained["job_id"]), "ExcNodeList") == "n[1,4]"  # Slurm's own spelling
    started = events(run_dir, "started")
    assert len(started) == 2 and len(events(run_dir, "excluded")) == 1, started
    assert started[0]["hosts"] == "n1,n2" and "n1" not in started[1]["hosts"].split(","), started
    assert events(run_dir, "finished") and len(events(run_dir, "submitted")) == 1
    assert "excluded" in out  # `launch --wait` prints the ledger's events


@pytest.mark.timeout(120)
def test_launch_wait_readmits_an_expired_exclusion_before_it_releases_a_held_job(devcluster, tmp_path):
    """A job held in Slurm's BeginTime with n1 and the person's n4 in its ExcNodeList; n1's exclusion has
    expired in the ledger: the release path takes n1 back (a `readmitted` event) and keeps n4."""
    from justrl_hpc.core.ledger import Ledger
    from justrl_hpc.launcher.submit import readmit

    held = subprocess.run(["sbatch", "--parsable", "-N1", "--begin=now+3600", "--exclude=n1,n4", "--time=1",
                           "-o", "/dev/null", "--wrap", "true"], capture_output=True, text=True, timeout=30,
                          env=_env())
    assert held.returncode == 0, held.stderr
    job = held.stdout.strip()
    try:
        ledger = Ledger(tmp_path)
        ledger.append("submitted", job_id=job, chunk=None, exclude="n4")
        ledger.append("excluded", job_id=job, chunk=1, nodes="n1", exclude="n1,n4", until=time.time() - 1,
                      evidence="n1: gpu-xid: GPU 0 XID 79")
        readmit(ledger, job)
        assert _job_field(job, "ExcNodeList") == "n4"
        (back,) = [e for e in ledger.read() if e["event"] == "readmitted"]
        assert (back["nodes"], back["exclude"]) == ("n1", "n4")
        readmit(ledger, job)  # nothing more to take back
        assert len([e for e in ledger.read() if e["event"] == "readmitted"]) == 1
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
