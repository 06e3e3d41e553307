"""Where a run's config comes from: recipes and clusters by name (configs/) or path, `--set`, validated.

Pure: loading writes nothing. The dataclasses are in config.py, the recipe's hyperparameter table in recipe.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from justrl_hpc.core import recipe as recipe_mod
from justrl_hpc.core.config import CONFIG_DIRS, PACKAGE_ROOT, ClusterConfig, RecipeConfig, Resolved, RunConfig
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.settings import build, read_yaml

TRAIN_JOB_FILE = PACKAGE_ROOT.parent / "jobs" / "train.yaml"


def find_config(kind: str, name_or_path: str) -> Path:
    """A recipe/cluster by name (configs/<kind>/<name>.yaml) or by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if candidate.is_file():
            return candidate
        raise UserError(f"no such file {name_or_path}", f"--{kind[:-1]}")
    for base in CONFIG_DIRS:
        path = base / kind / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    names = available(kind)
    raise UserError(
        f"unknown {kind[:-1]} {name_or_path!r}; available: {', '.join(names) or 'none'} (or a path to a YAML file)",
        f"--{kind[:-1]}",
    )


def available(kind: str) -> list[str]:
    names: set[str] = set()
    for base in CONFIG_DIRS:
        names.update(p.stem for p in (base / kind).glob("*.yaml"))
    return sorted(names)


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    """`--set section.key=value` → (dotted key, YAML-parsed value)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith(".") or key.endswith("."):
            raise UserError(f"malformed {item!r}; expected section.key=value, e.g. run.keep_last=3", "--set")
        section = key.split(".", 1)[0]
        if section not in ("recipe", "cluster", "run") or "." not in key:
            raise UserError(
                f"{key!r} must start with recipe., cluster. or run. (e.g. recipe.total_training_steps=100)",
                "--set",
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise UserError(f"value of {key} is not valid YAML: {raw!r}", "--set") from None
        out.append((key, value))
    return out


def apply_set(sections: dict[str, dict[str, Any]], overrides: list[tuple[str, Any]]) -> None:
    for key, value in overrides:
        section, rest = key.split(".", 1)
        target = sections[section]
        # Hyperparameters are verl's dotted keys: everything after the mapping name is one key.
        for mapping in ("hyperparameters", "scale_down", "env"):
            if rest.startswith(mapping + "."):
                target.setdefault(mapping, {})
                if not isinstance(target[mapping], dict):
                    raise UserError("expected a mapping", f"{section}.{mapping}")
                target[mapping][rest[len(mapping) + 1 :]] = value
                break
        else:
            if "." in rest:
                raise UserError(f"unknown setting {rest!r}", section)
            target[rest] = value


def resolve(
    recipe: str,
    cluster: str,
    sets: list[str] | None = None,
    run_name: str | None = None,
) -> Resolved:
    """Load recipe + cluster by name or path, apply `--set`, validate. Pure: writes nothing."""
    overrides = parse_set(sets or [])
    sections = {
        "recipe": read_yaml(find_config("recipes", recipe), "--recipe"),
        "cluster": read_yaml(find_config("clusters", cluster), "--cluster"),
        # The training job's policies (jobs/train.yaml); name, root and run_dir come from the command line.
        "run": read_yaml(TRAIN_JOB_FILE, "jobs/train.yaml") if TRAIN_JOB_FILE.is_file() else {},
    }
    apply_set(sections, overrides)
    resolved = Resolved(
        recipe=build(RecipeConfig, sections["recipe"], "recipe"),
        cluster=build(ClusterConfig, sections["cluster"], "cluster"),
        run=build(RunConfig, sections["run"], "run"),
    )
    recipe_mod.validate(resolved.recipe)
    c = resolved.cluster
    if c.end_reserve_s >= c.signal_lead_s:
        raise UserError(f"must be below signal_lead_s ({c.signal_lead_s}): the save between the pre-limit signal and "
                        f"the reserve needs time; got {c.end_reserve_s}", "cluster.end_reserve_s")
    if run_name is not None:
        resolved.run.name = run_name
    if not resolved.run.name:
        resolved.run.name = resolved.recipe.name
    check_run_name(resolved.run.name)
    return resolved


def check_run_name(name: str) -> None:
    # The name is the run's identity across requeues: no timestamps, nothing a shell or Slurm mangles.
    ok = name and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok:
        raise UserError(f"{name!r} may hold only letters, digits, '-', '_' and '.'", "run.name")


def run_dir_for(resolved: Resolved) -> Path:
    if resolved.run.run_dir:
        return Path(resolved.run.run_dir).resolve()
    return (Path(resolved.run.root) / resolved.run.name).resolve()


def absolutize(resolved: Resolved, base: Path) -> None:
    """Relative data and model paths are relative to where launch runs; chunks run elsewhere."""
    r = resolved.recipe
    r.train_files = [str((base / p).resolve()) if not Path(p).is_absolute() else p for p in r.train_files]
    r.val_files = [str((base / p).resolve()) if not Path(p).is_absolute() else p for p in r.val_files]
    model = Path(r.model_path)
    if r.model_path and not model.is_absolute() and (r.model_path.startswith(".") or (base / model).exists()):
        r.model_path = str((base / model).resolve())
