"""The plain sbatch scripts: kept equal to what the submitit path submits, and train.sbatch really run.

The header checks compare against submitit's own rendering (`launch --dry-run --json`'s `sbatch` text, and
submission.sbatch_preview); the dev-cluster test submits `sbatch sbatch/train.sbatch RUN_DIR` with the
rehearsal recipe and the dev cluster's resources given on the command line, lets it hit its 2-minute limit,
and reads the ledger and checkpoints: it saved on the signal, requeued itself and the next incarnation resumed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import launch_args

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "sbatch" / "train.sbatch"
EVALUATE = REPO / "sbatch" / "evaluate.sbatch"
# Paths submitit derives from the run folder (an #SBATCH line cannot), and submitit's own accounting label.
NOT_COMPARED = {"output", "error", "wckey"}


def sbatch_options(text: str) -> dict[str, str | None]:
    """`#SBATCH --key=value` lines → {key: value}; a bare flag → None."""
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, sep, value = line.removeprefix("#SBATCH --").strip().partition("=")
            out[key] = value if sep else None
    return out


def setup_section(sbatch_text: str) -> list[str]:
    """The lines of submitit's script between `# setup` and `# command`."""
    lines = sbatch_text.splitlines()
    start, end = lines.index("# setup"), lines.index("# command")
    return [line for line in lines[start + 1 : end] if line.strip()]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_train_header_is_what_submitit_submits_for_the_published_cluster(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.launch", "--nodes", "4", "--dry-run", "--json"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    plan = json.loads(out.stdout)
    submitit = sbatch_options(plan["sbatch"])
    mine = sbatch_options(TRAIN.read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in NOT_COMPARED}  # noqa: E731
    assert strip(mine) == strip(submitit)
    # The ones the chain depends on, spelled out.
    assert mine["signal"] == "USR2@900" and "requeue" in mine and mine["open-mode"] == "append"
    assert mine["nodes"] == "4" and mine["gpus-per-node"] == "8" and mine["time"] == "1440"
    # submitit's setup for that run is submission.setup_lines, the function train.sbatch evaluates at run time;
    # it carries the cluster's env and every variable the chunk needs.
    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.jobs.train.submission import chunk_env, setup_lines

    run_dir = Path(plan["run_dir"])
    lines = setup_section(plan["sbatch"])
    assert lines == setup_lines(resolve("justrl-deepseek-1.5b", "a800-4x8"), run_dir)
    for key in chunk_env(resolve("justrl-deepseek-1.5b", "a800-4x8"), run_dir):
        assert any(line.startswith(f"export {key}=") for line in lines), key
    assert lines[0] == "trap '' TERM"
    script = TRAIN.read_text()
    # The script enters the run's code by the names run.yaml records (LEGACY for runs made before they were).
    assert '-m "$JUSTRL_ENTRY" "$RUN_DIR"' in script and 'entry["setup"]' in script and 'entry["load"]' in script
    from dataclasses import asdict

    from justrl_hpc.core.run_folder import LEGACY_ENTRY

    legacy = re.search(r"^LEGACY = (\{.*?\})$", script, re.M | re.S)
    assert legacy is not None and ast.literal_eval(legacy.group(1)) == asdict(LEGACY_ENTRY)
    assert "export SUBMITIT_EXECUTOR=slurm" in plan["sbatch"] and "export SUBMITIT_EXECUTOR=slurm" in script


def test_evaluate_header_is_what_the_evaluate_job_submits(tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.jobs.train.submission import slurm_parameters

    # justrl_hpc/jobs/evaluate/job.py submit(): the chunk's parameters on one node (exclusive as a chunk is: its
    # --mem=0 is all of the node's memory), its own name.
    params = slurm_parameters(resolve("justrl-deepseek-1.5b", "a800-4x8"), tmp_path, nodes=1)
    params["job_name"] = "justrl-eval"
    submitit = sbatch_options(_make_sbatch_string(command="true", folder=str(tmp_path), **params))
    mine = sbatch_options(EVALUATE.read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in NOT_COMPARED}  # noqa: E731
    assert strip(mine) == strip(submitit)
    assert "from justrl_hpc.jobs.evaluate.job import main" in EVALUATE.read_text()


@pytest.mark.parametrize("script", [TRAIN, EVALUATE], ids=["train", "evaluate"])
def test_scripts_parse_and_refuse_a_folder_that_is_not_a_run(script: Path, tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    out = subprocess.run(
        ["bash", str(script), str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: RUN_DIR:"), out.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- on the dev cluster


def ledger(run_dir: Path) -> list[dict]:
    path = run_dir / "ledger.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(what: str, check, timeout_s: float, job: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1.0)
    state = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s; job: {state.strip()[:400]}")


def job_fields(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    fields: dict[str, str] = {}
    for token in out.stdout.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def dev_overrides(header: dict[str, str | None], wanted: dict[str, str | None]) -> list[str]:
    """Command-line options that turn train.sbatch's header into what submitit submits for the dev cluster."""
    undo = {"exclusive": "--oversubscribe", "gpus-per-node": "--gpus-per-node=0", "mem": "--mem=0"}
    opts = []
    for key in sorted(set(header) | set(wanted)):
        if key in NOT_COMPARED:
            continue
        if key in wanted:
            if header.get(key, "") != wanted[key] or key not in header:
                opts.append(f"--{key}" if wanted[key] is None else f"--{key}={wanted[key]}")
        else:
            opts.append(undo[key])  # a KeyError here: a new header line this test does not know how to undo
    return opts


@pytest.mark.slurm
@pytest.mark.long  # ~4.5 minutes of Slurm's own limit timer: the fault suite's, to keep the test command short
@pytest.mark.timeout(540, func_only=True)
def test_train_sbatch_hits_its_limit_saves_requeues_and_resumes(devcluster, rehearsal_data, tmp_path):
    from justrl_hpc.core.ledger import parse_time as _seconds
    from justrl_hpc.core.run_folder import load
    from justrl_hpc.jobs.train.submission import sbatch_preview

    data = rehearsal_data
    run_dir = tmp_path / "plain"
    # total_training_steps is never reached: the test ends after the resumed chunk saves. 3-minute chunks: Slurm
    # signals up to a minute before its lead, and a 2-minute chunk on a slow machine ended before its first step.
    args = launch_args(data, run_dir, "--create-only", steps=400, time_limit=3)
    made = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert made.returncode == 0, made.stderr

    preview = sbatch_preview(load(run_dir), run_dir, 2)  # what submitit would submit for this very run
    wanted = sbatch_options(preview)
    options = dev_overrides(sbatch_options(TRAIN.read_text()), wanted)
    batch_log = run_dir / "logs" / "sbatch" / "batch-%j.out"
    batch_log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, JUSTRL_PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)  # the chunk must run from the run's code snapshot alone
    sub = subprocess.run(
        ["sbatch", "--parsable", *options, f"--output={batch_log}", str(TRAIN), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    try:
        fields = job_fields(job)
        assert fields["Partition"] == "dev" and fields["NumNodes"].split("-")[0] == "2", fields
        assert fields["TimeLimit"] == "00:03:00" and fields["Requeue"] == "1" and fields["CPUs/Task"] == "2"

        releaser: list[subprocess.Popen[bytes]] = []

        def resumed_and_saved() -> dict | None:
            # Slurm holds a requeued job ~120 s (BeginTime). The chunk's own releaser dies with the job where
            # cgroups track its processes (the dev cluster, as a site), so the login node's releaser does it,
            # the command the README gives a person who runs train.sbatch by hand.
            led = ledger(run_dir)
            if not releaser and any(e["event"] == "requeued" for e in led):
                releaser.append(subprocess.Popen([sys.executable, "-m", "justrl_hpc.jobs.train.release", job],
                                                 env=_env(), cwd=tmp_path))
            starts = [e for e in led if e["event"] == "trainer-started"]
            if len(starts) < 2:
                return None
            return next((e for e in led if e["event"] == "saved" and e["chunk"] == 2), None)

        saved2 = wait_until("chunk 2 resumed and saved", resumed_and_saved, 460, job)
        led = ledger(run_dir)
        ev = lambda name: [e for e in led if e["event"] == name]  # noqa: E731
        started = ev("started")
        gap = _seconds(started[1]["time"]) - _seconds(ev("requeued")[0]["time"])
        assert gap < 30, f"requeue gap {gap:.1f} s: the login node's releaser did not release the job"
        assert releaser[0].wait(timeout=30) == 0
        assert [(e["chunk"], e["restart"], e["job_id"]) for e in started[:2]] == [(1, 0, job), (2, 1, job)]
        stop = ev("stop-requested")[0]
        assert stop["chunk"] == 1 and stop["reason"] == "time-limit"
        exited = ev("trainer-exited")[0]
        assert exited["chunk"] == 1 and exited["reason"] == "stopped"
        assert exited["step"] == exited["last_saved"] > stop["step"]  # saved at the next step: nothing lost
        assert [e["step"] for e in ev("requeued")][:1] == [exited["last_saved"]]
        second = ev("trainer-started")[1]
        assert second["chunk"] == 2 and second["step"] == exited["last_saved"]
        assert saved2["step"] > second["step"]
        steps = [e["step"] for e in ev("step")]
        assert steps[: steps.index(exited["last_saved"]) + 1] == list(range(1, exited["last_saved"] + 1))
        from justrl_hpc.core import checkpoints

        good = checkpoints.verified_steps(run_dir / "checkpoints", 2)
        assert good and max(good) >= saved2["step"], good
        # The batch shell applied submitit's setup for this run, line for line, in both incarnations.
        text = Path(str(batch_log).replace("%j", job)).read_text()
        prefix = "justrl-sbatch: setup: "
        applied = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]
        expected = setup_section(preview)
        assert applied[: len(expected)] == expected and applied[len(expected) :][: len(expected)] == expected
        assert f"justrl-sbatch: job {job} restart 1:" in text
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and job_fields(job).get("JobState") in (
            "RUNNING",
            "PENDING",
            "COMPLETING",
            "REQUEUED",
        ):
            time.sleep(1.0)
