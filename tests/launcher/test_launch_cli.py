"""`python -m justrl_hpc.launch`: the plan, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from justrl_hpc.core.recipe import HYPERPARAMETERS, fmt

REPO = Path(__file__).resolve().parents[2]


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "justrl_hpc.launch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dry_run_json_carries_every_published_value(tmp_path):
    out = launch("--nodes", "4", "--dry-run", "--json", cwd=tmp_path)
    plan = json.loads(out.stdout)
    assert out.returncode == 1  # printed, but no data has been prepared in this empty folder
    assert not plan["ready"] and any(not c["ok"] and "train_files" in c["name"] for c in plan["checks"])
    for key, spec in HYPERPARAMETERS.items():
        assert f"{key}={fmt(spec.published)}" in plan["verl_overrides"], key
    assert "trainer.total_training_steps=4380" in plan["verl_overrides"]
    assert plan["resources"]["nodes"] == 4 and plan["resources"]["gpus_per_node"] == 8
    assert plan["plan"]["chunks"] >= 15 and 10_000 < plan["plan"]["gpu_hours"] < 14_000
    assert plan["run_dir"] == str(tmp_path / "runs" / "justrl-deepseek-1.5b")
    assert "#SBATCH --signal=USR2@900" in plan["sbatch"] and "#SBATCH --requeue" in plan["sbatch"]
    assert "#SBATCH --gpus-per-node=8" in plan["sbatch"] and "#SBATCH --open-mode=append" in plan["sbatch"]
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def test_nemotron_has_3440_steps(tmp_path):
    plan = json.loads(launch("--recipe", "justrl-nemotron-1.5b", "--dry-run", "--json", cwd=tmp_path).stdout)
    assert "trainer.total_training_steps=3440" in plan["verl_overrides"]


def test_dry_run_text_is_for_people(tmp_path):
    out = launch("--nodes", "4", "--dry-run", cwd=tmp_path)
    assert "4380 in ~" in out.stdout and "GPU-hours" in out.stdout
    assert "python -m verl.trainer.main_ppo" in out.stdout
    assert "FAIL" in out.stdout and "prepare-data" in out.stdout


def test_dry_run_says_a_sigterm_preemption_cannot_save_and_what_to_ask_for(tmp_path):
    """a800-4x8 preempts as Slurm does by default, SIGTERM to every process of the step: no grace lets the chunk
    save (Ray's workers and vLLM's EngineCore exit on it), so the plan says so, names what to ask the site for,
    and no longer tells a person to raise a GraceTime that cannot help (tests/core/test_recipe.py: every case)."""
    out = launch("--nodes", "4", "--dry-run", "--set", "cluster.preempt_grace_s=400", cwd=tmp_path)
    warned = [line for line in out.stdout.splitlines() if "preempt" in line.lower() and line.startswith("warning")]
    assert len(warned) == 1 and "SIGTERM-only preemption can never save, whatever the grace" in warned[0]
    assert "cgroup" in warned[0] and "PreemptParameters=send_user_signal" in warned[0]
    assert "GraceTime of 369 s" in warned[0] and "save_freq = 50 steps" in warned[0]


BAD = [
    (["--nodes", "3"], "--nodes", "use --nodes 4"),
    (["--nodes", "0"], "--nodes", "positive"),
    (["--recipe", "justrl-llama"], "--recipe", "available: "),
    (["--cluster", "nowhere"], "--cluster", "available: "),
    (["--recipe", "missing/file.yaml"], "--recipe", "no such file"),
    (["--set", "recipe.total_training_steps"], "--set", "expected section.key=value"),
    (["--set", "total_training_steps=3"], "--set", "must start with recipe., cluster. or run."),
    (["--set", "recipe.total_training_steps=abc"], "recipe.total_training_steps", "must be an integer"),
    (["--set", "recipe.total_training_steps=0"], "recipe.total_training_steps", "must be ≥ 1"),
    (["--set", "recipe.total_steps=100"], "recipe.total_steps", "unknown setting; known: "),
    (["--set", "cluster.gpus_per_node=4"], "cluster.gpus_per_node", "FSDP shards"),
    (["--set", "cluster.time_limit_min=-5"], "cluster.time_limit_min", "must be ≥ 1"),
    (["--set", "run.keep_last=0"], "run.keep_last", "must be ≥ 1"),
    (
        ["--set", "recipe.hyperparameters.actor_rollout_ref.actor.clip_ratio_high=abc"],
        "recipe.hyperparameters.actor_rollout_ref.actor.clip_ratio_high",
        "must be a number",
    ),
    (
        ["--set", "recipe.hyperparameters.actor_rollout_ref.actor.grad_clip=1.0"],
        "recipe.hyperparameters.actor_rollout_ref.actor.grad_clip",
        "not a hyperparameter",
    ),
    (
        ["--set", "recipe.hyperparameters.trainer.save_freq=10"],
        "recipe.hyperparameters.trainer.save_freq",
        "set by the suite",
    ),
    (["--set", "recipe.trainer=megatron"], "recipe.trainer", "one of verl"),
    (["--cluster", "dev"], "--cluster", "has no GPUs"),
    (["--name", "my run!"], "run.name", "letters, digits"),
    (["--time-limit", "5"], "run.time_limit_min", "no time for one"),
    (["--json"], "--json", "goes with --dry-run"),
    (["--eval-every", "-1"], "--eval-every", "0 (off) or a number"),
    (["--eval-args", "--judge none"], "--eval-args", "goes with --eval-every"),
    (["--eval-every", "250", "--eval-args", "--step 10"], "--eval-args", "--step is set by the run"),
    (["--eval-every", "250", "--eval-args", "--bogus aime24"], "--eval-args", "not an option"),
    (["--eval-every", "250", "--eval-args", "--samples-scale -1"], "--eval-args", "--samples-scale"),
    (["--eval-every", "250", "--eval-args", "--benchmarks aime2"], "--eval-args", "unknown benchmark"),
    (["--eval-every", "250", "--eval-args", "--judge 'none"], "--eval-args", "cannot split"),
]


@pytest.mark.parametrize("args,field,fix", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_clear_line(tmp_path, args, field, fix):
    out = launch(*args, "--dry-run", cwd=tmp_path) if args != ["--json"] else launch(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: {field}:"), lines[0]
    assert fix in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_bad_yaml_file_names_its_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nhyperparameters: [unclosed\n")
    out = launch("--recipe", str(bad), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.startswith("error: --recipe:") and "line" in out.stderr and "not valid YAML" in out.stderr
    )


def test_help_is_fast_and_imports_nothing_heavy(tmp_path):
    code = (
        "import sys, runpy; sys.argv=['launch','--help'];\n"
        "try: runpy.run_module('justrl_hpc.launch', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy=[m for m in ('torch','verl','ray','submitit','transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_eval_every_is_in_the_plan_with_its_options_made_absolute(tmp_path):
    (tmp_path / "evalsets").mkdir()
    out = launch("--nodes", "4", "--dry-run", "--eval-every", "250", "--eval-args",
                 "--data evalsets --benchmarks aime24,aime25 --judge none", cwd=tmp_path)
    assert out.returncode in (0, 1) and not out.stderr, out.stderr  # 1: this machine has no model files
    line = next(x for x in out.stdout.splitlines() if x.startswith("eval "))
    assert line == (f"eval     every 250 steps: a one-node evaluate job per kept save, one at a time "
                    f"(--data {tmp_path / 'evalsets'} --benchmarks aime24,aime25 --judge none)")
    # What each evaluate job would refuse is found now, as the plan's checks (and a real launch refuses).
    assert "\nFAIL     eval data: --data: " in out.stdout and "aime24" in out.stdout.lower(), out.stdout
    assert "\nok       eval judge: none (the rules alone)" in out.stdout
    plan = json.loads(launch("--nodes", "4", "--dry-run", "--json", "--eval-every", "250", cwd=tmp_path).stdout)
    assert plan["eval"] == {"every": 250, "args": ["--data", str(tmp_path / "data" / "eval")]}  # the default, absolute
    assert json.loads(launch("--nodes", "4", "--dry-run", "--json", cwd=tmp_path).stdout)["eval"] is None
