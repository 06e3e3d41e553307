"""`python -m justrl_hpc.launch`: resolve recipe + cluster, check everything checkable, submit the first chunk.

Heavy imports (submitit, verl, torch, ray) happen only past the dry-run, so `--help` and `--dry-run` stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from justrl_hpc.core import config as cfg
from justrl_hpc.core import config_files
from justrl_hpc.core.errors import UserError, cli_entry

DEFAULT_RECIPE = "justrl-deepseek-1.5b"
DEFAULT_CLUSTER = "a800-4x8"
JOBS = ("train", "evaluate", "export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m justrl_hpc.launch",
        description="Submit the JustRL run as resumable Slurm chunks (or print the plan with --dry-run).",
    )
    p.add_argument("--nodes", type=int, help="nodes per chunk (must match the recipe's world size)")
    p.add_argument(
        "--recipe", help=f"recipe name in configs/recipes or a YAML path (default {DEFAULT_RECIPE})"
    )
    p.add_argument(
        "--cluster", help=f"cluster name in configs/clusters or a YAML path (default {DEFAULT_CLUSTER})"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. run.keep_last=3 (repeatable)",
    )
    p.add_argument("--name", help="run name (default: the recipe's name); the run's identity across requeues")
    p.add_argument("--run-dir", help="where the run folder goes (default runs/<name>)")
    p.add_argument(
        "--time-limit", type=int, metavar="MINUTES", help="wall clock per chunk (default: the cluster's)"
    )
    p.add_argument(
        "--resume", metavar="RUN", help="resubmit a run whose chain broke (name under runs/ or a path)"
    )
    p.add_argument("--force", action="store_true", help="with --resume: accept a changed recipe")
    p.add_argument(
        "--exclude", metavar="NODES", help="nodes Slurm must not give this job (e.g. one a preflight refused)"
    )
    p.add_argument(
        "--eval-every", type=int, metavar="K",
        help="submit a one-node evaluate job for each kept checkpoint at a multiple of K, one at a time (default off)",
    )
    p.add_argument(
        "--eval-args", metavar="'OPTIONS'",
        help="with --eval-every: options for those evaluate jobs, e.g. '--benchmarks aime24,aime25 --samples-scale 0.25'",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; submit nothing, write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    p.add_argument(
        "--create-only",
        action="store_true",
        help="create the run folder (config, code snapshot, ledger) and print it; for sbatch/train.sbatch",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="block, printing one line per ledger event, until the run finishes or stops for good",
    )
    jobs = p.add_argument_group("other jobs (`--job evaluate --help` lists the evaluation's own options)")
    jobs.add_argument("--job", choices=JOBS, default="train", help="which job (default train)")
    jobs.add_argument(
        "--run", metavar="RUN", help="evaluate/export: the run folder (name under runs/ or a path)"
    )
    jobs.add_argument("--step", type=int, metavar="N", help="evaluate/export: the checkpoint step")
    jobs.add_argument("--model", metavar="PATH", help="evaluate: a Hugging Face model folder instead")
    jobs.add_argument("--local", action="store_true", help="evaluate: run here in-process, do not submit")
    return p


def _other_job(argv: list[str]) -> int | None:
    """`--job evaluate|export`: handed to that job's own parser; None for the train job."""
    pre = argparse.ArgumentParser(prog="python -m justrl_hpc.launch", add_help=False, allow_abbrev=False)
    pre.add_argument("--job", choices=JOBS, default="train")
    known, rest = pre.parse_known_args(argv)
    if known.job == "train":
        return None
    if known.job == "evaluate":
        from justrl_hpc.jobs.evaluate.job import main as evaluate_main

        return evaluate_main.__wrapped__(rest)  # type: ignore[attr-defined]
    return _export(rest)


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m justrl_hpc.launch --job export")
    p.add_argument("--run", required=True, help="run folder (name under runs/ or a path)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--out", type=Path, help="output folder (default: the export job's own choice)")
    args = p.parse_args(argv)
    from justrl_hpc.core.runs import find_run

    run_dir = find_run(args.run, "--run")
    try:
        from justrl_hpc.jobs.export.job import ExportError, export_checkpoint  # imported only when used
    except ImportError:
        raise UserError("this checkout has no justrl_hpc/jobs/export/job.py yet", "--job export") from None
    try:
        print(export_checkpoint(run_dir, args.step, args.out))
    except ExportError as exc:  # the merged model did not verify: not bad input, but no traceback either
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _resolve_new(args: argparse.Namespace) -> cfg.Resolved:
    sets = list(args.sets)
    if args.run_dir:
        sets.append(f"run.run_dir={args.run_dir}")
    if args.time_limit is not None:
        if args.time_limit <= 0:
            raise UserError(f"must be a positive number of minutes, got {args.time_limit}", "--time-limit")
        sets.append(f"run.time_limit_min={args.time_limit}")
    if args.eval_every is not None:
        if args.eval_every < 0:
            raise UserError(f"must be 0 (off) or a number of steps, got {args.eval_every}", "--eval-every")
        sets.append(f"run.eval_every={args.eval_every}")
    resolved = config_files.resolve(args.recipe or DEFAULT_RECIPE, args.cluster or DEFAULT_CLUSTER, sets, args.name)
    config_files.absolutize(resolved, Path.cwd())
    if resolved.run.eval_every:
        resolved.run.eval_args = check_eval_args(args.eval_args or "")
    elif args.eval_args is not None:
        raise UserError("goes with --eval-every K", "--eval-args")
    return resolved


# What the run's evaluate jobs are told by the run itself, never by --eval-args.
_EVAL_OWN = ("--run", "--step", "--model", "--base-model", "--cluster", "--local", "--dry-run", "--nodes")


def check_eval_args(text: str) -> list[str]:
    """--eval-args as the evaluate job will read them, checked as it will check them (one error line if not)."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UserError(f"cannot split {text!r}: {exc}", "--eval-args") from None
    own = next((w for w in words if w.split("=")[0] in _EVAL_OWN), None)
    if own:
        raise UserError(f"{own} is set by the run for each of its evaluate jobs; leave it out", "--eval-args")
    from justrl_hpc.jobs.evaluate import job as evaluate_job

    args, unknown = evaluate_job.build_parser().parse_known_args(words)
    if unknown:
        raise UserError(f"not an option of `launch --job evaluate`: {unknown[0]} (see --job evaluate --help)",
                        "--eval-args")
    try:
        settings = evaluate_job.settings_from_args(args, evaluate_job.load_settings())
    except UserError as exc:
        raise UserError(f"{exc.field}: {str(exc).split(': ', 1)[-1]}", "--eval-args") from None
    if not args.data:  # the default folder (data/eval) is relative too
        words += ["--data", settings.data]
    # A relative path would be read from wherever the job starts: make it the one meant here.
    out = []
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if eq and flag in _EVAL_PATHS:
            word = f"{flag}={_absolute(flag, value)}"
        elif i and words[i - 1] in _EVAL_PATHS:
            word = _absolute(words[i - 1], word)
        out.append(word)
    return out


_EVAL_PATHS = ("--data", "--judge", "--judge-prompt")


def eval_checks(words: list[str]) -> list[Any]:
    """What each evaluate job along the run will refuse, found now: its benchmark files and its judge (an
    evaluation that cannot start would be found at the first save, hours in, and at every one after)."""
    from justrl_hpc.jobs.evaluate import job as evaluate_job
    from justrl_hpc.launcher.plan import Check

    args, _ = evaluate_job.build_parser().parse_known_args(words)
    settings = evaluate_job.settings_from_args(args, evaluate_job.load_settings())
    out = []
    try:
        problems = evaluate_job.load_problems(settings)
        out.append(Check("eval data", True, f"{settings.data}: {sum(map(len, problems.values())):,} problems in "
                                            f"{len(problems)} benchmarks"))
    except UserError as exc:
        out.append(Check("eval data", False, f"{exc} (in --eval-args)"))
    try:
        spec = evaluate_job.judge_for(settings)
        out.append(Check("eval judge", True, f"{spec.model} ({spec.path})" if spec else "none (the rules alone)"))
    except UserError as exc:
        out.append(Check("eval judge", False, f"{exc} (in --eval-args)"))
    return out


def _absolute(flag: str, value: str) -> str:
    """A folder or file given relative to here, as an absolute one; a judge that is no path here (a hub id in
    the cache, `none`) as it is."""
    path = Path(value)
    if path.is_absolute() or (flag == "--judge" and not path.exists()):
        return value
    return str(path.resolve())


def plan_dict(resolved: cfg.Resolved, run_dir: Path, nodes: int, check_files: bool = True) -> dict[str, Any]:
    from justrl_hpc.core import recipe as recipe_mod
    from justrl_hpc.jobs.train.submission import sbatch_preview
    from justrl_hpc.launcher import plan as plan_mod

    plan_mod.check_world(resolved, nodes)
    plan = plan_mod.make_plan(resolved, nodes)
    checks = plan_mod.check_files(resolved) if check_files else []
    checks.append(plan_mod.check_disk(run_dir, plan, resolved.cluster.min_free_disk_gb))
    if resolved.run.eval_every and check_files:
        checks += eval_checks(resolved.run.eval_args)
    chunk = recipe_mod.ChunkContext(first_chunk=True)
    return {
        "run": resolved.run.name,
        "run_dir": str(run_dir),
        "recipe": resolved.recipe.name,
        "recipe_fingerprint": resolved.recipe.fingerprint(),
        "cluster": resolved.cluster.name,
        "trainer": resolved.recipe.trainer,
        "resources": asdict(plan_mod.resources(resolved, nodes)),
        "plan": plan_mod.to_json(plan),
        "verl_overrides": recipe_mod.overrides(resolved, run_dir, chunk),
        "trainer_command": recipe_mod.trainer_command(resolved, run_dir, chunk),
        "sbatch": sbatch_preview(resolved, run_dir, nodes),
        "eval": {"every": resolved.run.eval_every, "args": resolved.run.eval_args} if resolved.run.eval_every else None,
        "warnings": plan.warnings,
        "checks": [asdict(c) for c in checks],
        "ready": all(c.ok for c in checks),
    }


def render_plan(d: dict[str, Any], resolved: cfg.Resolved) -> str:
    res, plan = d["resources"], d["plan"]
    r = resolved.recipe
    per_node = f"{res['gpus_per_node']} GPUs" if res["gpus_per_node"] else f"{r.ranks_per_node} CPU ranks"
    # What slurm_resources asks: a size, all of an exclusive node's memory (--mem=0), or nothing.
    mem = f", {res['mem_gb']} GB" if res["mem_gb"] else (", all its memory" if resolved.cluster.exclusive else "")
    keep = f"keep last {resolved.run.keep_last}" + (
        f" + every {resolved.run.keep_every}th step" if resolved.run.keep_every else ""
    )
    lines = [
        f"run      {d['run']}  ->  {d['run_dir']}",
        f"recipe   {r.name} (fingerprint {d['recipe_fingerprint']}), trainer {r.trainer}, model {r.model_path}",
        f"cluster  {d['cluster']}: partition {res['partition'] or '(default)'}, {res['nodes']} nodes x {per_node}, "
        f"{res['cpus_per_node']} CPUs{mem} per node",
        f"chunk    {res['time_limit_min']} min wall clock, save signal {res['signal_lead_s']} s before the limit, "
        f"requeue {'on' if res['requeue'] else 'off (dependent-job chain)'}",
        f"steps    {plan['total_steps']} in ~{plan['chunks']} chunks of <= {plan['steps_per_chunk']} steps "
        f"(at ~{r.expected_step_s:g} s/step, {r.expected_startup_s:g} s start-up per chunk)",
        f"cost     ~{plan['wall_hours']:,} h wall clock, ~{plan['gpu_hours']:,} "
        + ("GPU-hours" if res["gpus_per_node"] else "CPU-rank-hours"),
        f"disk     ~{plan['disk_gb']:,} GB of checkpoints ({keep}, ~{r.checkpoint_gb:g} GB each)",
    ]
    if plan["gpu_stack"]:
        lines.append(f"stack    {plan['gpu_stack']}")
    if d.get("eval"):
        args = " ".join(d["eval"]["args"]) or "the evaluate job's defaults"
        lines.append(f"eval     every {d['eval']['every']} steps: a one-node evaluate job per kept save, one at a time "
                     f"({args})")
    for w in d["warnings"]:
        lines.append(f"warning  {w}")
    for c in d["checks"]:
        lines.append(f"{'ok' if c['ok'] else 'FAIL':8} {c['name']}: {c['message']}")
    lines.append("")
    lines.append("trainer command (per chunk; resume and validation flags change after the first):")
    cmd = d["trainer_command"]
    lines.append("  " + " ".join(cmd[:3]) + " \\")
    lines += [f"    {o} \\" for o in cmd[3:-1]] + [f"    {cmd[-1]}"]
    lines.append("")
    lines.append("sbatch script (written by submitit):")
    lines += ["  " + line for line in d["sbatch"].splitlines() if line.startswith("#SBATCH")]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    other = _other_job(argv)
    if other is not None:
        return other
    args = build_parser().parse_args(argv)
    for flag in ("run", "step", "model", "local"):
        if getattr(args, flag) not in (None, False):
            raise UserError("goes with --job evaluate or --job export", f"--{flag}")
    if args.json and not args.dry_run:
        raise UserError("--json goes with --dry-run", "--json")
    if args.nodes is not None and args.nodes <= 0:
        raise UserError(f"must be a positive number of nodes, got {args.nodes}", "--nodes")
    if args.resume:
        from justrl_hpc.launcher import submit as lifecycle

        return lifecycle.resume(args)
    resolved = _resolve_new(args)
    nodes = args.nodes if args.nodes is not None else resolved.recipe.nnodes
    run_dir = config_files.run_dir_for(resolved)
    d = plan_dict(resolved, run_dir, nodes)
    if args.dry_run:
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            print("dry run: nothing submitted, nothing written")
            print(render_plan(d, resolved))
        # The plan is printed either way; the status says whether a real launch would go ahead.
        return 0 if d["ready"] else 1
    from justrl_hpc.launcher import submit as lifecycle

    if args.create_only:
        return lifecycle.create_only(resolved, run_dir, d)
    return lifecycle.launch_new(resolved, run_dir, nodes, wait=args.wait, plan=d, exclude=args.exclude)


if __name__ == "__main__":
    sys.exit(main())
