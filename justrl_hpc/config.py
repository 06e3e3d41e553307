"""Typed configuration: recipe, cluster and run, loaded from YAML, merged with `--set`, validated.

Every bad value becomes one `UserError` naming the field and what would be valid. Loading never writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from justrl_hpc.errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parent
# Recipes and clusters ship beside the package in a source checkout (configs/); a copy inside the
# package would drift, so both places are searched, the checkout first.
CONFIG_DIRS = [PACKAGE_ROOT.parent / "configs"]


@dataclass
class RecipeConfig:
    """A training recipe. For JustRL every value is fixed; the fingerprint guards each resume."""

    name: str
    description: str = ""
    # verl's main_ppo trains every recipe; device cpu runs it on the CPU backend (justrl_hpc.dev.verl_cpu).
    trainer: str = field(default="verl", metadata={"choices": ("verl",)})
    device: str = field(default="cuda", metadata={"choices": ("cuda", "cpu")})
    model_path: str = ""
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    prompt_suffix: str = ""
    nnodes: int = field(default=1, metadata={"min": 1})
    # GPUs per node on a GPU cluster; worker processes per node for the CPU rehearsal.
    ranks_per_node: int = field(default=8, metadata={"min": 1})
    total_training_steps: int = field(default=1, metadata={"min": 1})
    save_freq: int = field(default=50, metadata={"min": 1})
    test_freq: int = field(default=50, metadata={"min": 0})
    # Full validation only on the first chunk: the published script re-ran it at every restart.
    validate_on_resume: bool = False
    # Seconds verl's deadline save reserves on top of 60 s + the longest step (trainer.esi_redundant_time).
    deadline_margin_s: int = field(default=120, metadata={"min": 0})
    # Planning estimates (for --dry-run's chunks, GPU-hours and disk; they change nothing in training).
    expected_step_s: float = field(default=296.0, metadata={"min": 0})
    expected_startup_s: float = field(default=600.0, metadata={"min": 0})
    checkpoint_gb: float = field(default=21.0, metadata={"min": 0})
    # verl keys → values (validated against recipe.HYPERPARAMETERS: only keys the suite knows and types).
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # verl keys a CPU recipe adds to scale verl down (validated against recipe.SCALE_DOWN).
    scale_down: dict[str, Any] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.ranks_per_node

    def fingerprint(self) -> str:
        data = asdict(self)
        data.pop("description", None)
        # Until 2026-12-01 the recipe had an (always empty for verl) `trainer_extra` and no `scale_down`: a
        # recipe that scales nothing down keeps the digest it had then, so runs made before still resume.
        if not data["scale_down"]:
            data.pop("scale_down")
            data["trainer_extra"] = {}
        return _digest(data)


@dataclass
class ClusterConfig:
    """Where chunks run: a Slurm partition and what each node has."""

    name: str
    partition: str = ""
    gpus_per_node: int = field(default=8, metadata={"min": 0})
    cpus_per_node: int = field(default=1, metadata={"min": 1})
    mem_gb: int = field(default=0, metadata={"min": 0})
    # The partition's wall-clock limit for one job (one chunk).
    time_limit_min: int = field(default=1440, metadata={"min": 1})
    # How long before the limit Slurm signals the job (--signal=B:USR2@N); must cover one step + a save.
    signal_lead_s: int = field(default=900, metadata={"min": 10})
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclusive: bool = True
    # JobRequeue=0 clusters get a chain of dependent jobs instead of `scontrol requeue`.
    requeue_allowed: bool = True
    # Seconds between SIGTERM and SIGKILL on preemption (GraceTime); bounds what a SIGTERM save can do.
    preempt_grace_s: int = field(default=300, metadata={"min": 0})
    # Ray's GCS port; per-job offsets avoid clashes between jobs that share a node. They stay below the
    # kernel's ephemeral ports (32768 up), so a base near that leaves few job slots.
    ray_port: int = field(default=20379, metadata={"min": 1024, "max": 32000})
    ray_wait_timeout_s: int = field(default=600, metadata={"min": 10})
    # Lines run before the chunk on each node (module loads, conda activate).
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Free space the run folder's filesystem needs beyond what retention keeps, in GB.
    min_free_disk_gb: float = field(default=50.0, metadata={"min": 0})


@dataclass
class RunConfig:
    """This run's identity and the suite's own policies."""

    name: str = ""
    root: str = "runs"
    run_dir: str = ""
    time_limit_min: int = field(default=0, metadata={"min": 0})  # 0: the cluster's
    # Retention: keep the newest K complete checkpoints plus every Nth step (0: none kept for that).
    keep_last: int = field(default=2, metadata={"min": 1})
    keep_every: int = field(default=500, metadata={"min": 0})
    # Consecutive chunks that end without a new checkpoint before the run stops and says why.
    max_no_progress_chunks: int = field(default=3, metadata={"min": 1})
    # Requeue budget for the whole run (submitit's default of 3 would end a 15-day run on day 3).
    max_requeues: int = field(default=200, metadata={"min": 1})


@dataclass
class Resolved:
    """Everything a chunk needs; written once as run.yaml."""

    recipe: RecipeConfig
    cluster: ClusterConfig
    run: RunConfig

    @property
    def time_limit_min(self) -> int:
        return self.run.time_limit_min or self.cluster.time_limit_min

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": asdict(self.recipe),
            "cluster": asdict(self.cluster),
            "run": asdict(self.run),
            "recipe_fingerprint": self.recipe.fingerprint(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolved:
        recipe = dict(data.get("recipe") or {})
        # run.yaml written before 2026-12-01: an empty trainer_extra is the same recipe; a filled one holds the
        # deleted rehearsal imitation's knobs, whose runs verl cannot resume.
        if recipe.pop("trainer_extra", None) or recipe.get("trainer") == "rehearsal":
            raise UserError("this run was trained by the rehearsal imitation that verl's own trainer replaced; "
                            "start a new run (justrl-hpc rehearse)", "recipe.trainer")
        data = {**data, "recipe": recipe}
        return cls(
            recipe=build(RecipeConfig, data.get("recipe") or {}, "recipe"),
            cluster=build(ClusterConfig, data.get("cluster") or {}, "cluster"),
            run=build(RunConfig, data.get("run") or {}, "run"),
        )


def _digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- building dataclasses from plain data, with one-line errors -------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return str(tp)


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return value converted to tp (int → float only), or raise UserError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return check_value(value, args[0], where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item_tp is str:
            return [value]
        if isinstance(value, list):
            return [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, val_tp = typing.get_args(tp) or (str, Any)
            return {str(k): check_value(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    raise UserError(f"expected {_type_name(tp)}, got {value!r}", where)


def build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"expected a mapping of {cls.__name__} fields, got {data!r}", where)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown field {unknown[0]!r}; valid fields: {', '.join(sorted(known))}", f"{where}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        path = f"{where}.{name}"
        value = check_value(value, hints[name], path)
        lo = f.metadata.get("min")
        if lo is not None and value is not None and value < lo:
            raise UserError(f"must be ≥ {lo}, got {value!r}", path)
        hi = f.metadata.get("max")
        if hi is not None and value is not None and value > hi:
            raise UserError(f"must be ≤ {hi}, got {value!r}", path)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"must be one of {', '.join(choices)}, got {value!r}", path)
        kwargs[name] = value
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise UserError(f"missing required field {missing[0]!r}", where)
    return cls(**kwargs)


# --- YAML files and `--set` ---------------------------------------------------------------------------


def read_yaml(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}", where) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line} is not valid YAML", where) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping", where)
    return data


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
                raise UserError(f"unknown field {rest!r}", section)
            target[rest] = value


def resolve(
    recipe: str,
    cluster: str,
    sets: list[str] | None = None,
    run_name: str | None = None,
) -> Resolved:
    """Load recipe + cluster by name or path, apply `--set`, validate. Pure: writes nothing."""
    from justrl_hpc import recipe as recipe_mod  # the hyperparameter table lives with the recipe

    overrides = parse_set(sets or [])
    sections = {
        "recipe": read_yaml(find_config("recipes", recipe), "--recipe"),
        "cluster": read_yaml(find_config("clusters", cluster), "--cluster"),
        "run": {},
    }
    apply_set(sections, overrides)
    resolved = Resolved(
        recipe=build(RecipeConfig, sections["recipe"], "recipe"),
        cluster=build(ClusterConfig, sections["cluster"], "cluster"),
        run=build(RunConfig, sections["run"], "run"),
    )
    recipe_mod.validate(resolved.recipe)
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
