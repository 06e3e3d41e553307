"""The run's config sources: jobs/train.yaml holds the training job's policies, the one validator names the
field of every bad value."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import yaml

from justrl_hpc.core.config import RunConfig
from justrl_hpc.core.config_files import TRAIN_JOB_FILE, resolve
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.settings import build, setting


def test_jobs_train_yaml_holds_the_run_policies_at_their_defaults() -> None:
    data = yaml.safe_load(TRAIN_JOB_FILE.read_text())
    defaults = {k: v for k, v in asdict(RunConfig()).items() if k not in ("name", "root", "run_dir")}
    assert data == defaults
    assert asdict(resolve("justrl-deepseek-1.5b", "a800-4x8").run) == {**asdict(RunConfig()), "name": "justrl-deepseek-1.5b"}


def test_a_set_beats_jobs_train_yaml() -> None:
    assert resolve("justrl-deepseek-1.5b", "a800-4x8", ["run.keep_last=5"]).run.keep_last == 5


@dataclass
class _Knobs:
    every: float = setting(30.0, lo=0.1)
    band: tuple[float, float] | None = (0.8, 2.0)
    names: tuple[str, ...] = ()
    mode: str = setting("a", choices=("a", "b"))
    count: int = setting(1, lo=1, hi=9)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nope": 1}, "k.nope: unknown setting; known: band, count, every, mode, names"),
        ({"every": 0.0}, "k.every: must be ≥ 0.1, got 0.0"),
        ({"every": True}, "k.every: must be a number, got True"),
        ({"every": float("nan")}, "k.every: must be a number, got nan"),
        ({"band": [2, 1]}, "k.band: must be [low, high] with low < high"),
        ({"names": "x"}, "k.names: must be a list of strings, got 'x'"),
        ({"names": ["x", 3]}, "k.names[1]: must be a string, got 3"),
        ({"mode": "c"}, "k.mode: must be one of a, b, got 'c'"),
        ({"count": 10}, "k.count: must be ≤ 9, got 10"),
        ({"count": 1.5}, "k.count: must be an integer, got 1.5"),
        ("text", "k: must be a mapping of settings, got 'text'"),
    ],
)
def test_the_one_validator_names_the_field_and_the_fix(data: object, message: str) -> None:
    with pytest.raises(UserError) as exc:
        build(_Knobs, data, "k")
    assert str(exc.value).startswith(message)


def test_the_one_validator_converts_and_defaults() -> None:
    got = build(_Knobs, {"every": 5, "band": None, "names": ["a"]}, "k")
    assert got == _Knobs(every=5.0, band=None, names=("a",)) and isinstance(got.every, float)
    assert build(_Knobs, None, "k") == _Knobs()


def test_an_unreadable_yaml_is_one_line(tmp_path: Path) -> None:
    from justrl_hpc.core.settings import read_yaml

    bad = tmp_path / "x.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(UserError, match=r"x.yaml is not valid YAML at line"):
        read_yaml(bad, "x")
    bad.write_text("- 1\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        read_yaml(bad, "x")


def test_the_end_reserve_stays_below_the_signal_lead() -> None:
    assert resolve("justrl-deepseek-1.5b", "a800-4x8").cluster.end_reserve_s == 120
    assert resolve("rehearsal", "dev").cluster.end_reserve_s == 10
    with pytest.raises(UserError) as err:
        resolve("justrl-deepseek-1.5b", "a800-4x8", ["cluster.signal_lead_s=100"])
    assert "cluster.end_reserve_s" in str(err.value) and "below signal_lead_s (100)" in str(err.value)
