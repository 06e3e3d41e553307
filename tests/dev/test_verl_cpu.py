"""The CPU backend for verl (justrl_hpc.dev.verl_cpu), loaded by verl's own plugin point, and verl's own
main_ppo run through it; plus the real recipes' overrides through verl's entry point and ray.init."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from justrl_hpc.core.recipe import CPU_BACKEND_ENV

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.verl]


def _py(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter, asked for the CPU backend only if `env` says so."""
    base = {k: v for k, v in os.environ.items() if k != CPU_BACKEND_ENV}
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                          timeout=180, env={**base, "PYTHONPATH": str(REPO), **env})


def test_verl_loads_the_backend_by_its_entry_point_in_a_fresh_process() -> None:
    out = _py(
        "import verl\n"
        "from verl.plugin.platform import get_platform\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "from verl.workers.rollout.base import get_rollout_class\n"
        "from verl.workers.rollout.replica import get_rollout_replica_class\n"
        "p = get_platform()\n"
        "print(p.device_name, p.ray_resource_name(), p.communication_backend_name())\n"
        "print(EngineRegistry.get_engine_cls('language_model', 'fsdp').__name__)\n"
        "print(get_rollout_class('hf-cpu').__name__, get_rollout_replica_class('hf-cpu').__name__)\n",
        **{CPU_BACKEND_ENV: "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["cpu GPU gloo", "FSDPEngineWithLMHead", "HFServerAdapter HFReplica"]


def test_the_backend_is_inert_unless_asked_even_without_cuda() -> None:
    """This machine has no CUDA, as a GPU node's CPU-only Ray actors (verl's TaskRunner, reward workers) have
    none: keyed on CUDA the backend registered there and gave them a CPU platform. Only JUSTRL_VERL_CPU=1 asks."""
    probe = ("import torch, verl\nfrom verl.plugin.platform import PlatformRegistry\n"
             "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
             "print(torch.cuda.is_available(), PlatformRegistry.get('cpu') is not None, "
             "'hf-cpu' in RolloutReplicaRegistry._registry)")
    from concurrent.futures import ThreadPoolExecutor

    asks = (None, "0", "", "true", "1")  # only "1" asks
    with ThreadPoolExecutor(2) as pool:  # five fresh interpreters importing torch and verl: two at a time
        outs = list(pool.map(lambda v: _py(probe) if v is None else _py(probe, **{CPU_BACKEND_ENV: v}), asks))
    for value, out in zip(asks, outs, strict=True):
        want = "False True True" if value == "1" else "False False False"
        assert out.returncode == 0 and out.stdout.strip() == want, (value, out.stderr[-2000:])


def test_a_cpu_recipes_chunks_ask_for_the_backend_and_a_gpu_recipes_do_not(tmp_path: Path) -> None:
    """The chunk's environment (exported by its batch script, inherited by the trainer and by the raylets whose
    workers verl's processes are) is what asks; a GPU run's chunk never does."""
    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.jobs.train.submission import chunk_env, setup_lines

    rehearsal = chunk_env(resolve("rehearsal", "dev"), tmp_path)
    assert rehearsal[CPU_BACKEND_ENV] == "1"
    assert f"export {CPU_BACKEND_ENV}=1" in setup_lines(resolve("rehearsal", "dev"), tmp_path)
    assert CPU_BACKEND_ENV not in chunk_env(resolve("justrl-deepseek-1.5b", "a800-4x8"), tmp_path)
    out = _py("import verl\nfrom verl.plugin.platform import get_platform\nprint(get_platform().device_name)",
              **{CPU_BACKEND_ENV: rehearsal[CPU_BACKEND_ENV]})
    assert out.stdout.strip() == "cpu", out.stderr[-2000:]


def test_sampler_greedy_top_k_top_p_and_log_probs() -> None:
    import torch

    from justrl_hpc.dev.verl_cpu.rollout import sample_next

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.0, 0.0]])
    tok, lp = sample_next(logits, 0.0, 1.0, -1)
    assert tok.tolist() == [0, 1]
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0])
    g = torch.Generator().manual_seed(0)
    for top_k, top_p in ((1, 1.0), (-1, 0.01)):
        tok, lp = sample_next(logits, 0.7, top_p, top_k, g)
        assert tok.tolist() == [0, 1], (top_k, top_p)
        # The log-prob is the one verl's actor computes for that token: logits / temperature, unfiltered.
        assert torch.allclose(lp, torch.log_softmax(logits / 0.7, -1).gather(-1, tok[:, None])[:, 0])
    draws = torch.stack([sample_next(logits, 1.0, 1.0, 2, g)[0] for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {0, 1}  # top-2 of row 0, both drawn


def test_tiny_model_folder_loads_with_transformers(rehearsal_data: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(rehearsal_data / "model")
    tok = AutoTokenizer.from_pretrained(rehearsal_data / "model")
    assert model.config.model_type == "qwen2" and tok.eos_token_id is not None
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@pytest.mark.slow
def test_verls_own_trainer_trained_and_the_rollout_got_its_weights(verl_run: Path) -> None:
    """The session's verl run: verl's TaskRunner, verl's metric names, verl's checkpoint files, FSDP2 shards of
    two ranks, and a rollout that samples with the trainer's weights (verl's own rollout-vs-trainer check)."""
    log = (verl_run / "logs" / "trainer.log").read_text()
    assert "(TaskRunner pid=" in log
    steps = re.findall(r"step:(\d+) - (.*)", log)
    assert [int(s) for s, _ in steps if "timing_s/step:" in _] == [1, 2]
    for _, line in steps:
        diff = float(re.search(r"training/rollout_probs_diff_max:([0-9.e+-]+)", line).group(1))
        assert diff < 1e-3, diff  # the server's log-probs are the trainer's: weights arrived every step
        assert "global_seqlen/mean:" in line and "actor/pg_loss:" in line
    actor = verl_run / "checkpoints" / "global_step_2" / "actor"
    names = sorted(p.name for p in actor.iterdir())
    assert "model_world_size_2_rank_1.pt" in names and "fsdp_config.json" in names and "huggingface" in names
    assert '"FSDP_version": 2' in (actor / "fsdp_config.json").read_text()


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("recipe", ["justrl-deepseek-1.5b", "justrl-nemotron-1.5b"])
def test_real_recipe_overrides_pass_ray_init_on_a_local_ray(recipe: str, rehearsal_data: Path, tmp_path: Path):
    """verl's own entry point with a real recipe's exact overrides and a chunk's deadline: Hydra composes them,
    verl validates them, ray.init accepts the runtime env (every env var a string), the TaskRunner starts with
    the deadline in its environment; the run then stops at verl's count of GPUs, the first GPU-only step. The
    data and model (per-run values the suite sets) are the rehearsal's, so nothing is downloaded."""
    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.core.recipe import ChunkContext, trainer_command

    data = rehearsal_data
    resolved = resolve(recipe, "a800-4x8", [f"recipe.model_path={data / 'model'}",
                                            f"recipe.train_files=[{data / 'train.parquet'}]",
                                            f"recipe.val_files=[{data / 'val.parquet'}]"])
    cmd = trainer_command(resolved, tmp_path, ChunkContext(first_chunk=True, deadline_epoch=1_900_000_000))
    cmd[0] = sys.executable
    # Without the CPU backend, as a GPU run's chunk: the real recipes never ask for it (submission.chunk_env).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", CPU_BACKEND_ENV)}
    env.update(PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=360, env=env, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert "must be of type Dict[str, str]" not in log
    assert "ray init kwargs:" in log and "'MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP': '1900000000'" in log
    assert "(TaskRunner pid=" in log, log[-3000:]
    assert out.returncode != 0
    assert re.search(r"Total available GPUs 0(\.0)? is less than total desired GPUs 32", log), log[-3000:]
