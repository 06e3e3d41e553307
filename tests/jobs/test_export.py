"""Export: a real rehearsal checkpoint → verl's own model merger → an HF folder that transformers loads, with
weights equal to the shards; torn and corrupted shards refused; bad CLI input is one `error:` line.

The run folder is the session's verl run (`verl_run` in conftest: made with `launch --create-only`, then verl's
own main_ppo trained two steps in it, saving both), copied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORLD = 2  # the rehearsal recipe: 2 nodes x 1 rank


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID", "JUSTRL_CONTROL_DIR")
    }
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="module")
def trained_run(verl_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's verl run (checkpoints at steps 1 and 2, written by verl's checkpoint manager):
    these tests damage and export into it."""
    import shutil

    run_dir = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(verl_run, run_dir, symlinks=True)
    return run_dir


def _shard_weights(actor: Path) -> dict:
    """The trained weights straight from verl's rank files: each FSDP2 DTensor's local shards (Shard(0) on
    the 1-D mesh) concatenated in rank order; a second code path beside the merger and export.reassemble."""
    import torch

    shards = [
        torch.load(actor / f"model_world_size_{WORLD}_rank_{r}.pt", weights_only=False) for r in range(WORLD)
    ]
    return {k: torch.cat([sd[k].to_local() for sd in shards], dim=0) for k in shards[0]}


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_export_newest_loads_with_transformers_and_equals_the_shards(trained_run: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from justrl_hpc.jobs.export.job import export_checkpoint

    hf = export_checkpoint(trained_run, None, None)
    assert hf == trained_run / "export" / "global_step_2" / "hf"
    actor = trained_run / "checkpoints" / "global_step_2" / "actor"
    want = _shard_weights(actor)
    model = AutoModelForCausalLM.from_pretrained(hf, device_map="cpu")
    got = model.state_dict()
    assert set(got) == set(want)
    stored = load_file(hf / "model.safetensors")
    for key, value in want.items():
        assert got[key].dtype == torch.bfloat16, key  # verl's merger writes bfloat16
        assert torch.equal(got[key], value.to(torch.bfloat16)), key
        assert torch.equal(stored[key], value.to(torch.bfloat16)), key
    # The export is of step 2, not step 1: the two checkpoints differ.
    older = _shard_weights(trained_run / "checkpoints" / "global_step_1" / "actor")
    assert any(not torch.equal(older[k], want[k]) for k in want)
    tok = AutoTokenizer.from_pretrained(hf)
    assert (
        tok.eos_token == "<|im_end|>"
        and tok.get_vocab() == AutoTokenizer.from_pretrained(actor / "huggingface").get_vocab()
    )

    manifest = json.loads((hf / "export.json").read_text())
    src, ver = manifest["source"], manifest["verification"]
    assert src["step"] == 2 and src["world_size"] == WORLD and len(src["fingerprint"]) == 16
    assert (
        src["sizes"][f"model_world_size_{WORLD}_rank_1.pt"]
        == (actor / f"model_world_size_{WORLD}_rank_1.pt").stat().st_size
    )
    assert ver["ok"] and ver["exact_after_cast"] and ver["tokenizer_ok"] and ver["forward_ok"]
    assert ver["tensors"] == len(want) and ver["parameters"] == sum(v.numel() for v in want.values())
    assert (
        ver["dtype"] == "bfloat16"
        and ver["source_dtypes"] == ["float32"]
        and 0 < ver["max_abs_cast_error"] < 0.1
    )
    assert manifest["files"]["model.safetensors"] == (hf / "model.safetensors").stat().st_size
    assert (trained_run / "logs" / "export-global_step_2.log").read_text().count("Saving model to") == 1
    assert not [p for p in hf.parent.iterdir() if p.name.startswith(".")], "no temporary folder left behind"

    # Again: the same verified export is recognised, not redone or overwritten.
    before = (hf / "model.safetensors").stat().st_mtime_ns
    assert export_checkpoint(trained_run, 2, None) == hf
    assert (hf / "model.safetensors").stat().st_mtime_ns == before


def test_cli_exports_a_chosen_step_to_a_chosen_folder(trained_run: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "justrl_hpc.jobs.export.job",
            "--run",
            str(trained_run),
            "--step",
            "1",
            "--out",
            str(tmp_path / "m1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "m1")
    assert "run verl-run step 1: exported" in out.stdout
    assert out.stderr.strip() == "", out.stderr  # the merger's chatter goes to the run's log
    manifest = json.loads((tmp_path / "m1" / "export.json").read_text())
    assert manifest["source"]["step"] == 1 and manifest["verification"]["ok"]


@pytest.fixture
def damaged_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the run (without its exports) whose step-2 checkpoint is about to be damaged."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def test_a_torn_shard_is_refused_and_newest_falls_back_to_the_last_verified(
    damaged_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from justrl_hpc.jobs.export.job import main

    shard = damaged_run / "checkpoints" / "global_step_2" / "actor" / f"model_world_size_{WORLD}_rank_1.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a write cut short
    (damaged_run / "checkpoints" / "global_step_2" / ".justrl_verified.json").unlink(missing_ok=True)
    before = _tree(damaged_run)
    assert main(["--run", str(damaged_run), "--step", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --step: checkpoint global_step_2 is not a verified")
    assert f"truncated actor/model_world_size_{WORLD}_rank_1.pt" in err[0] and "verified steps: [1]" in err[0]
    assert _tree(damaged_run) == before, "nothing written"
    # Without --step: the newest *verified* checkpoint, step 1.
    assert main(["--run", str(damaged_run)]) == 0
    assert (
        json.loads((damaged_run / "export" / "global_step_1" / "hf" / "export.json").read_text())["source"][
            "step"
        ]
        == 1
    )


def test_a_corrupted_shard_that_kept_its_size_is_refused(
    damaged_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from justrl_hpc.jobs.export.job import main

    shard = damaged_run / "checkpoints" / "global_step_2" / "actor" / f"model_world_size_{WORLD}_rank_0.pt"
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2  # inside a tensor's bytes: torch.load would load it without a word
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    shard.write_bytes(bytes(data))
    before = _tree(damaged_run)
    assert main(["--run", str(damaged_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: --step: checkpoint global_step_2 is corrupted:")
    assert f"model_world_size_{WORLD}_rank_0.pt fails its CRC check" in err[0]
    assert _tree(damaged_run) == before, "nothing written"


@pytest.mark.parametrize(
    ("args", "field", "fix"),
    [
        ([], "export", "--run"),
        (["--step", "abc"], "export", "expected a step number"),
        (["--step", "-1"], "export", "expected a step number"),
        (["--step", "7"], "--step", "saved steps: [1, 2]"),
        (["--out", "FILE"], "--out", "not a folder"),
        (["--out", "CKPT"], "--out", "inside or above the checkpoint"),
        (["--out", "FULL"], "--out", "choose an empty folder"),
    ],
    ids=[
        "no-run",
        "step-abc",
        "step-negative",
        "no-such-step",
        "out-is-a-file",
        "out-in-checkpoint",
        "out-full",
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(
    trained_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    field: str,
    fix: str,
) -> None:
    from justrl_hpc.jobs.export.job import main

    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "other.txt").write_text("someone else's")
    where = {
        "FILE": str(tmp_path / "FILE"),
        "FULL": str(tmp_path / "FULL"),
        "CKPT": str(trained_run / "checkpoints" / "global_step_2" / "actor" / "hf"),
    }
    argv = ([] if args == [] else ["--run", str(trained_run)]) + [where.get(a, a) for a in args]
    before_run, before_tmp = _tree(trained_run), _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:") and fix in err[0], err
    assert _tree(trained_run) == before_run and _tree(tmp_path) == before_tmp


def test_not_a_run_folder_from_the_command_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.jobs.export.job", "--run", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --run:") and "no run folder" in lines[0]
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, runpy; sys.argv=['export','--help'];\n"
        "try: runpy.run_module('justrl_hpc.jobs.export.job', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('HEAVY', [m for m in ('torch','verl','ray','transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout and "--step" in out.stdout, out.stdout + out.stderr
