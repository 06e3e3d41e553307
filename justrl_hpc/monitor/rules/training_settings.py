"""The thresholds of the training rules (the `training:` section of monitor/rules.yaml), in their own module
because the training watch and the entropy rules (rules/entropy.py) both read them."""

from __future__ import annotations

from dataclasses import dataclass

from justrl_hpc.core.settings import setting

# JustRL's published dynamics (justrl-recipe.md, "Training dynamics reported"): entropy oscillates around
# 1.2–1.4 (1.0–1.6 late), mean response length 7–8k → 4–5k tokens, mean reward −0.6 → +0.4 on a ±1 scale.
# The dashboard shows the same bands; these are the rules' source of truth.
LENGTH_BAND_FRACTIONS = (0.1, 0.78)  # of max_response_length: 1,536 / 11,981 tokens of 15,360
TRUNCATION_WARN = 0.05


# -- settings ----------------------------------------------------------------------------------------------


@dataclass
class TrainRuleSettings:
    """Thresholds of the training rules (the `training:` section of monitor/rules.yaml). A threshold set to
    None switches its check off. Windows and persistence counts are in training steps."""

    min_samples: int = setting(20, lo=1)  # a relative rule waits for this many values in its window
    hold_steps: int = setting(10, lo=1)  # a point event (NaN, grad spike) holds this many steps
    nonfinite_ignore: tuple[str, ...] = ()  # tag prefixes whose NaN/Inf is expected
    # T3/T4 entropy: an EMA against absolute lines (off unless a rules file sets them: the paper's band is not a
    # law, thunlp/JustRL#3 and #5) and against the run's own history
    entropy_ema_alpha: float = setting(0.1, lo=0, hi=1)
    entropy_band: tuple[float, float] | None = None
    entropy_critical_band: tuple[float, float] | None = None
    entropy_low_steps: int = setting(20, lo=1)
    entropy_high_steps: int = setting(10, lo=1)
    entropy_critical_steps: int = setting(5, lo=1)
    entropy_window: int = setting(200, lo=1)
    entropy_drop_fraction: float | None = setting(0.30, lo=0, hi=1)
    entropy_rise_factor: float | None = setting(2.0, lo=1)
    entropy_drift_steps: int = setting(5, lo=1)
    # ... against the run's own early reference (the median of entropy_reference_steps values after
    # entropy_warmup_steps), compared with the median of the last entropy_recent_steps
    entropy_warmup_steps: int = setting(1, lo=0)
    entropy_reference_steps: int = setting(5, lo=1)
    entropy_recent_steps: int = setting(5, lo=1)
    entropy_reference_drop: float | None = setting(0.6, lo=0, hi=1)
    entropy_reference_critical: float | None = setting(0.9, lo=0, hi=1)
    entropy_collapse_steps: int = setting(3, lo=1)
    # ... and against a log-linear trend over a long window
    entropy_slope_window: int = setting(100, lo=3)
    entropy_slope_fall: float | None = setting(0.5, lo=0, hi=1)
    entropy_slope_min_r2: float = setting(0.6, lo=0, hi=1)
    # T5/T7 response length, as fractions of max_response_length and against the rolling median
    length_high_fraction: float | None = setting(LENGTH_BAND_FRACTIONS[1], lo=0, hi=1)
    length_high_steps: int = setting(10, lo=1)
    length_window: int = setting(200, lo=1)
    length_rise_fraction: float | None = setting(0.5, lo=0)
    length_low_fraction: float | None = setting(LENGTH_BAND_FRACTIONS[0], lo=0, hi=1)
    length_collapse_window: int = setting(50, lo=1)
    length_drop_fraction: float | None = setting(0.4, lo=0, hi=1)
    length_low_steps: int = setting(5, lo=1)
    # T6 truncation (see schema.truncation_rate)
    truncation_warn: float | None = setting(TRUNCATION_WARN, lo=0, hi=1)
    truncation_warn_steps: int = setting(20, lo=1)
    truncation_critical: float | None = setting(0.15, lo=0, hi=1)
    truncation_critical_steps: int = setting(5, lo=1)
    # T8 reward: EMA below its running max, or the raw mean under a floor
    reward_ema_alpha: float = setting(0.1, lo=0, hi=1)
    reward_min_samples: int = setting(200, lo=1)
    reward_drop: float | None = setting(0.3, lo=0)
    reward_floor: float | None = setting(-0.9)
    reward_steps: int = setting(10, lo=1)
    # T2 grad-norm spike
    grad_window: int = setting(128, lo=2)
    grad_sigma: float | None = setting(6.0, lo=0)
    grad_median_window: int = setting(100, lo=1)
    grad_median_factor: float | None = setting(10.0, lo=1)
    # A floor under both: at least this many times the median, and at least this large (verl clips the
    # update at actor.grad_clip, 1.0 by default, so a norm under it moves the weights no more than usual)
    grad_min_ratio: float | None = setting(2.0, lo=1)
    grad_min_abs: float | None = setting(1.0, lo=0)
    grad_critical_count: int = setting(3, lo=1)
    grad_critical_window: int = setting(10, lo=1)
    # S3 step time (the training part: timing_s/step less testing and checkpoint saving)
    step_time_window: int = setting(50, lo=1)
    step_time_ratio: float | None = setting(1.33, lo=1)
    step_time_steps: int = setting(5, lo=1)

    def history_steps(self) -> int:
        """How many steps of history the watch keeps (enough for every window, and for a rewind of one
        save interval behind the newest step)."""
        return (
            max(
                self.entropy_window,
                self.entropy_slope_window,
                self.length_window,
                self.length_collapse_window,
                self.grad_window,
                self.grad_median_window,
                self.step_time_window,
            )
            + 64
        )
