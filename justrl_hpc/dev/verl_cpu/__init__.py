"""A CPU backend for verl 0.9.1, loaded by verl's own plugin mechanism (entry point group `verl.plugins`).

verl imports this in every one of its processes (driver, TaskRunner, workers, rollout servers). On a host
with CUDA it does nothing, so a GPU node that has the suite installed trains exactly as plain verl does.
On a host without CUDA it registers, through verl's extension points and nothing else:

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
    """The backend applies where verl would find no accelerator (or where VERL_PLATFORM asks for it)."""
    forced = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if forced:
        return forced == "cpu"
    import torch

    return not torch.cuda.is_available()


def register() -> bool:
    """Register the platform, engines and rollout with verl; returns whether it did (False on GPU hosts)."""
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
