"""A CPU backend for verl 0.9.1, loaded by verl's own plugin mechanism (entry point group `verl.plugins`).

verl imports this in every one of its processes (driver, TaskRunner, workers, rollout servers). It does
nothing unless asked by JUSTRL_VERL_CPU=1, which the suite sets wherever verl runs on the CPU backend: in a
chunk's environment when the recipe's device is cpu (jobs/train/submission.chunk_env; the raylets the chunk
starts pass it to every Ray worker), in scripts/install.sh's import check and in the tests that run verl
themselves. Not keyed on CUDA: a GPU node's CPU-only Ray actors (verl's TaskRunner, reward workers) see no CUDA
either, and a backend that registered there would hand them a platform the GPU workers do not have. So a GPU
node that has the suite installed trains exactly as plain verl does. Asked, it registers, through verl's
extension points and nothing else:

- a platform `cpu` (`platform.CPUPlatform`): device "cpu", gloo process groups, Ray's `GPU` resource
  (backed by the fake GPU counts the chunk gives `ray start --num-gpus`);
- verl's own FSDP engines (`FSDPEngineWithLMHead`, `FSDPEngineWithValueHead`, unchanged) for device cpu;
- a rollout `hf-cpu` (`rollout.py`): a small transformers server per replica, weights pushed every step.

No verl file is edited and no verl function is patched. The two places where verl blocks the clean way
are each kept in one spot and say why: the process group (`platform.CPUPlatform.communication_backend_name`)
and the worker-side rollout table (`_ROLLOUT_REGISTRY`, a plain dict in 0.9.1, below).
"""

from __future__ import annotations

import os

ROLLOUT_NAME = "hf-cpu"
_ADAPTER = "justrl_hpc.dev.verl_cpu.rollout.HFServerAdapter"


def active() -> bool:
    """Whether the suite asked for the backend (JUSTRL_VERL_CPU=1): nothing else turns it on."""
    from justrl_hpc.core.recipe import CPU_BACKEND_ENV

    return os.environ.get(CPU_BACKEND_ENV, "").strip() == "1"


def register() -> bool:
    """Register the platform, engines and rollout with verl; returns whether it did (False unless asked)."""
    if not active():
        return False
    from verl.plugin.platform import PlatformRegistry

    from justrl_hpc.dev.verl_cpu.platform import CPUPlatform

    if PlatformRegistry.get("cpu") is None:
        PlatformRegistry.register(platform="cpu")(CPUPlatform)

    import warnings

    # verl.workers.engine warns once per optional engine it lacks (torchtitan, megatron, ...) in every
    # process that imports it; none is used here, and the lines would bury every CLI's output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        backends = EngineRegistry._engines.get(model_type, {})
        if "cpu" not in backends.get("fsdp", {}):
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(cls)

    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    # verl 0.9.1 has no register function for the worker-side adapter table, only this dict (base.py); a
    # plugin that adds a rollout has to add its entry here. The one write into verl's state outside a
    # registry call; it adds a key and replaces nothing.
    rollout_base._ROLLOUT_REGISTRY.setdefault((ROLLOUT_NAME, "async"), _ADAPTER)
    return True


def _load_replica():
    from justrl_hpc.dev.verl_cpu.rollout import HFReplica

    return HFReplica
