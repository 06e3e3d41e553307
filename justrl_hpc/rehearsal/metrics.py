"""Metrics with verl's names, through verl's own code.

Training metrics come from verl's `metric_utils` (`compute_data_metrics`, `compute_timing_metrics`,
`compute_throughout_metrics`) over a verl `DataProto` shaped like verl's batch; validation metrics from
`process_validation_metrics` with the trainer's `val-core` / `val-aux` naming. They are logged with verl's
`Tracking` (console: `step:N - key:value - …`; tensorboard: into $TENSORBOARD_DIR). The one difference:
the TensorBoard writer is flushed after every step, so a monitor tailing the event files sees each step
at once instead of after SummaryWriter's two-minute flush.
"""

from __future__ import annotations

from typing import Any


class Logger:
    def __init__(self, project: str, experiment: str, backends: list[str], config: dict[str, Any]) -> None:
        from verl.utils.tracking import Tracking

        self.tracking = Tracking(
            project_name=project, experiment_name=experiment, default_backend=list(backends), config=config
        )

    def log(self, data: dict[str, Any], step: int) -> None:
        self.tracking.log(data=data, step=step)
        tb = self.tracking.logger.get("tensorboard")
        if tb is not None:
            tb.writer.flush()

    def close(self) -> None:
        self.tracking.finish()


def training_metrics(batch: Any, timing: dict[str, float], n_gpus: int) -> dict[str, Any]:
    from verl.trainer.ppo.metric_utils import (
        compute_data_metrics,
        compute_throughout_metrics,
        compute_timing_metrics,
    )

    out: dict[str, Any] = {}
    out.update(compute_data_metrics(batch=batch, use_critic=False))
    out.update(compute_timing_metrics(batch=batch, timing_raw=timing))
    out.update(compute_throughout_metrics(batch=batch, timing_raw=timing, n_gpus=n_gpus))
    return out


def validation_metrics(
    data_sources: list[str], uids: list[str], infos: dict[str, list[Any]]
) -> dict[str, float]:
    """verl's RayPPOTrainer._val_metrics_update: val-core/<source>/acc/mean@N and the val-aux rest."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    nested = process_validation_metrics(data_sources, uids, infos)
    out: dict[str, float] = {}
    for source, var2metric2val in nested.items():
        core_var = "acc" if "acc" in var2metric2val else "reward"
        for var_name, metric2val in var2metric2val.items():
            n_max = max(int(name.split("@")[-1].split("/")[0]) for name in metric2val)
            for metric_name, value in metric2val.items():
                core = (
                    var_name == core_var
                    and any(metric_name.startswith(p) for p in ("mean", "maj", "best"))
                    and f"@{n_max}" in metric_name
                )
                # float(): verl logs numpy scalars, which its console prints as np.float64(…)
                out[f"{'val-core' if core else 'val-aux'}/{source}/{var_name}/{metric_name}"] = float(value)
    return out
