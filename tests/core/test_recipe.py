"""The recipe → verl overrides, checked against verl's own Hydra config (composed on CPU)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.core.recipe import HYPERPARAMETERS, ChunkContext, fmt, overrides, timing_warnings

RUN = Path("/scratch/runs/justrl-deepseek-1.5b")


def compose(ov: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    spec = importlib.util.find_spec("verl")
    assert spec is not None and spec.origin
    cfgdir = os.path.join(os.path.dirname(spec.origin), "trainer", "config")
    with initialize_config_dir(config_dir=cfgdir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=ov)


@pytest.fixture(scope="module")
def deepseek():
    return resolve("justrl-deepseek-1.5b", "a800-4x8")


@pytest.fixture(scope="module")
def composed(deepseek):
    return compose(overrides(deepseek, RUN, ChunkContext(first_chunk=False, deadline_epoch=1_900_000_000)))


def test_every_published_value_resolves_in_verls_own_config(composed):
    from omegaconf import OmegaConf

    for key, spec in HYPERPARAMETERS.items():
        value = OmegaConf.select(composed, key, throw_on_missing=True)
        assert value == spec.published, f"{key}: verl composed {value!r}, published {spec.published!r}"
        if spec.published is not None:
            assert type(value) is type(spec.published), key


def test_suite_owned_values_reach_verl(composed, deepseek):
    from omegaconf import OmegaConf

    sel = lambda k: OmegaConf.select(composed, k)  # noqa: E731
    assert sel("trainer.total_training_steps") == 4380
    assert sel("trainer.nnodes") == 4 and sel("trainer.n_gpus_per_node") == 8
    assert sel("trainer.save_freq") == 50 and sel("trainer.test_freq") == 50
    assert sel("trainer.resume_mode") == "auto"
    assert sel("trainer.val_before_train") is False  # not the first chunk
    assert sel("trainer.experiment_name") == "justrl-deepseek-1.5b"  # no timestamp: resumes find checkpoints
    assert sel("trainer.default_local_dir") == str(RUN / "checkpoints")
    assert sel("trainer.max_actor_ckpt_to_keep") is None
    assert sel("trainer.use_v1") is False  # the legacy trainer honours the deadline
    assert list(sel("trainer.logger")) == ["console", "tensorboard"]
    assert sel("reward.custom_reward_function.path") == str(RUN / "code" / "justrl_hpc" / "jobs" / "train" / "in_worker" / "reward.py")
    assert sel("reward.custom_reward_function.name") == "compute_score"
    env = sel("ray_kwargs.ray_init.runtime_env.env_vars")
    assert env["TENSORBOARD_DIR"] == str(RUN / "tensorboard")
    # Strings, every one: Ray's runtime env refuses anything else at ray.init.
    assert env["MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"] == "1900000000"
    assert all(isinstance(v, str) for v in env.values()), dict(env)
    assert "PYTHONPATH" not in env  # it would replace the workers' PYTHONPATH, not extend it
    assert (
        sel("ray_kwargs.ray_init.runtime_env.worker_process_setup_hook") == "justrl_hpc.jobs.train.in_worker.deadline_hook.install"
    )
    assert sel("ray_kwargs.ray_init.num_cpus") is None  # attaching to the chunk's Ray cluster
    assert sel("actor_rollout_ref.model.path") == deepseek.recipe.model_path
    assert sel("data.filter_overlong_prompts_workers") == 24  # a quarter of the a800 nodes' 96 CPUs
    assert sel("data.filter_overlong_prompts") is True  # verl's own check stays on (the published value)


def test_first_chunk_validates_and_later_ones_do_not(deepseek):
    first = overrides(deepseek, RUN, ChunkContext(first_chunk=True))
    later = overrides(deepseek, RUN, ChunkContext(first_chunk=False))
    assert "trainer.val_before_train=True" in first
    assert "trainer.val_before_train=False" in later


def test_nemotron_differs_only_in_model_and_steps():
    a = resolve("justrl-deepseek-1.5b", "a800-4x8").recipe
    b = resolve("justrl-nemotron-1.5b", "a800-4x8").recipe
    assert b.total_training_steps == 3440 and a.total_training_steps == 4380
    assert a.hyperparameters == b.hyperparameters
    assert a.fingerprint() != b.fingerprint()


def test_a_renamed_key_fails_compose():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["actor_rollout_ref.actor.grad_clipping_that_does_not_exist=1.0"])


@pytest.mark.parametrize(
    "value,expected",
    [(True, "True"), (None, "null"), (1e-6, "1e-06"), ("a b", "'a b'"), (["x", "y"], "['x','y']"), (3, "3")],
)
def test_fmt_reads_back_as_the_same_type(value, expected):
    assert fmt(value) == expected


def _command_map(recipe: str, cluster: str) -> dict[str, str]:
    from justrl_hpc.core.recipe import trainer_command

    cmd = trainer_command(resolve(recipe, cluster), RUN, ChunkContext(first_chunk=True, deadline_epoch=1.9e9))
    assert cmd[:3] == ["python", "-m", "verl.trainer.main_ppo"], cmd[:3]
    pairs = [item.split("=", 1) for item in cmd[3:]]
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a key given twice"
    return dict(pairs)


# The rehearsal's sizes (fidelity table: DIFFERS) and the per-run values that follow from them.
REHEARSAL_SIZES = {
    "data.train_batch_size", "data.max_prompt_length", "data.max_response_length",
    "actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.model.use_remove_padding", "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.rollout.max_model_len", "actor_rollout_ref.rollout.val_kwargs.n",
    "actor_rollout_ref.model.path", "data.train_files", "data.val_files", "trainer.nnodes",
    "trainer.n_gpus_per_node", "trainer.total_training_steps", "trainer.save_freq", "trainer.test_freq",
    "trainer.experiment_name", "trainer.esi_redundant_time",
    # The nodes' CPUs (cluster.cpus_per_node), not the recipe: 1 on the dev cluster, 24 on the a800 one.
    "data.filter_overlong_prompts_workers",
}


@pytest.mark.parametrize("real", ["justrl-deepseek-1.5b", "justrl-nemotron-1.5b"])
def test_the_rehearsal_is_the_real_recipe_scaled_down_and_nothing_else(real):
    """Same trainer, same overrides and flags; only the named scale-down keys differ (recipe.SCALE_DOWN and
    the sizes above). A key added to or changed in either side without being named here fails."""
    from justrl_hpc.core.recipe import SCALE_DOWN

    ours, theirs = _command_map("rehearsal", "dev"), _command_map(real, "a800-4x8")
    added = set(ours) - set(theirs)
    assert added == set(SCALE_DOWN), sorted(added ^ set(SCALE_DOWN))
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    differ = {k for k in theirs if ours[k] != theirs[k]}
    assert differ <= REHEARSAL_SIZES, sorted(differ - REHEARSAL_SIZES)
    # The flags a chunk's behaviour rests on are the same values on both sides.
    for key in ("trainer.use_v1", "trainer.resume_mode", "trainer.logger", "trainer.val_before_train",
                "trainer.max_actor_ckpt_to_keep", "algorithm.adv_estimator", "reward.reward_manager.name",
                "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook",
                "+ray_kwargs.ray_init.runtime_env.env_vars.MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize(
    ("recipe", "cluster", "sets", "workers"),
    [
        ("justrl-deepseek-1.5b", "a800-4x8", [], 24),
        ("justrl-nemotron-1.5b", "a800-4x8", [], 24),
        ("justrl-deepseek-1.5b", "a800-4x8", ["cluster.cpus_per_node=64"], 16),
        ("justrl-deepseek-1.5b", "a800-4x8", ["cluster.cpus_per_node=3"], 1),
        ("rehearsal", "dev", [], 1),
    ],
)
def test_the_prompt_filter_gets_a_quarter_of_the_nodes_cpus(recipe, cluster, sets, workers):
    """verl's filter tokenizes every training row at a chunk's start; its process count follows the nodes'
    CPUs and leaves the recipe (its fingerprint, the resume guard) as it was."""
    resolved = resolve(recipe, cluster, sets)
    assert _command_map_of(resolved)["data.filter_overlong_prompts_workers"] == str(workers)
    assert resolved.recipe.fingerprint() == resolve(recipe, cluster).recipe.fingerprint()


def _command_map_of(resolved) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides(resolved, RUN))


def test_a_recipe_cannot_set_the_filter_workers_one_line_names_the_cluster_field():
    from justrl_hpc.core.errors import UserError

    with pytest.raises(UserError) as err:
        resolve("justrl-deepseek-1.5b", "a800-4x8", ["recipe.hyperparameters.data.filter_overlong_prompts_workers=8"])
    assert err.value.field == "recipe.hyperparameters.data.filter_overlong_prompts_workers"
    assert "cluster.cpus_per_node" in str(err.value) and "\n" not in str(err.value)


def test_more_filter_workers_keep_the_same_rows_in_the_same_order(tmp_path, monkeypatch):
    """verl's own RLHFDataset (filter_overlong_prompts=True) on a small parquet: 1 and 2 workers keep exactly the
    prompts within max_prompt_length, in order; why the count may change without changing the run."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from justrl_hpc.dev.toy.tiny_model import build_tokenizer

    # Short prompts are ~20 tokens with the chat template; long ones are hundreds (digits are one token each).
    contents = [f"What is {i}?" if i % 3 else f"Sum the digits of {'7' * 200}{i}." for i in range(24)]
    rows = [{"data_source": "t", "prompt": [{"role": "user", "content": c}], "ability": "math",
             "reward_model": {"ground_truth": "1", "style": "rule"}, "extra_info": {"index": i}}
            for i, c in enumerate(contents)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    tokenizer = build_tokenizer(contents[:4])
    # HF datasets' cache lives under the test's folder, and no run reuses another's filtered result.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_caching()
    try:
        kept = {}
        for workers in (1, 2):
            config = OmegaConf.create({"max_prompt_length": 64, "filter_overlong_prompts": True,
                                       "filter_overlong_prompts_workers": workers, "truncation": "error",
                                       "cache_dir": str(tmp_path / "verl")})
            dataset = RLHFDataset([str(path)], tokenizer, config)
            kept[workers] = [row["extra_info"]["index"] for row in dataset.dataframe]
    finally:
        datasets.enable_caching()
    assert kept[1] == kept[2] == [i for i in range(24) if i % 3], kept


def test_rehearsal_overrides_compose_too():
    compose(overrides(resolve("rehearsal", "dev"), RUN))


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["recipe.hyperparameters.actor_rollout_ref.rollout.name=vllm"],
         "recipe.hyperparameters.actor_rollout_ref.rollout.name"),
        (["recipe.scale_down.trainer.nope=1"], "recipe.scale_down.trainer.nope"),
        (["recipe.hyperparameters.actor_rollout_ref.rollout.name=hf-gpu"],
         "recipe.hyperparameters.actor_rollout_ref.rollout.name"),
        (["recipe.device=cuda"], "recipe.scale_down.trainer.device"),
        (["recipe.hyperparameters.data.filter_overlong_prompts_workers=2"],
         "recipe.hyperparameters.data.filter_overlong_prompts_workers"),
    ],
)
def test_bad_cpu_recipe_is_one_error_naming_the_field(sets, field):
    from justrl_hpc.core.errors import UserError

    with pytest.raises(UserError) as err:
        resolve("rehearsal", "dev", sets)
    assert err.value.field == field, (err.value.field, str(err.value))


def test_a_run_yaml_from_before_scale_down_still_loads_with_its_fingerprint(tmp_path):
    """run.yaml written before the imitation was replaced: a verl recipe's empty `trainer_extra` is the same
    recipe (same fingerprint, so `launch --resume` accepts it); an imitation run says why it cannot resume."""
    import yaml

    from justrl_hpc.core.config import Resolved
    from justrl_hpc.core.errors import UserError

    data = yaml.safe_load(yaml.safe_dump(resolve("justrl-deepseek-1.5b", "a800-4x8").to_dict()))
    old = {**data, "recipe": {k: v for k, v in data["recipe"].items() if k not in ("scale_down", "trackers")}
           | {"trainer_extra": {}}}
    loaded = Resolved.from_dict(old)
    assert loaded.recipe.fingerprint() == resolve("justrl-deepseek-1.5b", "a800-4x8").recipe.fingerprint()
    # The digest as it was computed before: the whole recipe but its description, trainer_extra included.
    import hashlib
    import json

    before = {k: v for k, v in old["recipe"].items() if k != "description"}
    blob = json.dumps(before, sort_keys=True, separators=(",", ":"), default=str)
    assert loaded.recipe.fingerprint() == hashlib.sha256(blob.encode()).hexdigest()[:16]
    imitation = {**old, "recipe": {**old["recipe"], "trainer": "rehearsal", "trainer_extra": {"rehearsal.seed": 1}}}
    with pytest.raises(UserError) as err:
        Resolved.from_dict(imitation)
    assert err.value.field == "recipe.trainer" and "start a new run" in str(err.value)



def test_wandb_as_an_extra_tracker_is_one_offline_run_across_chunks(tmp_path, monkeypatch):
    """recipe.trackers: [wandb] adds it to verl's logger list; the id, resume and offline mode reach verl's
    logging actor through Ray's runtime env (verl's wandb.init passes no id), and verl's own config accepts it."""
    import dataclasses

    from justrl_hpc.core.config import Resolved
    from justrl_hpc.core.errors import UserError
    from justrl_hpc.core.recipe import tracker_run_id

    base = resolve("justrl-deepseek-1.5b", "a800-4x8")
    resolved = Resolved(dataclasses.replace(base.recipe, trackers=["wandb"]), base.cluster, base.run)
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-never-on-a-command-line")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "runs" / "justrl-deepseek-1.5b"
    first = overrides(resolved, run_dir, ChunkContext(first_chunk=True))
    later = overrides(resolved, run_dir, ChunkContext(first_chunk=False, deadline_epoch=2e9))
    env = "+ray_kwargs.ray_init.runtime_env.env_vars."
    want = {f"{env}WANDB_RUN_ID": tracker_run_id("justrl-deepseek-1.5b", run_dir), f"{env}WANDB_RESUME": "allow",
            f"{env}WANDB_MODE": "offline", f"{env}WANDB_DIR": str(run_dir.resolve())}
    for ov in (first, later):
        got = dict(o.split("=", 1) for o in ov)
        assert {k: got[k].strip("'") for k in want} == want  # the same run in every chunk
        assert got["trainer.logger"] == "['console','tensorboard','wandb']"
        assert not any("secret-key" in o or "API_KEY" in o for o in ov)
    assert tracker_run_id("justrl-deepseek-1.5b", run_dir) != tracker_run_id("justrl-deepseek-1.5b", tmp_path / "b")
    assert len(tracker_run_id("x" * 200, run_dir)) <= 64
    cfg = compose(first)
    assert list(cfg.trainer.logger) == ["console", "tensorboard", "wandb"]
    monkeypatch.setenv("WANDB_MODE", "online")  # a site whose nodes reach W&B says so in the environment
    assert f"{env}WANDB_MODE='online'" in overrides(resolved, run_dir)
    # Adding a tracker mid-run changes no training: the fingerprint (the resume guard) is the same.
    assert resolved.recipe.fingerprint() == base.recipe.fingerprint()
    # Without it, nothing of W&B reaches verl.
    assert not any("WANDB" in o for o in overrides(base, run_dir))
    from justrl_hpc.core.config import RecipeConfig
    from justrl_hpc.core.settings import build

    with pytest.raises(UserError) as bad:
        build(RecipeConfig, {"name": "x", "trackers": ["wandb", "mlflow"]}, "recipe")
    assert str(bad.value).startswith("recipe.trackers[1]: must be one of wandb")


@pytest.mark.parametrize(
    ("preemption", "grace_s", "says"),
    [
        # Slurm's default: SIGTERM to every process of the step. Ray's workers and vLLM's EngineCore exit on it,
        # so a longer grace changes nothing and the warning never asks for one alone.
        ("sigterm", 300, "a SIGTERM-only preemption can never save, whatever the grace"),
        ("sigterm", 3600, "a SIGTERM-only preemption can never save, whatever the grace"),
        # The site sends the job's USR2 first (PreemptParameters=send_user_signal): the grace must cover a step
        # (296 s), a 21 GB save (~63 s) and the stop (10 s).
        ("signal", 300, "preemption grace 300 s is shorter than a step + a save + the stop (~369 s)"),
        ("signal", 369, None),
        ("none", 0, None),
    ],
)
def test_preemption_warning_says_what_can_save_and_what_to_ask_the_site_for(preemption, grace_s, says):
    resolved = resolve("justrl-deepseek-1.5b", "a800-4x8",
                       [f"cluster.preemption={preemption}", f"cluster.preempt_grace_s={grace_s}"])
    warned = [w for w in timing_warnings(resolved) if "preemption" in w]
    if says is None:
        assert warned == []
        return
    assert len(warned) == 1 and warned[0].startswith(says), warned
    assert "save_freq = 50 steps (~4.1 h of 32 GPUs)" in warned[0]
    if preemption == "sigterm":
        assert "cgroup" in warned[0] and "Ray's workers and vLLM's EngineCore" in warned[0]
        assert "PreemptParameters=send_user_signal" in warned[0] and "PreemptMode=REQUEUE" in warned[0]
        assert "GraceTime of 369 s or more" in warned[0] and "cluster.preemption: signal" in warned[0]
        assert "raise cluster.preempt_grace_s" not in warned[0]  # the old advice, which no grace could fulfil
