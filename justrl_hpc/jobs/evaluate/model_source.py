"""Which weights an evaluation loads: a run's checkpoint (global_step_N/actor) or a Hugging Face folder.

A checkpoint's `actor/huggingface/` holds only config + tokenizer unless verl saved the full model there
(`save_contents` with `hf_model`): then it is loaded as is. Otherwise the weights are FSDP rank shards:
the rehearsal's (a tiny model) are gathered here in-process with the rehearsal's own checkpoint code into a
temporary folder; a verl run's 1.5B shards must be exported first (`--job export`, which writes
RUN/export/global_step_N/hf: picked up here for `--step N`), or an HF folder given with `--model` (add
`--step N` to file the results under that step). Resolving only reads: nothing is written.

`--model` needs no run folder: a reader's first evaluation is the published model or the base model. Its
results then live in `runs/models/<folder name>/` (eval/, tensorboard/, logs/ like a run's), and the published
rows it sits beside are the base model's that `--base-model` names, else the one its name or config names
(DeepSeek or Nemotron). A hub id (`hbx/JustRL-DeepSeek-1.5B`) is taken from the Hugging Face cache.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from justrl_hpc.core import checkpoints
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.runs import find_run

WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
MODELS_HOME = Path("runs") / "models"  # results of a --model evaluated without a run folder
# The published base models (results.PUBLISHED's keys), by a word of their names.
BASE_BY_WORD = {"nemotron": "OpenMath-Nemotron-1.5B", "deepseek": "DeepSeek-R1-Distill-Qwen-1.5B"}


@dataclass(frozen=True)
class ModelSource:
    run_dir: Path
    label: str  # results folder under RUN/eval/
    step: int | None
    base_model: str  # the recipe's model, to pick the published rows
    hf_dir: Path  # config + tokenizer (and weights, unless shards is set)
    shards: tuple[Path, int] | None = None  # (actor dir, world size) to gather first
    checkpoint: bool = True  # a run's checkpoint (False: a --model folder)

    @property
    def evaluated(self) -> str:
        """What was evaluated: a run's checkpoint, or the --model folder (never the base model's name for it)."""
        return f"{self.run_dir.name} step {self.step}" if self.checkpoint else str(self.hf_dir)

    @property
    def description(self) -> str:
        what = f"step {self.step}" if self.step is not None else "model"
        how = "rehearsal shards gathered" if self.shards else str(self.hf_dir)
        return f"{what} ({how})"


def has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHTS)


def hf_folder(name: str, field: str) -> Path:
    """A local Hugging Face folder (config.json + weights), or a hub id already in this machine's cache (compute
    nodes seldom download, and nothing is downloaded here): a UserError naming `field` otherwise."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if (folder / "config.json").is_file() and has_weights(folder):
            return folder.resolve()
        raise UserError(f"{name} is not a Hugging Face model folder (config.json + weights)", field)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"no such folder {name} (a hub id is OWNER/NAME)", field)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a valid id (HFValidationError)
        raise UserError(
            f"{name} is not in this machine's Hugging Face cache: download it where there is a network "
            f"(huggingface-cli download {name}) or give a local folder",
            field,
        ) from None


def guess_base(name: str, folder: Path) -> str:
    """The published base model a model folder descends from, by its name or its config's; "" if neither says."""
    words = [name, folder.name]
    try:
        words.append(str(json.loads((folder / "config.json").read_text()).get("_name_or_path") or ""))
    except (OSError, ValueError, AttributeError):
        pass
    text = " ".join(words).lower()
    return next((base for word, base in BASE_BY_WORD.items() if word in text), "")


def export_dir(run_dir: Path, step: int) -> Path:
    # Where `--job export` (justrl_hpc/jobs/export/job.py) writes a step by default; it renames into place when done.
    return RunPaths(run_dir).export / f"global_step_{step}" / "hf"


def _world_size(actor: Path, fallback: int) -> int:
    try:
        return int(json.loads((actor / "fsdp_config.json").read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        sizes = {
            int(m.group(1))
            for p in actor.glob("model_world_size_*_rank_0.pt")
            if (m := re.search(r"_(\d+)_rank", p.name))
        }
        return sizes.pop() if len(sizes) == 1 else fallback


def standalone(model: str, step: int | None, base_model: str | None, home: Path = MODELS_HOME) -> ModelSource:
    """A --model without a run folder: its results in home/<name>/."""
    if step is not None and step < 0:
        raise UserError(f"must be a step number ≥ 0, got {step}", "--step")
    folder = hf_folder(model, "--model")
    name = Path(model).name if Path(model).expanduser().is_dir() else model.replace("/", "--")
    label = f"step_{step}" if step is not None else "model"
    base = base_model if base_model is not None else guess_base(model, folder)
    return ModelSource((home / name).resolve(), label, step, base, folder, checkpoint=False)


def resolve(run: str | None, step: int | None, model: str | None, base_model: str | None = None) -> ModelSource:
    from justrl_hpc.core import run_folder as rundir

    if run is None:
        if model is None:
            raise UserError("give the run folder of a checkpoint (--run RUN), or a model (--model FOLDER)", "--run")
        return standalone(model, step, base_model)
    run_dir = find_run(run, "--run")
    resolved = rundir.load(run_dir)
    base = base_model if base_model is not None else resolved.recipe.model_path
    if step is not None and step < 0:
        raise UserError(f"must be a step number ≥ 0, got {step}", "--step")
    if model is not None:
        folder = hf_folder(model, "--model")
        label = f"step_{step}" if step is not None else f"model_{folder.name}"
        return ModelSource(run_dir, label, step, base, folder, checkpoint=False)
    ckpt_dir = RunPaths(run_dir).checkpoints
    dirs = checkpoints.step_dirs(ckpt_dir)
    if not dirs:
        raise UserError(
            f"{run_dir.name} has no checkpoints yet; evaluate a model folder with --model", "--run"
        )
    if step is None:
        step = max(dirs)
    if step not in dirs:
        have = ", ".join(str(s) for s in sorted(dirs)[-8:])
        raise UserError(f"{run_dir.name} has no checkpoint at step {step}; it has {have}", "--step")
    actor = dirs[step] / "actor"
    hf = actor / "huggingface"
    if not (hf / "config.json").is_file():
        raise UserError(f"step {step} lacks actor/huggingface/config.json (not a verl checkpoint)", "--step")
    label = f"step_{step}"
    if has_weights(hf):
        return ModelSource(run_dir, label, step, base, hf)
    exported = export_dir(run_dir, step)
    if (exported / "config.json").is_file() and has_weights(exported):
        return ModelSource(run_dir, label, step, base, exported)
    if resolved.recipe.device != "cpu":
        raise UserError(
            f"step {step} holds only FSDP shards; export it first (python -m justrl_hpc.launch --job export "
            f"--run {run} --step {step}), then evaluate again: the export in {exported} is picked up",
            "--step",
        )
    world = _world_size(actor, resolved.recipe.world_size)
    verdict = checkpoints.verify(dirs[step], world)
    if not verdict.ok:
        raise UserError(f"checkpoint at step {step} is incomplete ({verdict.reason})", "--step")
    return ModelSource(run_dir, label, step, base, hf, shards=(actor, world))


@contextmanager
def loadable(source: ModelSource) -> Iterator[Path]:
    """A Hugging Face folder with weights for the generator (a temporary one for gathered shards)."""
    if source.shards is None:
        yield source.hf_dir
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from justrl_hpc.jobs.export.job import _quiet_transformers, reassemble

    actor, world = source.shards
    with _quiet_transformers():
        config = AutoConfig.from_pretrained(source.hf_dir)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(reassemble(actor, world))
    with tempfile.TemporaryDirectory(prefix="justrl-eval-model-") as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source.hf_dir).save_pretrained(tmp)
        if (source.hf_dir / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(source.hf_dir).save_pretrained(tmp)
        yield Path(tmp)
