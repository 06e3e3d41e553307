"""The names the monitor reads: verl's TensorBoard tags and the meaning of telemetry fields' bits.

One place, so the node agent that writes a field, the rules that judge it and the views that show it agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# -- verl's metrics ----------------------------------------------------------------------------------------

# Canonical name → the TensorBoard tags that carry it, preferred first (the first present in a step wins).
# Checked against verl 0.9.1's sources: trainer/ppo/ray_trainer.py logs `actor/entropy` (the rollout batch's
# entropy before the update); verl 0.4.0, the version JustRL vendors, logged only `actor/entropy_loss`, which
# 0.9.1's engine workers (workers/utils/losses.py) still log when they compute entropy during the update, so
# `actor/entropy` is preferred when both are there; metric_utils.compute_data_metrics logs
# `critic/score/mean` (the reward function's score) and `critic/rewards/mean` (score plus any KL penalty:
# the same number in JustRL, which has no KL in the reward), `response_length/{mean,max,clip_ratio}`;
# compute_timing_metrics logs `timing_s/<stage>` (`step`, `testing`, `save_checkpoint`, `gen`, …) and
# compute_throughout_metrics `perf/time_per_step`; the actor's update logs `actor/grad_norm`,
# `actor/pg_loss`, `actor/pg_clipfrac`, `actor/ppo_kl` (core_algos.py).
ALIASES: dict[str, tuple[str, ...]] = {
    "entropy": ("actor/entropy", "actor/entropy_loss"),
    "reward": ("critic/score/mean", "critic/rewards/mean"),
    "length_mean": ("response_length/mean",),
    "length_max": ("response_length/max",),
    "length_clip_ratio": ("response_length/clip_ratio",),
    "grad_norm": ("actor/grad_norm",),
    "pg_loss": ("actor/pg_loss",),
    "pg_clipfrac": ("actor/pg_clipfrac",),
    "ppo_kl": ("actor/ppo_kl",),
    "step_time": ("timing_s/step", "perf/time_per_step"),
    "testing_time": ("timing_s/testing",),
    "save_time": ("timing_s/save_checkpoint",),
    "aborted_ratio": ("response/aborted_ratio",),
}
_TAG_TO_NAME = {tag: name for name, tags in ALIASES.items() for tag in tags}
WATCHED_TAGS: tuple[str, ...] = tuple(_TAG_TO_NAME)


def canonical(tag: str) -> str | None:
    """The canonical name of a TensorBoard tag, or None when no rule reads it."""
    return _TAG_TO_NAME.get(tag)


def pick(values: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """Canonical name → (tag, value) for the watched tags in one step's values, the preferred alias first."""
    out: dict[str, tuple[str, float]] = {}
    for name, tags in ALIASES.items():
        for tag in tags:
            v = values.get(tag)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[name] = (tag, float(v))
                break
    return out


def truncation_rate(values: Mapping[str, Any], max_response_length: int | None) -> float | None:
    """The share of this step's responses that hit the generation cap, or None when it cannot be known.

    verl 0.9.1's `response_length/clip_ratio` is NOT a truncation rate by itself. compute_data_metrics takes
    `max_response_length = batch["responses"].shape[-1]`, the padded width of the response tensor, and logs
    the share of samples whose response length (attention-mask sum) EQUALS that width. The V1 trainer
    (trainer_base.py) builds the batch from nested tensors with `to_padded_tensor`, so the width is the
    longest response in the batch: clip_ratio is then the share tied with the batch's longest response,
    never 0 for a non-empty batch, whether or not anything was cut. The legacy trainer (`use_v1=False`, which
    the JustRL recipe here runs) pads to `rollout.response_length` in the agent loop, where it is the share at
    the cap. Both cases agree when `response_length/max` has reached `max_response_length`: the longest
    response is then at the cap, so clip_ratio is exactly the share at the cap. When the max is below the cap
    nothing was truncated. So: clip_ratio if max ≥ cap, else 0.

    Limitations: a response that ends with EOS on exactly the cap's last token counts as truncated (verl's own
    definition; rare at 15,360 tokens). Without clip_ratio (or without a known cap) there is no per-sample
    source in the event files: verl's `trainer.rollout_data_dir` dump holds decoded text and scores, not
    token counts, so this returns None and the truncation rule is silent rather than guessing from the max.
    """
    if not max_response_length:
        return None
    got = pick(values)
    if "length_max" not in got or "length_clip_ratio" not in got:
        return None
    mx, ratio = got["length_max"][1], got["length_clip_ratio"][1]
    if not (math.isfinite(mx) and math.isfinite(ratio)):
        return None
    return ratio if mx >= max_response_length else 0.0


# -- telemetry fields --------------------------------------------------------------------------------------

# Clock-event ("throttle") reason bits of DCGM_FI_DEV_CLOCKS_EVENT_REASONS, from pynvml's
# nvmlClocksEventReason* constants.
CLOCK_EVENT_GPU_IDLE = 0x1
CLOCK_EVENT_SW_POWER_CAP = 0x4
CLOCK_EVENT_HW_SLOWDOWN = 0x8
CLOCK_EVENT_SW_THERMAL = 0x20
CLOCK_EVENT_HW_THERMAL = 0x40
CLOCK_EVENT_HW_POWER_BRAKE = 0x80
HW_SLOWDOWN_MASK = CLOCK_EVENT_HW_SLOWDOWN | CLOCK_EVENT_HW_THERMAL | CLOCK_EVENT_HW_POWER_BRAKE

# XID classes (NVIDIA's XID catalog, DCGM's health checks): the GPU rules' defaults (rules/gpu_settings.py) and
# what the chunk's preflight refuses a node for when the kernel log has one since boot.
XID_CRITICAL = (48, 62, 64, 74, 79, 95, 109, 119, 120, 140)
XID_WARN = (13, 31, 38, 39, 42, 54, 56, 57, 58, 60, 61, 63, 67, 73, 78, 92, 94)
XID_INFO = (43, 45, 154)
