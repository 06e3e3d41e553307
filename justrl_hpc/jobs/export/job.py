"""A verified checkpoint of a run → a Hugging Face model folder, merged by verl's own model merger, then checked.

    python -m justrl_hpc.jobs.export.job --run RUN [--step N] [--out PATH]

The checkpoint must pass `checkpoints.verify` (every rank's shards complete): a torn or missing one is refused
before anything is written. verl's `FSDPModelMerger` (what `python -m verl.model_merger merge --backend fsdp`
runs) concatenates the rank shards and writes safetensors in bfloat16 with the checkpoint's config and
tokenizer. The result is then checked independently of the merger: it loads with transformers on the CPU,
runs one forward pass, and every tensor equals the shards reassembled here from their DTensor placements
(cast to the exported dtype: verl's merger writes bfloat16), tensor by tensor, bit for bit; the tokenizer
loads and has the checkpoint's vocabulary. `export.json` in the folder records the source step, the
fingerprint and sizes of the files read, and what was verified.

The folder appears only complete and verified: the merge goes to a temporary sibling that is renamed at the
end. The merger's own chatter goes to RUN/logs/export-global_step_N.log.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from justrl_hpc.core import checkpoints
from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.runs import find_run

MANIFEST_NAME = "export.json"
MANIFEST_VERSION = 1


class ExportError(RuntimeError):
    """The merge ran but its result is wrong or unreadable (not bad input: exit status 1)."""


@dataclass
class Verification:
    ok: bool = False
    tensors: int = 0
    parameters: int = 0
    dtype: str = ""
    source_dtypes: list[str] = field(default_factory=list)
    exact_after_cast: bool = False  # every exported tensor == the reassembled shard cast to `dtype`
    max_abs_cast_error: float = 0.0  # vs the shards' own precision: what the cast to `dtype` costs
    transformers_load: bool = False
    forward_ok: bool = False
    tokenizer_ok: bool = False
    vocab_size: int = 0
    problems: list[str] = field(default_factory=list)


def log(run: str, step: int, msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} justrl-export: run {run} step {step}: {msg}", flush=True)


# ---------------------------------------------------------------- choosing and fingerprinting the source


def _world_size(run_dir: Path) -> tuple[str, int]:
    from justrl_hpc.core.run_folder import load

    resolved = load(run_dir)  # UserError(RUN) when it is not a run folder
    return resolved.run.name, resolved.recipe.world_size


def choose_step(ckpt_dir: Path, world_size: int, step: int | None) -> tuple[int, Path]:
    """The checkpoint to export: `step` if it is verified, else the newest verified one. Writes nothing
    except checkpoints.verify's own size manifest beside a verified checkpoint."""
    dirs = checkpoints.step_dirs(ckpt_dir)
    if step is None:
        good = checkpoints.latest_good(ckpt_dir, world_size)
        if good is None:
            seen = sorted(dirs)
            raise UserError(
                f"no verified checkpoint in {ckpt_dir}"
                + (f" (folders for steps {seen} are all incomplete)" if seen else " (nothing saved yet)"),
                "--run",
            )
        return good, dirs[good]
    if step not in dirs:
        have = sorted(dirs)
        raise UserError(
            f"no checkpoint global_step_{step} in {ckpt_dir}; saved steps: {have if have else 'none'}",
            "--step",
        )
    verdict = checkpoints.verify(dirs[step], world_size)
    if not verdict.ok:
        good = checkpoints.verified_steps(ckpt_dir, world_size)
        raise UserError(
            f"checkpoint global_step_{step} is not a verified checkpoint ({verdict.reason}); "
            f"verified steps: {good if good else 'none'}",
            "--step",
        )
    return step, dirs[step]


def source_files(actor_dir: Path, world_size: int) -> list[Path]:
    """What the export reads: the model shards, fsdp_config.json and the huggingface/ folder."""
    files = [actor_dir / f"model_world_size_{world_size}_rank_{r}.pt" for r in range(world_size)]
    files.append(actor_dir / "fsdp_config.json")
    files += sorted(p for p in (actor_dir / "huggingface").rglob("*") if p.is_file())
    return files


def fingerprint(actor_dir: Path, files: list[Path]) -> tuple[str, dict[str, int]]:
    """sha256 over each file's name, size and contents (the optimizer shards are not part of the model)."""
    total = hashlib.sha256()
    sizes: dict[str, int] = {}
    for path in files:
        rel = str(path.relative_to(actor_dir))
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        sizes[rel] = path.stat().st_size
        total.update(f"{rel}\0{sizes[rel]}\0{h.hexdigest()}\n".encode())
    return total.hexdigest()[:16], sizes


def crc_check(actor_dir: Path, step: int, world_size: int) -> None:
    """Every model shard's zip members against their CRC-32: bit rot or a bad copy that kept the size.

    checkpoints.verify only checks sizes and the zip end record (cheap enough after every save of a long
    run); torch.load does not check CRCs and would load a damaged tensor silently, and the merger would
    export it. The export reads the shards once anyway, so it checks them all.
    """
    import zipfile

    for rank in range(world_size):
        path = actor_dir / f"model_world_size_{world_size}_rank_{rank}.pt"
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            bad = f"(unreadable: {exc})"
        if bad is not None:
            raise UserError(
                f"checkpoint global_step_{step} is corrupted: {path.name} fails its CRC check at {bad}; "
                "export an older step with --step",
                "--step",
            )


def _check_layout(actor_dir: Path, step: int, world_size: int) -> None:
    config_path = actor_dir / "fsdp_config.json"
    try:
        recorded = json.loads(config_path.read_text()).get("world_size")
    except (OSError, ValueError):
        raise UserError(
            f"checkpoint global_step_{step} has no readable {config_path.name}, which verl's merger needs",
            "--step",
        ) from None
    if recorded != world_size:
        raise UserError(
            f"checkpoint global_step_{step} says world_size {recorded} in {config_path.name}, "
            f"the run trained with {world_size}",
            "--step",
        )
    if not (actor_dir / "huggingface" / "config.json").is_file():
        raise UserError(
            f"checkpoint global_step_{step} lacks actor/huggingface/config.json (model config)", "--step"
        )


# ---------------------------------------------------------------- merge (verl's merger) and verify (ours)


def merge(actor_dir: Path, target: Path, log_path: Path) -> None:
    """verl's FSDP model merger, in this process, on the CPU; its prints and progress bars go to log_path."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor_dir),
        target_dir=str(target),
        hf_model_config_path=str(actor_dir / "huggingface"),
    )
    target.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "a") as fh,
        contextlib.redirect_stdout(fh),
        contextlib.redirect_stderr(fh),
        _quiet_transformers(),
    ):
        print(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} merge {actor_dir} -> {target}", flush=True)
        merger = FSDPModelMerger(config)
        merger.merge_and_save()
        merger.cleanup()


def reassemble(actor_dir: Path, world_size: int) -> dict[str, Any]:
    """The full state dict from the rank files, by each entry's own DTensor placement.

    Independent of the merger's code path on purpose: Shard(d) → concatenate the local tensors along d in
    rank order, Replicate → rank 0's; a plain tensor must be identical on every rank (FSDP writes those
    replicated).
    """
    import torch
    from torch.distributed.tensor import DTensor

    shards = [
        torch.load(
            actor_dir / f"model_world_size_{world_size}_rank_{r}.pt", map_location="cpu", weights_only=False
        )
        for r in range(world_size)
    ]
    keys = set(shards[0])
    for r, sd in enumerate(shards[1:], start=1):
        if set(sd) != keys:
            raise ExportError(f"rank {r}'s model shard has different keys from rank 0's")
    full: dict[str, Any] = {}
    for key in sorted(keys):
        values = [sd[key] for sd in shards]
        first = values[0]
        if isinstance(first, DTensor):
            if len(first.placements) != 1:
                # HSDP's ("ddp", "fsdp") mesh would need the replica groups told apart; JustRL trains plain FSDP.
                raise ExportError(
                    f"{key}: a {len(first.placements)}-D device mesh {first.device_mesh.mesh_dim_names}; "
                    "only verl's 1-D FSDP checkpoints are verified here"
                )
            (placement,) = first.placements
            if placement.is_shard():
                tensor = torch.cat([v.to_local() for v in values], dim=placement.dim)
            elif placement.is_replicate():
                tensor = first.to_local()
            else:
                raise ExportError(f"{key}: placement {placement} cannot be reassembled")
            if tuple(tensor.shape) != tuple(first.shape):
                raise ExportError(
                    f"{key}: shards add up to {tuple(tensor.shape)}, expected {tuple(first.shape)}"
                )
        else:
            tensor = first
            for r, v in enumerate(values[1:], start=1):
                if not torch.equal(v, first):
                    raise ExportError(f"{key}: the replicated entry differs between rank 0 and rank {r}")
        full[key] = tensor.contiguous()
    return full


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """No progress bars or deprecation chatter from transformers on the CLI's stderr while we load."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def verify_export(target: Path, actor_dir: Path, world_size: int) -> Verification:
    with _quiet_transformers():
        return _verify_export(target, actor_dir, world_size)


def _verify_export(target: Path, actor_dir: Path, world_size: int) -> Verification:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    v = Verification()
    expected = reassemble(actor_dir, world_size)
    v.source_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in expected.values()})
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype="auto", device_map="cpu")
    except Exception as exc:  # transformers raises many kinds; each means "does not load"
        v.problems.append(f"transformers cannot load it: {type(exc).__name__}: {exc}")
        return v
    v.transformers_load = True
    got = model.state_dict()
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        v.problems.append(f"keys differ from the shards: missing {missing[:5]}, extra {extra[:5]}")
    dtypes = {t.dtype for t in got.values()}
    v.dtype = ",".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
    mismatched = []
    for key in sorted(set(expected) & set(got)):
        want, have = expected[key], got[key]
        if have.shape != want.shape or not torch.equal(have, want.to(have.dtype)):
            mismatched.append(key)
            continue
        if want.is_floating_point():
            err = (have.to(want.dtype) - want).abs().max().item() if want.numel() else 0.0
            v.max_abs_cast_error = max(v.max_abs_cast_error, float(err))
        v.tensors += 1
        v.parameters += want.numel()
    if mismatched:
        v.problems.append(f"{len(mismatched)} tensor(s) differ from the shards, first {mismatched[0]}")
    v.exact_after_cast = not mismatched and not missing and v.tensors == len(expected)
    with torch.no_grad():
        vocab = model.config.vocab_size
        logits = model(input_ids=torch.tensor([[0, 1, 2, 3]]) % vocab).logits
    v.forward_ok = bool(torch.isfinite(logits).all()) and logits.shape[-1] == vocab
    if not v.forward_ok:
        v.problems.append("a forward pass gave non-finite logits or the wrong vocabulary size")
    try:
        tok = AutoTokenizer.from_pretrained(target)
        ref = AutoTokenizer.from_pretrained(actor_dir / "huggingface")
    except Exception as exc:
        v.problems.append(f"tokenizer does not load: {type(exc).__name__}: {exc}")
    else:
        v.vocab_size = len(tok)
        v.tokenizer_ok = tok.get_vocab() == ref.get_vocab() and tok.eos_token == ref.eos_token
        if not v.tokenizer_ok:
            v.problems.append("the exported tokenizer differs from the checkpoint's")
    v.ok = v.exact_after_cast and v.forward_ok and v.tokenizer_ok and not v.problems
    return v


# ---------------------------------------------------------------- the export


def _default_out(run_dir: Path, step: int) -> Path:
    return RunPaths(run_dir).export / f"global_step_{step}" / "hf"


def _already_exported(out: Path, step: int, fp: str) -> bool:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    src = manifest.get("source", {})
    return (
        bool(manifest.get("verification", {}).get("ok"))
        and src.get("step") == step
        and src.get("fingerprint") == fp
    )


def export_checkpoint(run_dir: Path, step: int | None, out: Path | None) -> Path:
    import logging

    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)
    return _export_checkpoint(run_dir, step, out)


def _export_checkpoint(run_dir: Path, step: int | None, out: Path | None) -> Path:
    """Merge RUN's checkpoint `step` (None = the newest verified) into an HF folder and verify it.

    torch warns once per loaded FSDP2 DTensor that its device mesh was unpickled without process groups
    (true, and harmless: nothing here runs a collective); those lines would bury the CLI's own, so the
    device-mesh logger is kept to errors.

    Returns the HF folder (`out`, default RUN/export/global_step_N/hf). Raises UserError for bad input (not a
    run folder, no such or no verified checkpoint, `out` holding something else) before writing anything, and
    ExportError when the merged model does not verify (nothing is left at `out` then).
    """
    run_dir = Path(run_dir).resolve()
    run, world_size = _world_size(run_dir)
    step, step_dir = choose_step(RunPaths(run_dir).checkpoints, world_size, step)
    actor_dir = step_dir / "actor"
    _check_layout(actor_dir, step, world_size)
    crc_check(actor_dir, step, world_size)
    out = (Path(out) if out is not None else _default_out(run_dir, step)).resolve()
    if out == actor_dir or actor_dir in out.parents or out in step_dir.parents or out == step_dir:
        raise UserError(f"{out} is inside or above the checkpoint itself; choose a folder elsewhere", "--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder", "--out")
    t0 = time.monotonic()
    fp, sizes = fingerprint(actor_dir, source_files(actor_dir, world_size))
    if out.is_dir() and any(out.iterdir()):
        if _already_exported(out, step, fp):
            log(run, step, f"already exported and verified at {out} (fingerprint {fp})")
            return out
        raise UserError(
            f"{out} already holds something that is not this export; choose an empty folder", "--out"
        )

    log(run, step, f"exporting {step_dir} (world size {world_size}, fingerprint {fp}) to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log_path = RunPaths(run_dir).logs / f"export-global_step_{step}.log"
    try:
        try:
            merge(actor_dir, tmp, log_path)
        except Exception as exc:  # verl's merger raises whatever its parts raise; one line says which
            raise ExportError(
                f"verl's model merger failed: {type(exc).__name__}: {exc} (log: {log_path})"
            ) from exc
        merge_s = time.monotonic() - t0
        log(run, step, f"merged by verl's model merger in {merge_s:.1f} s")
        verdict = verify_export(tmp, actor_dir, world_size)
        if not verdict.ok:
            raise ExportError(f"the merged model does not verify: {'; '.join(verdict.problems)}")
        manifest = build_manifest(run, run_dir, step, step_dir, world_size, fp, sizes, verdict, tmp)
        manifest["seconds"] = {"merge": round(merge_s, 2), "total": round(time.monotonic() - t0, 2)}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(
        run,
        step,
        f"exported {verdict.tensors} tensors ({verdict.parameters:,} parameters, {verdict.dtype}), "
        f"equal to the shards, tokenizer vocab {verdict.vocab_size}: {out}",
    )
    return out


def build_manifest(
    run: str,
    run_dir: Path,
    step: int,
    step_dir: Path,
    world_size: int,
    fp: str,
    sizes: dict[str, int],
    verdict: Verification,
    target: Path,
) -> dict[str, Any]:
    import torch
    import transformers
    import verl

    from justrl_hpc.core.run_folder import stored_fingerprint

    return {
        "version": MANIFEST_VERSION,
        "run": run,
        "run_dir": str(run_dir),
        "recipe_fingerprint": stored_fingerprint(run_dir),
        "source": {
            "step": step,
            "checkpoint": str(step_dir),
            "world_size": world_size,
            "fingerprint": fp,
            "bytes": sum(sizes.values()),
            "sizes": sizes,
        },
        "files": {p.name: p.stat().st_size for p in sorted(target.iterdir()) if p.is_file()},
        "verification": asdict(verdict),
        "merger": "verl.model_merger fsdp (FSDPModelMerger)",
        "versions": {
            "verl": verl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One `error:` line (house rule) instead of argparse's usage block.
        raise UserError(f"{message}; see `python -m justrl_hpc.jobs.export.job --help`", "export")


def _step_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a step number ≥ 0, got {text!r}")
    return int(text)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = _Parser(
        prog="python -m justrl_hpc.jobs.export.job",
        description="Merge a run's verified checkpoint into a Hugging Face model folder (verl's merger) and verify it.",
    )
    p.add_argument("--run", required=True, help="the run folder (or its name under ./runs/)")
    p.add_argument("--step", type=_step_arg, help="the checkpoint's step (default: the newest verified)")
    p.add_argument("--out", help="the HF folder to write (default RUN/export/global_step_N/hf)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = find_run(args.run, "--run")
    try:
        out = export_checkpoint(run_dir, args.step, Path(args.out) if args.out else None)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
