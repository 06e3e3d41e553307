"""The evaluation job: settings (jobs/evaluate.yaml + flags), the run over the benchmarks, and its submission.

`python -m justrl_hpc.launch --job evaluate --run RUN [--step N | --model PATH] [--local]`. With `--local`
it runs here, in-process; otherwise it is submitted with submitit on one node of the run's cluster, as a
Checkpointable: a timeout or preemption requeues it and the restart skips the samples already in
samples.jsonl. Everything is checked before anything is written: a bad flag, an unknown step or a missing
benchmark file is one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit

from justrl_hpc.core import config as cfg
from justrl_hpc.core import settings as settings_mod
from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.run_folder import atomic_write
from justrl_hpc.jobs.evaluate import benchmarks as bm
from justrl_hpc.jobs.evaluate.generate import Generator, SamplingParams, make_generator
from justrl_hpc.jobs.evaluate.model_source import ModelSource, loadable, resolve
from justrl_hpc.jobs.evaluate.results import (
    SampleLog,
    SampleResult,
    Table,
    markdown,
    score,
    write_outputs,
    write_tensorboard,
)

JOB_FILE = cfg.PACKAGE_ROOT.parent / "jobs" / "evaluate.yaml"
BACKENDS = ("auto", "vllm", "transformers")


@dataclass
class EvalSettings:
    data: str = "data/eval"
    benchmarks: list[str] = field(default_factory=lambda: [b.key for b in bm.BENCHMARKS])
    temperature: float = field(default=0.7, metadata={"min": 0})
    top_p: float = field(default=0.9, metadata={"min": 0})
    max_new_tokens: int = field(default=31744, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    samples_scale: float = field(default=1.0, metadata={"min": 0})
    samples: dict[str, int] = field(default_factory=dict)
    limit: int = field(default=0, metadata={"min": 0})
    batch_size: int = field(default=2048, metadata={"min": 1})
    backend: str = field(default="auto", metadata={"choices": BACKENDS})
    keep_text: bool = False
    nodes: int = field(default=1, metadata={"min": 1})
    time_limit_min: int = field(default=0, metadata={"min": 0})

    def n_for(self, bench: bm.Benchmark) -> int:
        if bench.key in self.samples:
            return self.samples[bench.key]
        return max(1, round(bench.n * self.samples_scale))

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_new_tokens)


def load_settings(path: Path = JOB_FILE) -> EvalSettings:
    data = settings_mod.read_yaml(path, "jobs/evaluate.yaml") if path.is_file() else {}
    return settings_mod.build(EvalSettings, data, "jobs/evaluate.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m justrl_hpc.launch --job evaluate",
        description="Evaluate a checkpoint on the nine JustRL benchmarks (avg@N), beside the published table.",
    )
    p.add_argument("--run", required=True, help="run folder (name under runs/ or a path)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest); with --model: its label")
    p.add_argument("--model", help="a Hugging Face model folder to evaluate instead of a checkpoint")
    p.add_argument("--local", action="store_true", help="run here, in-process, instead of submitting")
    p.add_argument("--nodes", type=int, help="nodes for the submitted job (evaluation uses one)")
    p.add_argument("--data", help="folder with the benchmark files (default from jobs/evaluate.yaml)")
    p.add_argument("--benchmarks", help="comma-separated subset, e.g. aime24,math500 (default: all nine)")
    p.add_argument("--samples-scale", type=float, help="multiply each benchmark's N (min 1 sample)")
    p.add_argument("--samples", action="append", default=[], metavar="BENCH=N", help="N for one benchmark")
    p.add_argument("--limit", type=int, help="first K problems of each benchmark")
    p.add_argument("--max-new-tokens", type=int, help="response token limit (protocol: 31744)")
    p.add_argument("--batch-size", type=int, help="samples per generator call (results saved after each)")
    p.add_argument("--backend", help=f"one of {', '.join(BACKENDS)}")
    p.add_argument("--seed", type=int, help="base seed (each sample's seed derives from it and its key)")
    p.add_argument("--keep-text", action="store_true", help="store full responses in samples.jsonl")
    p.add_argument("--time-limit", type=int, metavar="MINUTES", help="wall clock of the submitted job")
    return p


def settings_from_args(args: argparse.Namespace, base: EvalSettings) -> EvalSettings:
    data = asdict(base)
    for flag, key in (
        ("data", "data"),
        ("samples_scale", "samples_scale"),
        ("limit", "limit"),
        ("max_new_tokens", "max_new_tokens"),
        ("batch_size", "batch_size"),
        ("backend", "backend"),
        ("seed", "seed"),
        ("nodes", "nodes"),
        ("time_limit", "time_limit_min"),
    ):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    if args.keep_text:
        data["keep_text"] = True
    if args.benchmarks is not None:
        data["benchmarks"] = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for item in args.samples:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"expected BENCH=N with N ≥ 1, got {item!r}", "--samples")
        data["samples"] = {**data["samples"], name.strip(): int(value)}
    flag_names = {
        "samples_scale": "--samples-scale",
        "max_new_tokens": "--max-new-tokens",
        "batch_size": "--batch-size",
    }
    try:
        settings = settings_mod.build(EvalSettings, data, "evaluate")
    except UserError as exc:
        key = (exc.field or "").removeprefix("evaluate.")
        raise UserError(
            str(exc).split(": ", 1)[-1], flag_names.get(key, f"--{key.replace('_', '-')}")
        ) from None
    bm.select(settings.benchmarks)
    unknown = [k for k in settings.samples if k not in bm.BY_KEY]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; valid: {', '.join(bm.BY_KEY)}", "--samples")
    if settings.nodes != 1:
        raise UserError(
            f"evaluation runs on one node (vLLM data parallel over its GPUs), got {settings.nodes}", "--nodes"
        )
    return settings


# --- the run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    benchmark: str
    problem: bm.Problem
    sample: int
    seed: int


def sample_seed(base: int, benchmark: str, problem: str, sample: int) -> int:
    """A seed of its own for every (benchmark, problem, sample): the same in any plan (another N, a subset of
    the benchmarks, a restart), and 62 bits wide, so two of a run's ~12k samples sharing one is ~1e-11."""
    digest = hashlib.blake2b(f"{benchmark}\0{problem}\0{sample}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + base) % (1 << 62)


def plan_requests(settings: EvalSettings, problems: dict[str, list[bm.Problem]]) -> list[Request]:
    out: list[Request] = []
    for bench in bm.select(settings.benchmarks):
        n = settings.n_for(bench)
        for p in problems[bench.key]:
            for k in range(n):
                out.append(Request(bench.key, p, k, sample_seed(settings.seed, bench.key, p.id, k)))
    return out


# What makes two samples of one key comparable: a results folder holds samples made with one of each.
SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "seed")
SETTINGS_FILE = "settings.json"


def check_compatible(folder: Path, settings: EvalSettings) -> None:
    """A restart may change N or the benchmarks (other keys), never how a sample is drawn."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    for key in SAMPLING_FIELDS:
        if recorded.get(key) != getattr(settings, key):
            raise UserError(
                f"{folder} holds samples made with {key}={recorded.get(key)!r}, not {getattr(settings, key)!r}; "
                "use the same value, or move that folder away to start over",
                "--" + key.replace("_", "-"),
            )


def load_problems(settings: EvalSettings) -> dict[str, list[bm.Problem]]:
    data_dir = Path(settings.data)
    if not data_dir.is_dir():
        raise UserError(f"no such folder {settings.data}", "--data")
    return {b.key: bm.load(data_dir, b, settings.limit or None) for b in bm.select(settings.benchmarks)}


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One evaluation per results folder at a time (a requeued job and a manual rerun must not interleave)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another evaluation is writing {folder} right now", "--run") from None
        yield


def log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp}Z {msg}", flush=True)


def evaluate(
    settings: EvalSettings,
    source: ModelSource,
    problems: dict[str, list[bm.Problem]] | None = None,
    generator_factory: Callable[[str, str], Generator] = make_generator,
) -> Table:
    """Generate the samples not yet in samples.jsonl, grade them, append them; then the table and outputs."""
    from justrl_hpc.jobs.evaluate.grade import grade

    problems = problems if problems is not None else load_problems(settings)
    requests = plan_requests(settings, problems)
    folder = RunPaths(source.run_dir).eval / source.label
    tag = f"eval run={source.run_dir.name} {source.label}"
    with exclusive(folder):
        check_compatible(folder, settings)
        atomic_write(folder / SETTINGS_FILE, json.dumps({k: getattr(settings, k) for k in SAMPLING_FIELDS}))
        samples = SampleLog(folder)
        done = samples.read()
        todo = [r for r in requests if (r.benchmark, r.problem.id, r.sample) not in done]
        log(
            f"{tag}: started model={source.description} samples={len(requests)} done={len(requests) - len(todo)}"
        )
        if todo:
            with loadable(source) as model_path:
                gen = generator_factory(settings.backend, str(model_path))
                try:
                    for lo in range(0, len(todo), settings.batch_size):
                        batch = todo[lo : lo + settings.batch_size]
                        outs = gen.generate(
                            [r.problem.prompt() for r in batch], settings.sampling(), [r.seed for r in batch]
                        )
                        results = []
                        for r, g in zip(batch, outs, strict=True):
                            verdict = grade(g.text, r.problem.answer, r.problem.question)
                            results.append(
                                SampleResult(
                                    benchmark=r.benchmark,
                                    problem=r.problem.id,
                                    sample=r.sample,
                                    seed=r.seed,
                                    correct=verdict.correct,
                                    rule=verdict.rule,
                                    pred=verdict.pred,
                                    answer=r.problem.answer,
                                    tokens=g.tokens,
                                    truncated=g.truncated,
                                    tail=g.text[-300:],
                                    text=g.text if settings.keep_text else None,
                                )
                            )
                        samples.append(results)
                        log(
                            f"{tag}: batch generator={gen.name} samples={len(batch)} done={len(requests) - len(todo) + lo + len(batch)}/{len(requests)}"
                        )
                finally:
                    gen.close()
        plan = {
            b.key: ([p.id for p in problems[b.key]], settings.n_for(b))
            for b in bm.select(settings.benchmarks)
        }
        table = score(samples.read(), plan, source.label, source.step, source.base_model)
        write_outputs(table, folder, source.base_model)
        tb = write_tensorboard(table, source.run_dir)
        log(
            f"{tag}: finished average={table.average:.2f} mean_tokens={table.mean_tokens:.0f} results={folder} tensorboard={tb}"
        )
    print(markdown(table, source.base_model), flush=True)
    return table


# --- submission -------------------------------------------------------------------------------------


class EvaluateJob(submitit.helpers.Checkpointable):
    """What submitit runs on the node; requeued on timeout/preemption, resumed from samples.jsonl."""

    def __init__(self, settings: dict[str, Any], run: str, step: int | None, model: str | None) -> None:
        self.settings, self.run, self.step, self.model = settings, run, step, model

    def __call__(self) -> dict[str, Any]:
        settings = settings_mod.build(EvalSettings, self.settings, "evaluate")
        return evaluate(settings, resolve(self.run, self.step, self.model)).to_json()


def slurm_parameters(resolved: cfg.Resolved, source: ModelSource, settings: EvalSettings) -> dict[str, Any]:
    """The cluster's resources (core/slurm_resources.py, as a training chunk gets them) on one node."""
    from justrl_hpc.core.slurm_resources import SRUN_CPUS_LINE, slurm_resources

    params = slurm_resources(resolved.cluster, 1, resolved.time_limit_min)
    params["job_name"] = f"justrl-eval-{source.run_dir.name}-{source.label}"
    params["time"] = settings.time_limit_min or resolved.cluster.time_limit_min
    # The checkout's code, not the run's snapshot: a run trained before this job existed has no evaluate/.
    env = {**resolved.cluster.env, "PYTHONPATH": str(cfg.PACKAGE_ROOT.parent)}
    params["setup"] = [
        SRUN_CPUS_LINE,
        *resolved.cluster.setup,
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
    ]
    params.pop("exclusive", None)
    return params


def submit(settings: EvalSettings, source: ModelSource, model: str | None) -> str:
    from justrl_hpc.core import run_folder as rundir

    resolved = rundir.load(source.run_dir)
    params = slurm_parameters(resolved, source, settings)
    log_root = RunPaths(source.run_dir).logs / "submitit-eval"
    existed = log_root.exists()
    executor = submitit.SlurmExecutor(
        folder=log_root / "%j",
        max_num_timeout=resolved.run.max_requeues,
        python=shlex.quote(sys.executable),
    )
    executor.update_parameters(**params)
    job = EvaluateJob(asdict(settings), str(source.run_dir), source.step, model)
    try:
        submitted = executor.submit(job)
    except Exception as exc:
        if not existed:  # a refused submission leaves nothing behind
            shutil.rmtree(log_root, ignore_errors=True)
        first = str(exc).strip().splitlines()
        raise UserError(f"sbatch refused the job: {first[-1] if first else exc}", "cluster") from None
    return str(submitted.job_id)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, load_settings())
    source = resolve(args.run, args.step, args.model)
    check_compatible(RunPaths(source.run_dir).eval / source.label, settings)
    if args.local:
        import importlib.util

        if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise UserError("vllm is not installed here (pip install -e '.[gpu]' on GPU nodes)", "--backend")
        problems = load_problems(settings)  # every file read before the first byte is written
        evaluate(settings, source, problems)
        return 0
    load_problems(settings)
    settings = replace(settings, data=str(Path(settings.data).resolve()))
    job_id = submit(settings, source, str(Path(args.model).resolve()) if args.model else None)
    folder = RunPaths(source.run_dir).eval / source.label
    print(f"submitted evaluate job {job_id} for {source.run_dir.name} {source.label}")
    print(f"results   {folder}/results.md (samples as they finish: {folder}/samples.jsonl)")
    print(f"logs      {source.run_dir / 'logs' / 'submitit-eval' / job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
