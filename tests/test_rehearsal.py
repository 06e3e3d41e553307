"""The CPU rehearsal trainer, driven like verl: the suite's own override list, real subprocesses, real
TensorBoard event files, verl's own model merger, a real SIGKILL, a real local Ray cluster.

Every trainer run gets the exact list `justrl_hpc.recipe.overrides()` builds for the rehearsal recipe (only
the data/model paths point at a freshly prepared toy set), plus the `rehearsal.*`/trainer knobs a test needs.
Runs are short (a few seconds of training each) and wait on the trainer's own output, never on the clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from justrl_hpc.config import resolve
from justrl_hpc.recipe import HYPERPARAMETERS, ChunkContext, fmt, overrides

REPO = Path(__file__).resolve().parents[1]
TRACKER = "latest_checkpointed_iteration.txt"
DEADLINE_ENV = "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"
RUN_TIMEOUT_S = 300  # a hung trainer fails the test instead of hanging the suite; not a speed check

# The names the monitor and the chunk read (checked against verl 0.9.1's trainer and metric_utils).
VERL_METRICS = [
    "actor/entropy",
    "actor/pg_loss",
    "actor/pg_clipfrac",
    "actor/ppo_kl",
    "actor/pg_clipfrac_lower",
    "actor/grad_norm",
    "actor/lr",
    "critic/score/mean",
    "critic/score/max",
    "critic/score/min",
    "critic/rewards/mean",
    "critic/advantages/mean",
    "response_length/mean",
    "response_length/max",
    "response_length/min",
    "response_length/clip_ratio",
    "prompt_length/mean",
    "timing_s/step",
    "timing_s/gen",
    "timing_s/update_actor",
    "timing_s/save_checkpoint",
    "timing_s/testing",
    "perf/throughput",
    "training/global_step",
    "training/epoch",
    "val-core/toy_max3/acc/mean@4",
]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from justrl_hpc.rehearsal.prepare import prepare

    out = tmp_path_factory.mktemp("rehearsal-data")
    info = prepare(out, seed=0)
    assert info["train_rows"] > 0 and (out / "model" / "config.json").is_file()
    return out


def recipe_args(run_dir: Path, data: Path, first_chunk: bool = True, **extra: object) -> list[str]:
    """The suite's override list for the rehearsal recipe, data paths made absolute, knobs added/replaced."""
    given = overrides(resolve("rehearsal", "dev"), run_dir, ChunkContext(first_chunk=first_chunk))
    replace = {
        "data.train_files": f"['{data / 'train.parquet'}']",
        "data.val_files": f"['{data / 'val.parquet'}']",
        "actor_rollout_ref.model.path": str(data / "model"),
        # The chunk points this at the run's code snapshot; here, the checkout's own file.
        "reward.custom_reward_function.path": str(REPO / "justrl_hpc" / "reward.py"),
        "rehearsal.min_step_time_s": "0",
    }
    replace.update({k: str(v) for k, v in extra.items()})
    out, seen = [], set()
    for item in given:
        key, value = item.split("=", 1)
        seen.add(key)
        out.append(f"{key}={replace.get(key, value)}")
    out += [f"{k}={v}" for k, v in replace.items() if k not in seen]
    return out


def trainer_env(run_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", DEADLINE_ENV, "JUSTRL_CONTROL_DIR", "SLURM_JOB_ID")
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "TENSORBOARD_DIR": str(run_dir / "tensorboard"),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start(
    args: list[str], run_dir: Path, log_name: str = "trainer.log", **env: str
) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / log_name, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "justrl_hpc.rehearsal", *args],
        cwd=run_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=trainer_env(run_dir, **env),
    )
    log.close()
    return proc


def finish(proc: subprocess.Popen[bytes], run_dir: Path, log_name: str = "trainer.log") -> tuple[int, str]:
    rc = proc.wait(timeout=RUN_TIMEOUT_S)
    return rc, (run_dir / log_name).read_text(errors="replace")


def run(args: list[str], run_dir: Path, log_name: str = "trainer.log", **env: str) -> tuple[int, str]:
    return finish(start(args, run_dir, log_name, **env), run_dir, log_name)


def wait_for(predicate, proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll until predicate() holds; fail if the trainer exits first (or hangs for RUN_TIMEOUT_S)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not predicate():
        assert proc.poll() is None, f"trainer exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"trainer never got to {what}"
        time.sleep(0.1)


def sample_steps(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def console_metric(log: str, step: int, key: str) -> float:
    for line in log.splitlines():
        if line.startswith(f"step:{step} - ") and "timing_s/step:" in line:
            for part in line.split(" - "):
                if part.startswith(key + ":"):
                    return float(part.split(":", 1)[1])
    raise AssertionError(f"no {key} on the console for step {step}")


def scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def saved_steps(ckpt: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in ckpt.glob("global_step_*"))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ---------------------------------------------------------------- overrides (no torch, in-process)


def test_accepts_the_suites_override_list_and_every_hyperparameter(tmp_path: Path) -> None:
    from justrl_hpc.rehearsal.settings import NO_OP
    from justrl_hpc.rehearsal.settings import resolve as resolve_settings

    s = resolve_settings(recipe_args(tmp_path, tmp_path))
    assert (s.adv_estimator, s.use_kl_loss, s.entropy_coeff) == ("grpo", False, 0.0)
    assert (s.clip_ratio_low, s.clip_ratio_high, s.clip_ratio_c, s.loss_agg_mode) == (
        0.2,
        0.28,
        10.0,
        "token-mean",
    )
    assert s.world_size == 2 and s.resume_mode == "auto" and s.logger == ["console", "tensorboard"]
    assert s.min_step_time_s == 0.0 and s.seed == 1
    # JustRL's published values for every key, as the verl recipe passes them, parse too.
    published = resolve("justrl-deepseek-1.5b", "a800-4x8").recipe.hyperparameters
    args = recipe_args(tmp_path, tmp_path) + [f"{k}={fmt(v)}" for k, v in published.items()]
    s = resolve_settings(args)
    assert s.max_response_length == 15360 and s.rollout_n == 8 and s.lr == 1e-6
    for key in HYPERPARAMETERS:
        assert key in s.raw, key
    assert set(NO_OP) < set(HYPERPARAMETERS)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.use_kl_loss"),
        ("algorithm.use_kl_in_reward=True", "algorithm.use_kl_in_reward"),
        ("algorithm.adv_estimator=gae", "algorithm.adv_estimator"),
        ("trainer.logger=['console','wandb']", "trainer.logger"),
        ("data.train_batch_size=sixteen", "data.train_batch_size"),
        ("actor_rollout_ref.actor.ppo_mini_batch_size=5", "actor_rollout_ref.actor.ppo_mini_batch_size"),
        ("trainer.resume_mode=sometimes", "trainer.resume_mode"),
        ("rehearsal.min_step_time_s=-1", "rehearsal.min_step_time_s"),
        ("rehearsal.crash_during_save_phase=midway", "rehearsal.crash_during_save_phase"),
    ],
)
def test_bad_value_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, names: str
) -> None:
    from justrl_hpc.rehearsal.__main__ import main

    assert main(recipe_args(tmp_path, tmp_path) + [override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and names in err[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_override_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    args = recipe_args(tmp_path, tmp_path) + ["actor_rollout_ref.rollout.flux_capacitor=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.rehearsal", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=trainer_env(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: unknown override actor_rollout_ref.rollout.flux_capacitor")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- pure parts


def test_data_order_resumes_the_exact_sequence() -> None:
    from justrl_hpc.rehearsal.data import DataOrder

    whole = DataOrder(num_rows=50, batch_size=8, seed=3)  # 6 batches an epoch, 2 rows dropped
    seq = [whole.next_batch(total_epochs=3) for _ in range(18)]
    assert whole.next_batch(total_epochs=3) is None
    first = DataOrder(num_rows=50, batch_size=8, seed=3)
    for _ in range(8):
        first.next_batch(3)
    resumed = DataOrder(num_rows=50, batch_size=8, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.next_batch(3) for _ in range(10)] == seq[8:]
    epoch0 = [r for e, rows in seq if e == 0 for r in rows]
    assert len(epoch0) == len(set(epoch0)) == 48
    assert [rows for e, rows in seq if e == 1] != [rows for e, rows in seq if e == 0]


def test_fsdp_style_shards_round_trip_with_empty_ranks() -> None:
    import torch
    from torch.distributed.tensor import DTensor

    from justrl_hpc.rehearsal.checkpoint import gather_state, sharded_state

    state = {
        "w": torch.randn(10, 3),
        "b": torch.randn(3),
        "tiny": torch.randn(2, 4),
        "step": torch.tensor(7.0),
    }
    per_rank = sharded_state(state, world_size=4)
    assert [tuple(d["w"]._local_tensor.shape) for d in per_rank] == [(3, 3), (3, 3), (3, 3), (1, 3)]
    assert [tuple(d["tiny"]._local_tensor.shape) for d in per_rank] == [(1, 4), (1, 4), (0, 4), (0, 4)]
    assert isinstance(per_rank[2]["w"], DTensor) and per_rank[2]["w"].shape == (10, 3)
    assert not isinstance(per_rank[0]["step"], DTensor)
    back = gather_state(per_rank)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_checkpoint_writer_round_trip_retention_and_world_size_check(tmp_path: Path) -> None:
    import torch

    from justrl_hpc.rehearsal import checkpoint, grpo
    from justrl_hpc.rehearsal.settings import resolve as resolve_settings
    from justrl_hpc.tinymodel import build_tiny_model, build_tokenizer

    s = resolve_settings(recipe_args(tmp_path, tmp_path))
    tok = build_tokenizer()
    actor = grpo.build_actor(build_tiny_model(tok, seed=0), s)
    loss = actor.model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    actor.optimizer.step()  # optimizer moments exist, so they are saved and must come back
    actor.scheduler.step()
    writer = checkpoint.CheckpointWriter(tmp_path / "ckpt", world_size=3, max_to_keep=2)
    for step in (1, 2, 3):
        writer.save(step, actor, tok, {"epoch": 0, "batch_in_epoch": step})
    # verl's retention: only this process's saves, only their actor/ folder; data.pt stays.
    assert not (tmp_path / "ckpt" / "global_step_1" / "actor").exists()
    assert (tmp_path / "ckpt" / "global_step_1" / "data.pt").is_file()
    assert (tmp_path / "ckpt" / "global_step_2" / "actor").is_dir()

    fresh = grpo.build_actor(build_tiny_model(tok, seed=1), s)
    step, data_state = checkpoint.load(tmp_path / "ckpt" / "global_step_3", fresh, world_size=3)
    assert step == 3 and data_state == {"epoch": 0, "batch_in_epoch": 3}
    for (name, a), (_, b) in zip(
        actor.model.state_dict().items(), fresh.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    saved, loaded = actor.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for idx in saved:
        assert torch.equal(saved[idx]["exp_avg_sq"], loaded[idx]["exp_avg_sq"]), idx
    assert fresh.scheduler.state_dict()["last_epoch"] == actor.scheduler.state_dict()["last_epoch"] == 1
    with pytest.raises(RuntimeError, match="world size 4"):
        checkpoint.load(tmp_path / "ckpt" / "global_step_3", fresh, world_size=4)


def test_tiny_model_folder_loads_with_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from justrl_hpc.tinymodel import build_tokenizer, save_tiny_model

    tok = build_tokenizer(["What is 12 + 30?"])
    ids = tok.encode("So \\boxed{42}.", add_special_tokens=False)
    assert tok.decode(ids) == "So \\boxed{42}."  # byte-level: exact round trip for the strict reward
    save_tiny_model(tmp_path / "m", tokenizer=tok, seed=1)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(loaded)
    text = loaded.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """36 steps at W = 2 nodes × 2 ranks, checkpoints every 12, validation every 18 and before training."""
    run_dir = tmp_path_factory.mktemp("trained")
    args = recipe_args(
        run_dir,
        data_dir,
        **{
            "trainer.nnodes": 2,
            "trainer.n_gpus_per_node": 2,
            "trainer.total_training_steps": 36,
            "trainer.save_freq": 12,
            "trainer.test_freq": 18,
        },
    )
    rc, log = run(args, run_dir)
    assert rc == 0, log[-3000:]
    return run_dir, log


def test_direct_run_learns_with_verls_metric_names(trained: tuple[Path, str]) -> None:
    run_dir, log = trained
    assert (
        "rehearsal: start run=rehearsal" in log and "rehearsal: finished run=rehearsal job=- step=36" in log
    )
    tb = scalars(run_dir / "tensorboard")
    missing = [name for name in VERL_METRICS if name not in tb]
    assert not missing, missing
    score, entropy = tb["critic/score/mean"], tb["actor/entropy"]
    assert sorted(score) == list(range(1, 37))
    first, last = mean([score[s] for s in range(1, 6)]), mean([score[s] for s in range(32, 37)])
    assert last > first + 0.4, (first, last)  # the strict boxed reward rises
    assert mean([entropy[s] for s in range(32, 37)]) < 0.8 * mean([entropy[s] for s in range(1, 6)])
    acc = tb["val-core/toy_max3/acc/mean@4"]
    assert sorted(acc) == [0, 18, 36] and acc[36] > acc[0]
    assert tb["actor/lr"][1] < tb["actor/lr"][36]  # warmup (lr_warmup_steps=10)
    # The chunk follows the run by these console lines.
    assert "step:36 - " in log and "timing_s/step:" in log


def test_checkpoint_layout_is_verls_with_the_tracker_last(trained: tuple[Path, str]) -> None:
    run_dir, log = trained
    ckpt = run_dir / "checkpoints"
    assert saved_steps(ckpt) == [12, 24, 36]
    assert (ckpt / TRACKER).read_text() == "36"
    world = 4
    for step in (12, 24, 36):
        actor = ckpt / f"global_step_{step}" / "actor"
        for rank in range(world):
            for kind in ("model", "optim", "extra_state"):
                assert (actor / f"{kind}_world_size_{world}_rank_{rank}.pt").is_file(), (step, kind, rank)
        assert not list(actor.glob("*_world_size_4_rank_4.pt"))
        assert json.loads((actor / "fsdp_config.json").read_text()) == {
            "FSDP_version": 2,
            "world_size": world,
        }
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (actor / "huggingface" / name).is_file(), name
        assert (ckpt / f"global_step_{step}" / "data.pt").is_file()
    newest = max(p.stat().st_mtime_ns for p in (ckpt / "global_step_36").rglob("*") if p.is_file())
    assert (ckpt / TRACKER).stat().st_mtime_ns >= newest
    assert "rehearsal: saved step 36" in log


def test_verls_model_merger_turns_a_checkpoint_into_the_same_weights(
    trained: tuple[Path, str], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from justrl_hpc.rehearsal.checkpoint import gather_state

    actor = trained[0] / "checkpoints" / "global_step_36" / "actor"
    target = tmp_path / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "verl.model_merger",
            "merge",
            "--backend",
            "fsdp",
            "--local_dir",
            str(actor),
            "--target_dir",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=trainer_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(target).state_dict()
    shards = [torch.load(actor / f"model_world_size_4_rank_{r}.pt", weights_only=False) for r in range(4)]
    trained_weights = gather_state(shards)
    assert set(merged) == set(trained_weights)
    for key, value in trained_weights.items():
        assert torch.equal(merged[key], value.to(torch.bfloat16)), key  # verl's merger writes bfloat16
    assert AutoTokenizer.from_pretrained(target).eos_token == "<|im_end|>"


# ---------------------------------------------------------------- kill, resume, deadline


def test_sigkill_mid_run_then_resume_continues_the_sample_sequence(data_dir: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    knobs = {
        "trainer.total_training_steps": 9,
        "trainer.save_freq": 3,
        # Steps of ≥ 0.5 s: the kill lands a step or two after step 4, well before step 6 saves.
        "rehearsal.min_step_time_s": 0.5,
        "rehearsal.sample_log": samples,
    }
    first = start(recipe_args(tmp_path, data_dir, **knobs), tmp_path, "first.log")
    wait_for(lambda: any(r["step"] == 4 for r in sample_steps(samples)), first, "step 4")
    first.kill()  # SIGKILL: no handler, no cleanup, like a node loss
    assert first.wait(timeout=60) == -signal.SIGKILL
    killed_at = max(r["step"] for r in sample_steps(samples))
    ckpt = tmp_path / "checkpoints"
    tracked = int((ckpt / TRACKER).read_text())
    assert tracked == 3 and killed_at in (4, 5)

    rc, log = run(recipe_args(tmp_path, data_dir, first_chunk=False, **knobs), tmp_path, "second.log")
    assert rc == 0, log[-3000:]
    assert f"rehearsal: resume from step {tracked} " in log
    first_log = (tmp_path / "first.log").read_text()
    by_pid: dict[int, list[dict]] = {}
    for r in sample_steps(samples):
        by_pid.setdefault(r["pid"], []).append(r)
    (a, b) = by_pid.values()
    assert [r["step"] for r in a] == list(range(1, killed_at + 1))
    assert [r["step"] for r in b] == list(
        range(tracked + 1, 10)
    )  # no step twice after the resume, none skipped
    # The steps redone after the resume draw the same prompts, and (bit-exact restore) score the same.
    for ra, rb in zip(a[tracked:], b, strict=False):
        assert ra["rows"] == rb["rows"]
        assert console_metric(first_log, ra["step"], "critic/score/mean") == console_metric(
            log, rb["step"], "critic/score/mean"
        )
    lineage = [row for r in a[:tracked] + b for row in r["rows"]]
    assert len(lineage) == len(set(lineage)) == 9 * 16  # one epoch: every prompt at most once
    assert int((ckpt / TRACKER).read_text()) == 9


def test_kill_during_a_save_resumes_from_the_last_complete_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    knobs = {"trainer.total_training_steps": 5, "trainer.save_freq": 2}
    rc, log = run(
        recipe_args(tmp_path, data_dir, **{**knobs, "rehearsal.crash_during_save_at_step": 4}),
        tmp_path,
        "first.log",
    )
    assert rc == -signal.SIGKILL, log[-2000:]
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / TRACKER).read_text() == "2"  # the tracker is written last: step 4 never became "latest"
    assert (ckpt / "global_step_4" / "actor" / "model_world_size_2_rank_1.pt").is_file()
    assert not (ckpt / "global_step_4" / "data.pt").exists()
    rc, log = run(recipe_args(tmp_path, data_dir, first_chunk=False, **knobs), tmp_path, "second.log")
    assert rc == 0, log[-3000:]
    assert "rehearsal: resume from step 2 " in log and "step:3 - " in log
    assert (ckpt / TRACKER).read_text() == "5"


def test_deadline_env_near_forces_a_save_at_the_next_step(data_dir: Path, tmp_path: Path) -> None:
    # Within should_save_ckpt_esi's window (60 s + longest step + esi_redundant_time) from the start; verl
    # saves only once a step duration is known, i.e. from step 2, and keeps training afterwards.
    knobs = {"trainer.total_training_steps": 3, "trainer.save_freq": 100, "trainer.val_before_train": False}
    rc, log = run(
        recipe_args(tmp_path, data_dir, **knobs), tmp_path, **{DEADLINE_ENV: str(int(time.time()) + 58)}
    )
    assert rc == 0, log[-3000:]
    assert "Force saving checkpoint: ESI instance expiration approaching." in log
    assert "rehearsal: deadline save at step 2 " in log
    steps = saved_steps(tmp_path / "checkpoints")
    assert steps[0] == 2 and 1 not in steps and 3 in steps


def test_stop_file_saves_at_the_next_step_and_training_goes_on(data_dir: Path, tmp_path: Path) -> None:
    control, samples = tmp_path / "control", tmp_path / "samples.jsonl"
    control.mkdir()
    knobs = {
        "trainer.total_training_steps": 6,
        "trainer.save_freq": 100,
        "trainer.val_before_train": False,
        # Steps longer than the hook's 1 s poll: the stop is seen before the next step boundary.
        "rehearsal.min_step_time_s": 1.5,
        "rehearsal.sample_log": samples,
    }
    proc = start(recipe_args(tmp_path, data_dir, **knobs), tmp_path, JUSTRL_CONTROL_DIR=str(control))
    wait_for(lambda: any(r["step"] == 2 for r in sample_steps(samples)), proc, "step 2")
    (control / "stop").touch()
    asked_at = max(r["step"] for r in sample_steps(samples))
    rc, log = finish(proc, tmp_path)
    assert rc == 0, log[-3000:]
    forced = [s for s in saved_steps(tmp_path / "checkpoints") if s != 6]
    assert forced and asked_at < forced[0] <= asked_at + 2, (asked_at, forced)
    assert f"rehearsal: deadline save at step {forced[0]} " in log
    assert "rehearsal: finished run=rehearsal job=- step=6" in log


# ---------------------------------------------------------------- Ray across the allocation


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ray(args: list[str]) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "start", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _node_ports() -> list[str]:
    agent, agent_grpc, runtime_env, metrics, node_mgr, obj_mgr = _free_ports(6)
    return [
        "--num-cpus=2",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
    ]


@pytest.fixture
def ray_two_nodes():
    """A real Ray cluster of two nodes (two raylets on this host, as the dev cluster's fake nodes run them),
    with its own temp dir and ports; torn down by ending only the processes that name that temp dir."""
    import psutil

    temp = f"/tmp/rrt-{os.getpid()}"  # short: Ray's socket paths live under it
    gcs, client = _free_ports(2)
    try:
        _ray(
            [
                "--head",
                f"--port={gcs}",
                f"--temp-dir={temp}",
                "--include-dashboard=false",
                f"--ray-client-server-port={client}",
                *_node_ports(),
            ]
        )
        _ray([f"--address=127.0.0.1:{gcs}", *_node_ports()])
        yield f"127.0.0.1:{gcs}"
    finally:
        procs = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if temp in " ".join(p.info["cmdline"] or []):
                    procs.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for p in list(procs):
            try:
                procs += p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:
            p.kill()


def test_ray_rollout_workers_across_the_allocation(
    data_dir: Path, tmp_path: Path, ray_two_nodes: str
) -> None:
    env = {"RAY_ADDRESS": ray_two_nodes, "RAY_AUTH_MODE": "disabled"}
    knobs = {
        "trainer.total_training_steps": 3,
        "trainer.save_freq": 3,
        "trainer.val_before_train": False,
        "trainer.nnodes": 3,
    }
    # A run over 3 nodes refuses a Ray cluster that has 2: one clear line, nothing written.
    short = tmp_path / "short"
    rc, log = run(recipe_args(short, data_dir, **knobs), short, **env)
    assert rc == 1
    assert "does not have the 3 nodes the run needs: it sees 2 alive" in log
    assert not (short / "checkpoints").exists()
    # rehearsal.expect_ray_nodes relaxes the check (a single host whose Ray shows fewer nodes than the run
    # pretends to span): 3 ranks → 3 rollout workers spread round-robin over both nodes, weights pushed to
    # them every step.
    run_dir = tmp_path / "ok"
    rc, log = run(
        recipe_args(run_dir, data_dir, **knobs, **{"rehearsal.expect_ray_nodes": 2}), run_dir, **env
    )
    assert rc == 0, log[-3000:]
    assert "rollout=3 Ray workers on 2 node(s)" in log
    assert (run_dir / "checkpoints" / TRACKER).read_text() == "3"
    assert (
        len(list((run_dir / "checkpoints" / "global_step_3" / "actor").glob("model_world_size_3_rank_*.pt")))
        == 3
    )
    tb = scalars(run_dir / "tensorboard")
    assert sorted(tb["timing_s/update_weights"]) == [1, 2, 3]
